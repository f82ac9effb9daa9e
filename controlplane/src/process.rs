//! Child processes of the local control plane. Each runs in its own process group, logs to a
//! file, and is reaped by a watchdog process when its owner goes away, however it goes away
//! (normal exit, panic, or SIGKILL of the test binary), so no etcd or kube-apiserver outlives
//! the run and no temporary directory is left behind.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::Error;

/// The watchdog: waits for EOF on stdin (the owner closed its end, or died), then stops every
/// process group listed in `$1/.pgids` (TERM, then KILL after a bounded grace) and deletes `$1`.
const REAPER_SCRIPT: &str = r#"
cat >/dev/null
if [ -f "$1/.pgids" ]; then
  while read -r pg; do kill -TERM -"$pg" 2>/dev/null; done < "$1/.pgids"
  i=0
  while [ "$i" -lt 50 ]; do
    alive=0
    while read -r pg; do kill -0 -"$pg" 2>/dev/null && alive=1; done < "$1/.pgids"
    [ "$alive" = 0 ] && break
    sleep 0.1
    i=$((i + 1))
  done
  while read -r pg; do kill -KILL -"$pg" 2>/dev/null; done < "$1/.pgids"
fi
[ "$2" = keep ] || rm -rf "$1"
"#;

/// A directory owned by one run, and the processes started in it.
///
/// Dropping the supervisor stops every process and removes the directory (unless it was
/// created with `keep`). If the owner dies without dropping it, the watchdog does the same.
#[derive(Debug)]
pub struct Supervisor {
    dir: PathBuf,
    keep: bool,
    reaper: Mutex<Option<(Child, ChildStdin)>>,
}

impl Supervisor {
    /// Takes ownership of `dir` (which must exist) and starts its watchdog. With `keep`, the
    /// directory survives the run (its processes never do).
    pub fn new(dir: PathBuf, keep: bool) -> Result<Self, Error> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(REAPER_SCRIPT)
            .arg("tether-reaper")
            .arg(&dir)
            .arg(if keep { "keep" } else { "remove" })
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group: Ctrl-C in a terminal must not reach the watchdog before the owner
            // has shut down in order.
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Io {
                what: "failed to start the process watchdog (sh)".into(),
                source,
            })?;
        let stdin = child.stdin.take().ok_or_else(|| Error::Io {
            what: "failed to open the process watchdog's stdin".into(),
            source: std::io::Error::other("no stdin pipe"),
        })?;
        Ok(Self {
            dir,
            keep,
            reaper: Mutex::new(Some((child, stdin))),
        })
    }

    /// The directory the processes run in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts `command` in a new process group, with stdout and stderr appended to
    /// `<dir>/<name>.log`.
    pub fn spawn(&self, name: &str, mut command: Command) -> Result<ManagedProcess, Error> {
        let log_path = self.dir.join(format!("{name}.log"));
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| Error::Io {
                what: format!("failed to open {}", log_path.display()),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| Error::Io {
            what: format!("failed to open {}", log_path.display()),
            source,
        })?;
        let program = command.get_program().to_string_lossy().into_owned();
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Spawn {
                program: program.clone(),
                source,
            })?;
        let mut pgids = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(".pgids"))
            .map_err(|source| Error::Io {
                what: "failed to record a process group".into(),
                source,
            })?;
        writeln!(pgids, "{}", child.id()).map_err(|source| Error::Io {
            what: "failed to record a process group".into(),
            source,
        })?;
        Ok(ManagedProcess {
            name: name.to_owned(),
            child,
            log_path,
        })
    }

    /// Stops the watchdog, which stops every process group and (unless kept) removes the
    /// directory, and waits for it to finish.
    pub fn shutdown(&self) {
        let taken = self.reaper.lock().ok().and_then(|mut g| g.take());
        if let Some((mut child, stdin)) = taken {
            drop(stdin);
            let _ = child.wait();
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Polls `ready` until it is true, failing early with a process's log if any of `processes`
/// exits, and with `component`'s log after `timeout`.
pub(crate) async fn wait_ready<F, Fut>(
    processes: &mut [ManagedProcess],
    component: &str,
    what: &str,
    timeout: Duration,
    mut ready: F,
) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if ready().await {
            return Ok(());
        }
        for p in processes.iter_mut() {
            if let Some(status) = p.exited() {
                return Err(Error::Startup {
                    component: p.name().to_owned(),
                    problem: format!(
                        "exited ({status}) while waiting for {component} to be {what}"
                    ),
                    log: p.log_path().display().to_string(),
                    tail: p.log_tail(30),
                });
            }
        }
        if Instant::now() >= deadline {
            let p = processes.iter().find(|p| p.name() == component);
            return Err(Error::Startup {
                component: component.to_owned(),
                problem: format!("was not {what} after {}", crate::build::human(timeout)),
                log: p
                    .map(|p| p.log_path().display().to_string())
                    .unwrap_or_default(),
                tail: p.map(|p| p.log_tail(30)).unwrap_or_default(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running child process whose output goes to a log file. Dropping it kills its process
/// group.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
}

impl ManagedProcess {
    /// The name the process was started under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Where the process's output goes.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// If the process has exited, a description of how.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown status ({e})")),
        }
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// Sends SIGTERM and waits up to `grace` for the process to exit, then kills it.
    /// Returns the exit status text.
    pub fn terminate(&mut self, grace: Duration) -> String {
        if let Some(status) = self.exited() {
            return status;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                let _ = killpg(pid, Signal::SIGKILL);
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill()
    }

    /// Kills the process group at once (SIGKILL), as a crash would, and reaps it.
    pub fn kill(&mut self) -> String {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(pid, Signal::SIGKILL);
        match self.child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => format!("unknown status ({e})"),
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill();
        }
    }
}

/// The last `lines` lines of a log file (reads at most the last 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> Command {
        let mut c = Command::new("sleep");
        c.arg("300");
        c
    }

    fn alive(pid: u32) -> bool {
        kill(Pid::from_raw(pid as i32), None).is_ok()
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn shutdown_stops_processes_and_removes_the_directory() {
        let dir = tempfile::tempdir().unwrap().keep();
        let sup = Supervisor::new(dir.clone(), false).unwrap();
        let mut p = sup.spawn("sleeper", sleeper()).unwrap();
        let pid = p.id();
        assert!(alive(pid));
        assert!(p.exited().is_none());
        sup.shutdown();
        wait_until("the child is reaped", || p.exited().is_some());
        assert!(!dir.exists(), "directory should be removed");
    }

    #[test]
    fn watchdog_cleans_up_when_the_owner_vanishes() {
        // Simulate an owner killed with SIGKILL: the watchdog's stdin closes without any
        // cleanup code running in the owner.
        let dir = tempfile::tempdir().unwrap().keep();
        let sup = Supervisor::new(dir.clone(), false).unwrap();
        let p = sup.spawn("sleeper", sleeper()).unwrap();
        let pid = p.id();
        std::mem::forget(p);
        let (mut reaper, stdin) = sup.reaper.lock().unwrap().take().unwrap();
        std::mem::forget(sup);
        drop(stdin);
        reaper.wait().unwrap();
        assert!(!dir.exists(), "directory should be removed by the watchdog");
        // The child was killed (it is a zombie until someone reaps it, so check its state).
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "child should be dead, /proc stat: {stat}"
        );
    }

    #[test]
    fn kept_directory_survives_but_processes_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let sup = Supervisor::new(dir.path().to_path_buf(), true).unwrap();
        let mut p = sup.spawn("sleeper", sleeper()).unwrap();
        sup.shutdown();
        wait_until("the child is reaped", || p.exited().is_some());
        assert!(dir.path().exists());
    }

    #[test]
    fn terminate_and_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let sup = Supervisor::new(dir.path().to_path_buf(), true).unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo first; echo second; exec sleep 300"]);
        let mut p = sup.spawn("talker", cmd).unwrap();
        wait_until("output is logged", || p.log_tail(5).contains("second"));
        assert_eq!(p.log_tail(1), "second");
        let status = p.terminate(Duration::from_secs(10));
        assert!(status.contains("signal"), "{status}");
    }
}
