//! A real node for the local control plane: containerd and runc (Debian's), CNI plugins
//! (Debian's `containernetworking-plugins`) on a bridge of its own, and kubelet and kube-proxy
//! built from the same Kubernetes module as the API server. Pods run for real, in their own
//! network namespaces on [`POD_SUBNET`]; Services work through kube-proxy's iptables rules.
//!
//! One node per machine at a time: it needs root, and the bridge, its subnet and the
//! runtime's directory are fixed names ([`BRIDGE`], [`RUN_DIR`]), so leftovers of a run that
//! died are found and cleared by the next. Start order: [`prepare_network`] (the bridge, whose
//! address the API server must listen on so pods can reach it), the [`crate::ControlPlane`]
//! with that address and the [`NODE_USER`] and [`PROXY_USER`] users, then [`Node::start`].

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::Error;
use crate::env::ControlPlane;
use crate::process::{ManagedProcess, Supervisor};

mod config;
mod images;

use config::{cni_config, containerd_config_toml, kubelet_config_yaml};
pub use images::{archive, build_pause_image};

/// The node's name.
pub const NODE_NAME: &str = "tether-node";
/// The user the kubelet authenticates as (bound to `system:node` by [`Node::start`]).
pub const NODE_USER: &str = "system:node:tether-node";
/// The user kube-proxy authenticates as (bound to `system:node-proxier` by default).
pub const PROXY_USER: &str = "system:kube-proxy";
/// The pods' bridge.
pub const BRIDGE: &str = "tether-node0";
/// The pods' subnet; the bridge (and so the node, and the API server) has its first address.
pub const POD_SUBNET: &str = "10.244.0.0/24";
/// The bridge's address: the node's address.
pub const NODE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The runtime's directory (containerd's root and state, its socket, the CNI configuration).
/// Short, because a Unix socket path has at most 107 bytes.
pub const RUN_DIR: &str = "/run/tether-node";
/// The sandbox ("pause") image every pod starts with, built by [`build_pause_image`].
pub const PAUSE_IMAGE: &str = "tether.local/pause:1";

/// How long the node has to register and become Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The user ids the users of [`NODE_USER`] and [`PROXY_USER`] need in
/// [`crate::Options::users`].
pub fn users() -> Vec<(String, Vec<String>)> {
    vec![
        (NODE_USER.to_owned(), vec!["system:nodes".to_owned()]),
        (PROXY_USER.to_owned(), Vec::new()),
    ]
}

/// Clears what an earlier node left behind and creates the pods' bridge with
/// [`NODE_ADDRESS`]. Returns that address, for [`crate::Options::address`].
pub fn prepare_network() -> Result<Ipv4Addr, Error> {
    require_root()?;
    cleanup();
    run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    run(
        "ip",
        &["addr", "add", &format!("{NODE_ADDRESS}/24"), "dev", BRIDGE],
    )?;
    run("ip", &["link", "set", BRIDGE, "up"])?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|source| Error::Io {
        what: "failed to enable IPv4 forwarding".into(),
        source,
    })?;
    Ok(NODE_ADDRESS)
}

/// What the node runs.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The kubelet binary.
    pub kubelet: PathBuf,
    /// The kube-proxy binary.
    pub kube_proxy: PathBuf,
    /// Image archives (`docker-archive` tars, as `skopeo copy … docker-archive:` writes) to
    /// load into the runtime before the kubelet starts. The sandbox image must be among them.
    pub images: Vec<PathBuf>,
}

/// A running node. Dropping it stops its containers, its processes and removes its network.
pub struct Node {
    processes: Vec<ManagedProcess>,
    supervisor: Supervisor,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("dir", &self.supervisor.dir())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts containerd, loads the images, starts the kubelet and kube-proxy against `cp`
    /// and waits until the Node is Ready.
    pub async fn start(cp: &ControlPlane, options: &NodeOptions) -> Result<Self, Error> {
        require_root()?;
        let run_dir = Path::new(RUN_DIR);
        let _ = std::fs::remove_dir_all(run_dir);
        let cni = run_dir.join("cni");
        let config_dir = cp.dir().join("node");
        for dir in [&cni, &config_dir] {
            mkdir(dir)?;
        }
        let supervisor = Supervisor::new(config_dir.clone(), true)?;
        let mut node = Self {
            processes: Vec::new(),
            supervisor,
        };

        write(&cni.join("10-tether.conflist"), &cni_config())?;
        let containerd_config = config_dir.join("containerd.toml");
        write(&containerd_config, &containerd_config_toml())?;
        let socket = run_dir.join("containerd.sock");
        let mut containerd = Command::new("containerd");
        containerd.arg("--config").arg(&containerd_config);
        node.spawn("containerd", containerd)?;
        node.wait_for("containerd", || ctr(&["version"]).is_ok())
            .await?;
        for image in &options.images {
            ctr(&["images", "import", &image.to_string_lossy()]).map_err(|e| Error::Startup {
                component: "containerd".into(),
                problem: format!("failed to import {}: {e}", image.display()),
                log: String::new(),
                tail: String::new(),
            })?;
        }

        // The kubelet's rights (the Node authorizer is not on; RBAC's system:node role is).
        let client = cp.client("admin").await?;
        bind_node_role(&client).await?;
        let kubeconfig_for = |user: &str, file: &str| -> Result<PathBuf, Error> {
            let token = cp
                .user(user)
                .ok_or_else(|| Error::Startup {
                    component: "node".into(),
                    problem: format!("the control plane has no user {user} (add node::users())"),
                    log: String::new(),
                    tail: String::new(),
                })?
                .token()
                .to_owned();
            let path = config_dir.join(file);
            let ca = config_dir.join("ca.crt");
            write(&ca, cp.ca_pem())?;
            write(
                &path,
                &format!(
                    "apiVersion: v1\nkind: Config\nclusters:\n  - name: local\n    cluster:\n      server: {}\n      certificate-authority: {}\nusers:\n  - name: u\n    user:\n      token: {token}\ncontexts:\n  - name: c\n    context: {{cluster: local, user: u}}\ncurrent-context: c\n",
                    cp.server(),
                    ca.display()
                ),
            )?;
            Ok(path)
        };
        let kubelet_kubeconfig = kubeconfig_for(NODE_USER, "kubelet.kubeconfig")?;
        let proxy_kubeconfig = kubeconfig_for(PROXY_USER, "kube-proxy.kubeconfig")?;

        let kubelet_config = config_dir.join("kubelet.yaml");
        write(&kubelet_config, &kubelet_config_yaml(&socket, &config_dir))?;
        let mut kubelet = Command::new(&options.kubelet);
        kubelet
            .arg(format!("--config={}", kubelet_config.display()))
            .arg(format!("--kubeconfig={}", kubelet_kubeconfig.display()))
            .arg(format!(
                "--root-dir={}",
                config_dir.join("kubelet").display()
            ))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg(format!("--node-ip={NODE_ADDRESS}"))
            .arg("--v=1");
        node.spawn("kubelet", kubelet)?;

        let proxy_config = config_dir.join("kube-proxy.yaml");
        write(
            &proxy_config,
            &format!(
                "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: iptables\nclusterCIDR: {POD_SUBNET}\nhostnameOverride: {NODE_NAME}\nclientConnection:\n  kubeconfig: {}\nconntrack:\n  maxPerCore: 0\nhealthzBindAddress: \"\"\nnodePortAddresses: [\"{NODE_ADDRESS}/32\"]\n",
                proxy_kubeconfig.display()
            ),
        )?;
        let mut proxy = Command::new(&options.kube_proxy);
        proxy
            .arg(format!("--config={}", proxy_config.display()))
            .arg("--v=1");
        node.spawn("kube-proxy", proxy)?;

        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
        node.wait_for_async("kubelet", || {
            let nodes = nodes.clone();
            async move {
                nodes
                    .get_opt(NODE_NAME)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|n| {
                        n.status
                            .and_then(|s| s.conditions)
                            .unwrap_or_default()
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
            }
        })
        .await?;
        Ok(node)
    }

    fn spawn(&mut self, name: &str, command: Command) -> Result<(), Error> {
        let p = self.supervisor.spawn(name, command)?;
        self.processes.push(p);
        Ok(())
    }

    async fn wait_for(
        &mut self,
        component: &str,
        ready: impl FnMut() -> bool,
    ) -> Result<(), Error> {
        let mut ready = ready;
        self.wait_for_async(component, || std::future::ready(ready()))
            .await
    }

    async fn wait_for_async<F, Fut>(&mut self, component: &str, ready: F) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        crate::process::wait_ready(
            &mut self.processes,
            component,
            "ready",
            READY_TIMEOUT,
            ready,
        )
        .await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The kubelet first, so it does not restart what is stopped next; then every
        // container (their shims outlive containerd), then containerd.
        for name in ["kubelet", "kube-proxy"] {
            if let Some(p) = self.processes.iter_mut().find(|p| p.name() == name) {
                p.terminate(Duration::from_secs(5));
            }
        }
        stop_containers();
        for p in &mut self.processes {
            p.terminate(Duration::from_secs(5));
        }
        self.supervisor.shutdown();
        cleanup();
    }
}

/// Binds the ClusterRole `system:node` to [`NODE_USER`].
async fn bind_node_role(client: &kube::Client) -> Result<(), Error> {
    use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
    let binding = ClusterRoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some("tether-node".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: "system:node".into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: NODE_USER.into(),
            namespace: None,
        }]),
    };
    kube::Api::<ClusterRoleBinding>::all(client.clone())
        .patch(
            "tether-node",
            &kube::api::PatchParams::apply("tether-node").force(),
            &kube::api::Patch::Apply(&binding),
        )
        .await
        .map_err(|e| Error::Startup {
            component: "node".into(),
            problem: format!("failed to bind system:node to {NODE_USER}: {e}"),
            log: String::new(),
            tail: String::new(),
        })?;
    Ok(())
}

/// Kills every container and sandbox of the runtime (its shims are not children of it).
fn stop_containers() {
    if let Ok(tasks) = ctr(&["tasks", "ls", "-q"]) {
        for id in tasks.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let _ = ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
        }
    }
    let marker = format!("{RUN_DIR}/containerd.sock");
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.starts_with("/usr/bin/containerd-shim") && cmdline.contains(&marker) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Removes what a node leaves on the machine: its shims, mounts under [`RUN_DIR`], the pods'
/// network namespaces, kube-proxy's and the CNI plugins' iptables rules, and the bridge.
fn cleanup() {
    stop_containers();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|t| t.starts_with(RUN_DIR) || t.contains("/node/kubelet"))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for target in targets {
        let _ = Command::new("umount").arg("-l").arg(target).status();
    }
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("cni-") {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }
    // kube-proxy's chains, and the CNI plugins' (their names start with CNI-).
    let script = "for t in nat filter mangle; do \
        iptables-save -t $t 2>/dev/null | grep -q 'KUBE-\\|CNI-' || continue; \
        iptables-save -t $t | grep -v -- '-j KUBE-\\|-j CNI-\\|^:KUBE-\\|^:CNI-\\|-A KUBE-\\|-A CNI-' | iptables-restore -T $t 2>/dev/null; \
        done";
    let _ = Command::new("sh").arg("-c").arg(script).status();
    let _ = Command::new("ip")
        .args(["link", "del", BRIDGE])
        .stderr(std::process::Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(RUN_DIR);
}

/// `ctr` against the node's containerd, in the Kubernetes namespace.
fn ctr(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(format!("{RUN_DIR}/containerd.sock"))
        .args(["--namespace", "k8s.io"])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), Error> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| Error::Spawn {
            program: program.to_owned(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Startup {
            component: "node".into(),
            problem: format!(
                "{program} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            log: String::new(),
            tail: String::new(),
        })
    }
}

fn require_root() -> Result<(), Error> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::Startup {
            component: "node".into(),
            problem: "a node needs root (network namespaces, mounts, iptables)".into(),
            log: String::new(),
            tail: String::new(),
        })
    }
}

fn mkdir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        what: format!("failed to create {}", dir.display()),
        source,
    })
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|source| Error::Io {
        what: format!("failed to write {}", path.display()),
        source,
    })
}
