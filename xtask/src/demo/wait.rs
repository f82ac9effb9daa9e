//! Waiting for the demo's pieces: the operator ready (or gone), a RemoteSession with a phase,
//! an object the API server serves, the demo device online; and the plain HTTP GET the
//! readiness checks use.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tether_controlplane::ControlPlane;
use tether_controlplane::process::ManagedProcess;

use super::output_checked;

pub(super) async fn watch_exit(process: &mut ManagedProcess) -> String {
    loop {
        if let Some(status) = process.exited() {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(crate) async fn wait_ready(operator: &mut ManagedProcess, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = operator.exited() {
            bail!(
                "tether-operator exited ({status}):\n{}",
                operator.log_tail(30)
            );
        }
        if readyz(port).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "tether-operator was not ready after 2 minutes:\n{}",
                operator.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn readyz(port: u16) -> bool {
    http_get(port, "/readyz")
        .await
        .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
}

/// GETs `path` from 127.0.0.1:`port` (the telemetry endpoint); the whole response, headers
/// included, or `None` if nothing answered.
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    Some(response)
}

pub(super) async fn wait_for_phase(cp: &ControlPlane, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let phase = output_checked(
            cp.kubectl("admin").args([
                "get",
                "remotesession",
                name,
                "--namespace",
                "default",
                "-o",
                "jsonpath={.status.phase}",
            ]),
            "kubectl get",
        )?;
        if !phase.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("RemoteSession {name} has no phase after a minute; is the operator running?");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(super) async fn wait_for_object(cp: &ControlPlane, args: &[&str]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if cp.kubectl("admin").args(args).output()?.status.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("`kubectl {}` still fails after a minute", args.join(" "));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(super) async fn wait_for_presence(cp: &ControlPlane, device: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let presence = output_checked(
            cp.kubectl("admin").args([
                "get",
                "device",
                device,
                "--namespace",
                "default",
                "-o",
                "jsonpath={.status.presence}",
            ]),
            "kubectl get device",
        )?;
        if presence == "Online" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("Device {device} is not online after a minute; see the agent's log");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
