//! Asking the user on the device for consent: a terminal prompt, a configurable command (for
//! desktop notifications), or a fixed answer (for unattended devices and tests). No answer in
//! time counts as a refusal.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Details shown to the user.
#[derive(Clone, Debug)]
pub struct Request {
    /// Who asks.
    pub technician: String,
    /// Session name.
    pub session: String,
    /// Device.
    pub device: String,
    /// Why.
    pub reason: Option<String>,
    /// How long the user has.
    pub timeout: Duration,
}

/// How consent is asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provider {
    /// Always yes (a scripted answer).
    Always,
    /// Always no.
    Never,
    /// A prompt on the controlling terminal.
    Terminal,
    /// A command: exit status 0 means yes. It gets `TETHER_TECHNICIAN`, `TETHER_SESSION`,
    /// `TETHER_DEVICE` and `TETHER_REASON` in its environment.
    Command(String),
}

impl std::str::FromStr for Provider {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            "terminal" => Ok(Self::Terminal),
            _ => match s.strip_prefix("command:") {
                Some(cmd) if !cmd.trim().is_empty() => Ok(Self::Command(cmd.to_owned())),
                _ => Err(format!(
                    "unknown consent provider {s:?}: use always, never, terminal or command:<command>"
                )),
            },
        }
    }
}

/// The answer: granted, and a CamelCase reason for the session's status.
pub type Answer = (bool, String);

fn yes() -> Answer {
    (true, "UserConsented".into())
}

fn no() -> Answer {
    (false, "ConsentRefused".into())
}

fn timed_out() -> Answer {
    (false, "ConsentTimedOut".into())
}

/// Asks for consent.
pub async fn ask(provider: &Provider, request: &Request) -> Answer {
    match provider {
        Provider::Always => yes(),
        Provider::Never => no(),
        Provider::Terminal => tokio::time::timeout(request.timeout, terminal(request))
            .await
            .unwrap_or_else(|_| timed_out()),
        Provider::Command(cmd) => command(cmd, request).await,
    }
}

async fn terminal(request: &Request) -> Answer {
    let Ok(tty) = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .await
    else {
        return (false, "NoTerminal".into());
    };
    let (read, mut write) = tokio::io::split(tty);
    let prompt = format!(
        "\n{} asks to join remote session {} on {}{}.\nAllow? [y/N] (you have {}s) ",
        request.technician,
        request.session,
        request.device,
        request
            .reason
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        request.timeout.as_secs()
    );
    if write.write_all(prompt.as_bytes()).await.is_err() {
        return (false, "NoTerminal".into());
    }
    let mut line = String::new();
    if BufReader::new(read).read_line(&mut line).await.is_err() {
        return no();
    }
    if matches!(line.trim().to_lowercase().as_str(), "y" | "yes") {
        yes()
    } else {
        no()
    }
}

async fn command(cmd: &str, request: &Request) -> Answer {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("TETHER_TECHNICIAN", &request.technician)
        .env("TETHER_SESSION", &request.session)
        .env("TETHER_DEVICE", &request.device)
        .env("TETHER_REASON", request.reason.clone().unwrap_or_default())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else {
        return (false, "ConsentCommandFailed".into());
    };
    match tokio::time::timeout(request.timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => yes(),
        Ok(_) => no(),
        Err(_) => timed_out(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(timeout: Duration) -> Request {
        Request {
            technician: "carol".into(),
            session: "printer".into(),
            device: "laptop".into(),
            reason: Some("stuck queue".into()),
            timeout,
        }
    }

    #[tokio::test]
    async fn providers_answer() {
        let r = request(Duration::from_secs(5));
        assert_eq!(ask(&Provider::Always, &r).await, yes());
        assert_eq!(ask(&Provider::Never, &r).await, no());
        let ok = Provider::Command("test \"$TETHER_TECHNICIAN\" = carol".into());
        assert_eq!(ask(&ok, &r).await, yes());
        assert_eq!(ask(&Provider::Command("exit 3".into()), &r).await, no());
        let slow = Provider::Command("sleep 30".into());
        assert_eq!(
            ask(&slow, &request(Duration::from_millis(200))).await,
            timed_out()
        );
    }

    #[test]
    fn parses() {
        assert_eq!("always".parse::<Provider>(), Ok(Provider::Always));
        assert_eq!(
            "command:notify-send x".parse::<Provider>(),
            Ok(Provider::Command("notify-send x".into()))
        );
        assert!("command:".parse::<Provider>().is_err());
        assert!(
            "maybe"
                .parse::<Provider>()
                .unwrap_err()
                .contains("always, never")
        );
    }
}
