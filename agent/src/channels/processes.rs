//! The process channel (the "task manager"): list processes from `/proc` and send signals.

use tether_proto::channels::{Process, ProcessRequest, ProcessResponse};
use tether_transport::{FrameReader, FrameWriter};

fn read_process(pid: i32) -> Option<Process> {
    let dir = format!("/proc/{pid}");
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let statm = std::fs::read_to_string(format!("{dir}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let rss_kib = pages * 4;
    let command = std::fs::read(format!("{dir}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(&dir).ok()?.uid();
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name);
    Some(Process {
        pid,
        ppid,
        user,
        rss_kib,
        name,
        command,
    })
}

/// Every process visible to the agent, by pid.
pub fn list() -> Vec<Process> {
    let mut out: Vec<Process> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter_map(read_process)
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|p| p.pid);
    out
}

/// Sends `signal` (e.g. `TERM`, `KILL`) to `pid`.
pub fn kill(pid: i32, signal: &str) -> Result<(), String> {
    let name = format!("SIG{}", signal.trim_start_matches("SIG").to_uppercase());
    let sig: nix::sys::signal::Signal = name
        .parse()
        .map_err(|_| format!("unknown signal {signal}"))?;
    if pid <= 1 {
        return Err(format!("refusing to signal pid {pid}"));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
        .map_err(|e| format!("pid {pid}: {e}"))
}

/// Serves one process request.
pub async fn serve(mut reader: FrameReader, mut writer: FrameWriter) -> anyhow::Result<()> {
    let response = match reader.message::<ProcessRequest>().await? {
        ProcessRequest::List => ProcessResponse::Processes {
            processes: tokio::task::spawn_blocking(list).await?,
        },
        ProcessRequest::Kill { pid, signal } => match kill(pid, &signal) {
            Ok(()) => ProcessResponse::Signalled,
            Err(message) => ProcessResponse::Error { message },
        },
    };
    writer.message(&response).await?;
    writer.finish().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_itself_and_kills_a_child() {
        let me = std::process::id() as i32;
        let procs = list();
        let this = procs
            .iter()
            .find(|p| p.pid == me)
            .expect("own process listed");
        assert!(this.rss_kib > 0);
        assert!(!this.name.is_empty());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        kill(child.id() as i32, "TERM").unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success());
        assert!(kill(1, "KILL").is_err());
        assert!(kill(me, "NOPE").unwrap_err().contains("unknown signal"));
    }
}
