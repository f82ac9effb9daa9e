//! Starting and stopping the local control plane: etcd, kube-apiserver and (optionally)
//! kube-controller-manager as real processes on free loopback ports, with static-token users
//! and a kubeconfig that has one context per user.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use rand::Rng;
use rand::distr::Alphanumeric;

use crate::assets::Assets;
use crate::build::human;
use crate::certs::{self, write_private};
use crate::process::{ManagedProcess, Supervisor};
use crate::{Error, KUBERNETES_VERSION};

/// How long a component may take to become ready on a small, busy machine.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// A user known to the API server, authenticated by a static bearer token.
#[derive(Clone)]
pub struct User {
    /// The Kubernetes user name (also the kubeconfig context name).
    pub name: String,
    /// The user's groups (every user is also in `system:authenticated`).
    pub groups: Vec<String>,
    token: String,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

impl User {
    /// The user's bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }
}

/// How to start the control plane.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the binaries are.
    pub assets: Assets,
    /// Start kube-controller-manager too: garbage collection of owned objects, namespace
    /// deletion, default ServiceAccounts.
    pub controller_manager: bool,
    /// Users besides `admin` (who is in `system:masters`): `(name, groups)`.
    pub users: Vec<(String, Vec<String>)>,
    /// Run in this directory and keep it afterwards; by default a temporary directory is used
    /// and removed.
    pub keep_dir: Option<PathBuf>,
    /// Start kube-scheduler too, for pods on a [`crate::node::Node`].
    pub scheduler: bool,
    /// The address the API server listens on and advertises (the `kubernetes` Service's
    /// endpoint). Loopback by default; a node's pods need one they can route to, such as the
    /// address of the node's pod bridge.
    pub address: std::net::Ipv4Addr,
}

/// The test users every control plane has unless told otherwise: unprivileged people in
/// distinct groups, and the operator's ServiceAccount identity (so the operator can run with
/// exactly the RBAC the Helm chart grants it).
pub fn default_users() -> Vec<(String, Vec<String>)> {
    let user = |name: &str, groups: &[&str]| {
        (
            name.to_owned(),
            groups.iter().map(|g| (*g).to_owned()).collect::<Vec<_>>(),
        )
    };
    vec![
        user("alice", &["requesters"]),
        user("bob", &["approvers"]),
        user("carol", &["technicians"]),
        user("dave", &["auditors"]),
        user(
            "system:serviceaccount:tether-system:tether-operator",
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:tether-system",
            ],
        ),
        user(
            "system:serviceaccount:tether-system:tether-relay",
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:tether-system",
            ],
        ),
    ]
}

impl Default for Options {
    fn default() -> Self {
        Self {
            assets: Assets::from_env(),
            controller_manager: true,
            users: default_users(),
            keep_dir: None,
            scheduler: false,
            address: std::net::Ipv4Addr::LOCALHOST,
        }
    }
}

/// How long each component took to become ready.
#[derive(Debug, Clone, Default)]
pub struct StartupTimes {
    /// etcd accepting connections.
    pub etcd: Duration,
    /// kube-apiserver answering `/readyz`.
    pub apiserver: Duration,
    /// kube-controller-manager running its controllers (zero when not started).
    pub controller_manager: Duration,
    /// The whole start-up.
    pub total: Duration,
}

impl std::fmt::Display for StartupTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (etcd {}, kube-apiserver {}",
            human(self.total),
            human(self.etcd),
            human(self.apiserver)
        )?;
        if !self.controller_manager.is_zero() {
            write!(
                f,
                ", kube-controller-manager {}",
                human(self.controller_manager)
            )?;
        }
        f.write_str(")")
    }
}

/// A running local control plane. Dropping it stops every process and removes its directory.
#[derive(Debug)]
pub struct ControlPlane {
    // Declared before the supervisor so processes are killed before the directory goes.
    processes: Vec<ManagedProcess>,
    supervisor: Supervisor,
    server: String,
    ca_pem: String,
    ca_cert: PathBuf,
    users: Vec<User>,
    kubeconfig: PathBuf,
    startup: StartupTimes,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and (if asked) kube-controller-manager and waits until they
    /// are ready.
    pub async fn start(options: Options) -> Result<Self, Error> {
        let started = Instant::now();
        let etcd_bin = options.assets.require("etcd")?;
        let apiserver_bin = options.assets.require("kube-apiserver")?;
        let kcm_bin = if options.controller_manager {
            Some(options.assets.require("kube-controller-manager")?)
        } else {
            None
        };

        let (dir, keep) = match &options.keep_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                    what: format!("failed to create {}", dir.display()),
                    source,
                })?;
                (dir.clone(), true)
            }
            None => (
                tempfile::Builder::new()
                    .prefix("tether-controlplane-")
                    .tempdir()
                    .map_err(|source| Error::Io {
                        what: "failed to create a temporary directory".into(),
                        source,
                    })?
                    .keep(),
                false,
            ),
        };
        let supervisor = Supervisor::new(dir.clone(), keep)?;
        let pki = certs::generate(&dir, options.address)?;

        let mut users = vec![User {
            name: "admin".into(),
            groups: vec!["system:masters".into()],
            token: random_token(),
        }];
        users.extend(options.users.iter().map(|(name, groups)| User {
            name: name.clone(),
            groups: groups.clone(),
            token: random_token(),
        }));
        let token_file = dir.join("tokens.csv");
        let tokens: String = users
            .iter()
            .enumerate()
            .map(|(i, u)| {
                format!(
                    "{},{},uid-{i},\"{}\"\n",
                    u.token,
                    u.name,
                    u.groups.join(",")
                )
            })
            .collect();
        write_private(&token_file, &tokens)?;

        let mut cp = ControlPlane {
            processes: Vec::new(),
            supervisor,
            server: String::new(),
            ca_pem: pki.ca_pem.clone(),
            ca_cert: pki.ca_cert.clone(),
            users,
            kubeconfig: dir.join("kubeconfig"),
            startup: StartupTimes::default(),
        };

        // etcd.
        let t = Instant::now();
        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let mut etcd = Command::new(&etcd_bin);
        etcd.arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .arg("--unsafe-no-fsync=true")
            .arg("--log-level=warn");
        let etcd = cp.supervisor.spawn("etcd", etcd)?;
        cp.processes.push(etcd);
        cp.wait_for("etcd", "accepting connections", || {
            std::future::ready(std::net::TcpStream::connect(("127.0.0.1", etcd_client)).is_ok())
        })
        .await?;
        cp.startup.etcd = t.elapsed();

        // kube-apiserver.
        let t = Instant::now();
        let port = free_port_on(options.address)?;
        cp.server = format!("https://{}:{port}", options.address);
        let mut apiserver = Command::new(&apiserver_bin);
        apiserver
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!("--bind-address={}", options.address))
            .arg(format!("--advertise-address={}", options.address))
            .arg(format!("--secure-port={port}"))
            .arg(format!(
                "--cert-dir={}",
                dir.join("apiserver-certs").display()
            ))
            .arg(format!("--tls-cert-file={}", pki.serving_cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.serving_key.display()
            ))
            .arg(format!("--client-ca-file={}", pki.ca_cert.display()))
            .arg(format!("--token-auth-file={}", token_file.display()))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--service-account-issuer={}", cp.server))
            .arg(format!(
                "--service-account-key-file={}",
                pki.service_account_pub.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.service_account_key.display()
            ))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--allow-privileged=true")
            .arg("--profiling=false")
            .arg("--v=1");
        if kcm_bin.is_none() {
            // Without the controller-manager nobody creates default ServiceAccounts.
            apiserver.arg("--disable-admission-plugins=ServiceAccount");
        }
        let apiserver = cp.supervisor.spawn("kube-apiserver", apiserver)?;
        cp.processes.push(apiserver);
        cp.write_kubeconfig()?;
        let admin = cp.client("admin").await?;
        cp.wait_for("kube-apiserver", "ready (/readyz)", || {
            let admin = admin.clone();
            async move {
                let req = http::Request::get("/readyz").body(Vec::new());
                match req {
                    Ok(req) => admin.request_text(req).await.is_ok_and(|body| body == "ok"),
                    Err(_) => false,
                }
            }
        })
        .await?;
        cp.startup.apiserver = t.elapsed();

        // kube-controller-manager.
        if let Some(kcm_bin) = kcm_bin {
            let t = Instant::now();
            let mut kcm = Command::new(&kcm_bin);
            kcm.arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
                .arg("--leader-elect=false")
                .arg("--secure-port=0")
                .arg(format!(
                    "--service-account-private-key-file={}",
                    pki.service_account_key.display()
                ))
                .arg(format!("--root-ca-file={}", pki.ca_cert.display()))
                .arg(format!("--cluster-signing-cert-file={}", pki.ca_cert.display()))
                .arg(format!("--cluster-signing-key-file={}", pki.ca_key.display()))
                .arg("--use-service-account-credentials=false")
                // Node lifecycle (which lifts a new node's not-ready taint) only where a
                // node will run pods.
                .arg(if options.scheduler {
                    "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route"
                } else {
                    "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-route"
                })
                .arg("--v=1");
            let kcm = cp.supervisor.spawn("kube-controller-manager", kcm)?;
            cp.processes.push(kcm);
            let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
            cp.wait_for(
                "kube-controller-manager",
                "running its controllers (the default ServiceAccount exists)",
                || {
                    let accounts = accounts.clone();
                    async move { matches!(accounts.get_opt("default").await, Ok(Some(_))) }
                },
            )
            .await?;
            cp.startup.controller_manager = t.elapsed();
        }
        if options.scheduler {
            let mut scheduler = Command::new(options.assets.require("kube-scheduler")?);
            scheduler
                .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
                .arg("--leader-elect=false")
                .arg("--secure-port=0")
                .arg("--v=1");
            let scheduler = cp.supervisor.spawn("kube-scheduler", scheduler)?;
            cp.processes.push(scheduler);
        }
        cp.startup.total = started.elapsed();
        Ok(cp)
    }

    /// Polls `ready` until it is true, failing early with the component's log if any process
    /// exits, and failing after [`READY_TIMEOUT`].
    async fn wait_for<F, Fut>(&mut self, component: &str, what: &str, ready: F) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        crate::process::wait_ready(&mut self.processes, component, what, READY_TIMEOUT, ready).await
    }

    fn write_kubeconfig(&self) -> Result<(), Error> {
        let contexts: Vec<serde_json::Value> = self
            .users
            .iter()
            .map(|u| {
                serde_json::json!({
                    "name": u.name,
                    "context": {"cluster": "tether-local", "user": u.name, "namespace": "default"},
                })
            })
            .collect();
        let users: Vec<serde_json::Value> = self
            .users
            .iter()
            .map(|u| serde_json::json!({"name": u.name, "user": {"token": u.token}}))
            .collect();
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": "tether-local",
                "cluster": {
                    "server": self.server,
                    "certificate-authority": self.ca_cert.display().to_string(),
                },
            }],
            "users": users,
            "contexts": contexts,
            "current-context": "admin",
        });
        let yaml = serde_yaml::to_string(&config).map_err(|e| Error::Kube {
            what: "failed to render the kubeconfig".into(),
            source: Box::new(e),
        })?;
        write_private(&self.kubeconfig, &yaml)
    }

    /// The API server URL, `https://<address>:<port>` (loopback unless
    /// [`Options::address`] says otherwise).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The CA certificate (PEM) that signed the API server's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The kubeconfig with one context per user (`admin`, `alice`, …); `admin` is current.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The directory holding certificates, data and logs.
    pub fn dir(&self) -> &Path {
        self.supervisor.dir()
    }

    /// How long start-up took.
    pub fn startup(&self) -> &StartupTimes {
        &self.startup
    }

    /// The Kubernetes version being served.
    pub fn version(&self) -> &'static str {
        KUBERNETES_VERSION
    }

    /// Every user, `admin` first.
    pub fn users(&self) -> &[User] {
        &self.users
    }

    /// A user by name.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// Client configuration for a user, read back from the kubeconfig the way kubectl would.
    pub async fn config(&self, user: &str) -> Result<kube::Config, Error> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).map_err(|e| Error::Kube {
            what: format!("failed to read {}", self.kubeconfig.display()),
            source: Box::new(e),
        })?;
        kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &KubeConfigOptions {
                context: Some(user.to_owned()),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| Error::Kube {
            what: format!("failed to configure a client for user {user:?}"),
            source: Box::new(e),
        })
    }

    /// A client acting as `user`. Create clients inside the runtime that uses them.
    pub async fn client(&self, user: &str) -> Result<kube::Client, Error> {
        let config = self.config(user).await?;
        kube::Client::try_from(config).map_err(|e| Error::Kube {
            what: format!("failed to build a client for user {user:?}"),
            source: Box::new(e),
        })
    }

    /// A `kubectl` command acting as `user` against this control plane.
    pub fn kubectl(&self, user: &str) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--context={user}"));
        cmd
    }

    /// Creates a namespace named `<prefix>-<random>` and returns its name.
    pub async fn namespace(&self, prefix: &str) -> Result<String, Error> {
        let client = self.client("admin").await?;
        let name = format!("{prefix}-{}", random_suffix());
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client)
            .create(&PostParams::default(), &ns)
            .await
            .map_err(|e| Error::Kube {
                what: format!("failed to create namespace {name}"),
                source: Box::new(e),
            })?;
        Ok(name)
    }

    /// The last lines of a component's log (`etcd`, `kube-apiserver`, …).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        crate::process::log_tail(&self.dir().join(format!("{component}.log")), lines)
    }

    /// Starts another process under this control plane's supervision (it is stopped with the
    /// control plane, and when the owner dies).
    pub fn spawn(&self, name: &str, command: Command) -> Result<ManagedProcess, Error> {
        self.supervisor.spawn(name, command)
    }
}

fn random_token() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect()
}

/// A short random lowercase suffix for names.
pub fn random_suffix() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..6)
        .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
        .collect()
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16, Error> {
    free_port_on(std::net::Ipv4Addr::LOCALHOST)
}

/// A port that was free a moment ago on `address`.
fn free_port_on(address: std::net::Ipv4Addr) -> Result<u16, Error> {
    TcpListener::bind((address, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| Error::Io {
            what: format!("failed to find a free port on {address}"),
            source,
        })
}
