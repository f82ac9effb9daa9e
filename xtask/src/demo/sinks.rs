//! The demo's notification sinks on loopback: a mail sink that speaks just enough SMTP to
//! accept messages and a webhook receiver, each appending what it gets to a log file in the
//! demo directory, and the wait for the first notification to reach both.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Marks the start of each message or call in the sinks' logs.
const ENTRY: &str = "----- ";

/// Waits until the first notification reached both sinks; returns how many each has.
pub(super) async fn wait_for_notifications(
    mail_log: &std::path::Path,
    webhook_log: &std::path::Path,
) -> Result<(usize, usize)> {
    let count = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|t| t.matches(ENTRY).count())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (mails, hooks) = (count(mail_log), count(webhook_log));
        if mails > 0 && hooks > 0 {
            return Ok((mails, hooks));
        }
        if Instant::now() > deadline {
            bail!(
                "no notification reached the mail sink ({mails}) and the webhook log ({hooks}) after a minute; see the operator's log"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Appends `text` to the log at `path`.
fn append(path: &std::path::Path, text: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(text.as_bytes());
    }
}

/// A mail sink on loopback: speaks just enough SMTP to accept messages, and appends each to
/// `log`. Not a mail server: it never relays anything.
pub(super) async fn mail_sink(listener: tokio::net::TcpListener, log: PathBuf) {
    while let Ok((stream, _)) = listener.accept().await {
        let log = log.clone();
        tokio::spawn(async move {
            let _ = smtp_session(stream, &log).await;
        });
    }
}

async fn smtp_session(stream: tokio::net::TcpStream, log: &std::path::Path) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 tether-demo mail sink\r\n").await?;
    let mut envelope = String::new();
    while let Some(line) = lines.next_line().await? {
        let verb = line.get(..4).unwrap_or(&line).to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" | "HELO" => write.write_all(b"250 tether-demo\r\n").await?,
            "MAIL" | "RCPT" => {
                envelope.push_str(&line);
                envelope.push('\n');
                write.write_all(b"250 OK\r\n").await?;
            }
            "DATA" => {
                write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut message = String::new();
                while let Some(line) = lines.next_line().await? {
                    if line == "." {
                        break;
                    }
                    message.push_str(line.strip_prefix('.').unwrap_or(&line));
                    message.push('\n');
                }
                append(
                    log,
                    &format!("{ENTRY}{}\n{envelope}{message}\n", jiff::Timestamp::now()),
                );
                envelope.clear();
                write
                    .write_all(b"250 OK: queued in the demo's mail log\r\n")
                    .await?;
            }
            "QUIT" => {
                write.write_all(b"221 Bye\r\n").await?;
                break;
            }
            _ => write.write_all(b"250 OK\r\n").await?,
        }
    }
    Ok(())
}

/// A webhook receiver on loopback: answers every request 200 and appends its body to `log`.
pub(super) async fn webhook_sink(listener: tokio::net::TcpListener, log: PathBuf) {
    while let Ok((stream, _)) = listener.accept().await {
        let log = log.clone();
        tokio::spawn(async move {
            let _ = webhook_call(stream, &log).await;
        });
    }
}

async fn webhook_call(stream: tokio::net::TcpStream, log: &std::path::Path) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await?;
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    // Notifications are small; anything larger is cut, never buffered whole.
    let mut body = vec![0u8; length.min(1 << 20)];
    reader.read_exact(&mut body).await?;
    append(
        log,
        &format!(
            "{ENTRY}{} {}\n{}\n",
            jiff::Timestamp::now(),
            request_line.trim(),
            String::from_utf8_lossy(&body)
        ),
    );
    reader
        .into_inner()
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
}
