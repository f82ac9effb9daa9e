//! Asking the user on the device for consent: a dialog on the user's X display (the agent's
//! own window, [`crate::onscreen::dialog`]), a terminal prompt, a configurable command (for
//! desktop notifications), or a fixed answer (for unattended devices and tests). No answer in
//! time counts as a refusal, and so does a dialog that cannot be shown. A command is run in a process group of its own and the whole group
//! is killed once its answer is taken, so neither a command that never answers nor what it
//! started (a dialog, a notification helper) outlives the question.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tether_proto::token::Permissions;
use tracing::warn;

use crate::desktop::x11::X11Settings;
use crate::onscreen::dialog::{self, Choice};

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
    /// The ticket the session is for, when known.
    pub ticket: Option<String>,
    /// What the session allows, when known.
    pub permissions: Option<Permissions>,
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
    /// A dialog of the agent's own on the user's X display (the one the desktop serves).
    X11,
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
            "x11" => Ok(Self::X11),
            _ => match s.strip_prefix("command:") {
                Some(cmd) if !cmd.trim().is_empty() => Ok(Self::Command(cmd.to_owned())),
                _ => Err(format!(
                    "unknown consent provider {s:?}: use x11, terminal, command:<command>, always or never"
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

impl Provider {
    /// The provider when none is configured: the dialog on the user's screen when the agent
    /// has a display, else the terminal prompt.
    pub fn default_for(display: Option<&str>) -> Self {
        if display.is_some_and(|d| !d.is_empty()) {
            Self::X11
        } else {
            Self::Terminal
        }
    }
}

/// Asks for consent; `screen` is the display a dialog goes on.
pub async fn ask(provider: &Provider, request: &Request, screen: Option<&X11Settings>) -> Answer {
    match provider {
        Provider::X11 => match screen {
            Some(screen) => on_screen(screen, request).await,
            None => (false, "NoDisplay".into()),
        },
        Provider::Always => yes(),
        Provider::Never => no(),
        Provider::Terminal => tokio::time::timeout(request.timeout, terminal(request))
            .await
            .unwrap_or_else(|_| timed_out()),
        Provider::Command(cmd) => command(cmd, request).await,
    }
}

/// Sets its flag when dropped: a dialog whose question was withdrawn (the future asking was
/// dropped) closes within a tick.
struct Withdraw(Arc<AtomicBool>);

impl Drop for Withdraw {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn on_screen(screen: &X11Settings, request: &Request) -> Answer {
    let question = dialog::Question {
        technician: request.technician.clone(),
        session: request.session.clone(),
        device: request.device.clone(),
        reason: request.reason.clone(),
        ticket: request.ticket.clone(),
        permissions: request.permissions.clone(),
    };
    let deadline = std::time::Instant::now() + request.timeout;
    let withdrawn = Withdraw(Arc::new(AtomicBool::new(false)));
    let flag = withdrawn.0.clone();
    let screen = screen.clone();
    let shown =
        tokio::task::spawn_blocking(move || dialog::ask(&screen, &question, deadline, &flag));
    let answer = match shown.await {
        Ok(Ok(Choice::Allow)) => yes(),
        Ok(Ok(Choice::Deny | Choice::Withdrawn)) => no(),
        Ok(Ok(Choice::TimedOut)) => timed_out(),
        Ok(Err(e)) => {
            warn!(error = %tether_telemetry::error_chain(&e), "Failed to show the consent dialog");
            (false, "ConsentDialogFailed".into())
        }
        Err(e) => {
            warn!(error = %e, "The consent dialog failed");
            (false, "ConsentDialogFailed".into())
        }
    };
    drop(withdrawn);
    answer
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
    let prompt = prompt(request);
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

/// The terminal question. Every name in it comes from elsewhere (the technician's from the
/// cluster, the reason from whoever asked for the session): escaped and shortened, so none can
/// forge a line of the prompt or rewrite the terminal.
fn prompt(request: &Request) -> String {
    use tether_proto::text::escape_short;
    format!(
        "\n{} asks to join remote session {} on {}{}.\nAllow? [y/N] (you have {}s) ",
        escape_short(&request.technician, 64),
        escape_short(&request.session, 64),
        escape_short(&request.device, 64),
        request
            .reason
            .as_ref()
            .map(|r| format!(" ({})", escape_short(r, 200)))
            .unwrap_or_default(),
        request.timeout.as_secs()
    )
}

async fn command(cmd: &str, request: &Request) -> Answer {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("TETHER_TECHNICIAN", &request.technician)
        .env("TETHER_SESSION", &request.session)
        .env("TETHER_DEVICE", &request.device)
        .env("TETHER_REASON", request.reason.clone().unwrap_or_default())
        .env("TETHER_TICKET", request.ticket.clone().unwrap_or_default())
        .env(
            "TETHER_CONSENT_TIMEOUT",
            request.timeout.as_secs().to_string(),
        )
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else {
        return (false, "ConsentCommandFailed".into());
    };
    // Killed even if this future is dropped (the session ended while the user was asked).
    let group = ProcessGroup(child.id());
    let answer = match tokio::time::timeout(request.timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => yes(),
        Ok(_) => no(),
        Err(_) => timed_out(),
    };
    drop(group);
    let _ = child.wait().await;
    answer
}

/// A consent command's process group, killed when dropped.
struct ProcessGroup(Option<u32>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            // The group id is the command's pid (`process_group(0)`); a group already gone
            // answers ESRCH, which is what we want anyway.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
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
            ticket: None,
            permissions: None,
            timeout,
        }
    }

    #[tokio::test]
    async fn providers_answer() {
        let r = request(Duration::from_secs(5));
        assert_eq!(ask(&Provider::Always, &r, None).await, yes());
        assert_eq!(ask(&Provider::Never, &r, None).await, no());
        let ok = Provider::Command("test \"$TETHER_TECHNICIAN\" = carol".into());
        assert_eq!(ask(&ok, &r, None).await, yes());
        assert_eq!(
            ask(&Provider::Command("exit 3".into()), &r, None).await,
            no()
        );
        let slow = Provider::Command("sleep 30".into());
        assert_eq!(
            ask(&slow, &request(Duration::from_millis(200)), None).await,
            timed_out()
        );
    }

    fn alive(pid: i32) -> bool {
        // A zombie waiting for its new parent to reap it is dead too.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let state = s.rsplit(')').next()?.split_whitespace().next()?.to_owned();
                Some(state != "Z" && state != "X")
            })
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn a_command_that_times_out_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // A dialog that never answers, and a helper it started in the background.
        let cmd = format!(
            "sleep 300 & echo $! > {p}; echo $$ >> {p}; while :; do sleep 1; done",
            p = pids.display()
        );
        let answer = ask(
            &Provider::Command(cmd),
            &request(Duration::from_millis(500)),
            None,
        )
        .await;
        assert_eq!(answer, timed_out());
        let text = std::fs::read_to_string(&pids).unwrap();
        let started: Vec<i32> = text.lines().map(|l| l.trim().parse().unwrap()).collect();
        assert_eq!(started.len(), 2, "{text}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while started.iter().any(|p| alive(*p)) {
            assert!(
                std::time::Instant::now() < deadline,
                "still running after the consent timed out: {started:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Positive control: a command that answers in time is obeyed.
        let quick = Provider::Command("sleep 0.1; exit 0".into());
        assert_eq!(
            ask(&quick, &request(Duration::from_secs(10)), None).await,
            yes()
        );
    }

    #[test]
    fn the_prompt_shows_hostile_names_escaped() {
        let mut r = request(Duration::from_secs(60));
        r.technician = "admin\nAllow? [y/N] y\u{1b}[2K".into();
        r.reason = Some("x".repeat(10_000));
        let shown = prompt(&r);
        assert!(!shown.contains('\u{1b}'), "{shown:?}");
        // The question's own line break only: the name forged none.
        assert_eq!(shown.matches('\n').count(), 2, "{shown}");
        assert!(
            shown.contains("admin\\nAllow? [y/N] y\\u{1b}[2K"),
            "{shown}"
        );
        assert!(shown.len() < 1_000);
        // Positive control: ordinary names read as they are.
        let shown = prompt(&request(Duration::from_secs(60)));
        assert!(
            shown.contains("carol asks to join remote session printer on laptop (stuck queue)"),
            "{shown}"
        );
    }

    #[test]
    fn parses() {
        assert_eq!("always".parse::<Provider>(), Ok(Provider::Always));
        assert_eq!("x11".parse::<Provider>(), Ok(Provider::X11));
        assert_eq!(Provider::default_for(Some(":0")), Provider::X11);
        assert_eq!(Provider::default_for(Some("")), Provider::Terminal);
        assert_eq!(Provider::default_for(None), Provider::Terminal);
        assert_eq!(
            "command:notify-send x".parse::<Provider>(),
            Ok(Provider::Command("notify-send x".into()))
        );
        assert!("command:".parse::<Provider>().is_err());
        assert!(
            "maybe"
                .parse::<Provider>()
                .unwrap_err()
                .contains("x11, terminal")
        );
    }
}
