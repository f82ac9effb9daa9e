//! Builds the control-plane binaries from the official Go modules through the Go module proxy
//! and caches them per version.
//!
//! `go install k8s.io/kubernetes/cmd/kube-apiserver@v1.X.Y` does not work: Kubernetes' go.mod
//! points its ~31 staging modules (`k8s.io/api`, `k8s.io/client-go`, …) at `./staging`. So a
//! small wrapper module requires `k8s.io/kubernetes` and replaces every staging module with its
//! published `v0.X.Y` tag; the list is read from Kubernetes' own go.mod, never hard-coded.
//! etcd gets its own wrapper (its `main` calls `etcdmain.Main`); helm and versitygw (the S3
//! server the recording tests upload to) install directly. Each builds in a separate module so
//! minimal version selection never lifts Kubernetes' dependencies.

mod go;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::assets::{Assets, cache_root};
use crate::{
    ETCD_VERSION, Error, HELM_VERSION, KUBERNETES_VERSION, MIN_GO_VERSION, VERSITYGW_VERSION,
};
use go::{run_capture, run_streaming};

/// The Kubernetes commands built from `k8s.io/kubernetes`: the control plane's, and the
/// node's ([`crate::node`]).
const KUBERNETES_COMMANDS: [&str; 5] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
];

/// Build tags Kubernetes' own release build uses.
const K8S_TAGS: &str = "selinux,notest,grpcnotrace";

/// What a call to [`build_missing`] did.
#[derive(Debug, Default)]
pub struct Report {
    /// Binaries compiled, with how long each step took.
    pub built: Vec<(String, Duration)>,
    /// Directory holding the binaries.
    pub dir: PathBuf,
}

/// Builds whichever control-plane binaries are missing (or were built for another version)
/// into the cache, printing progress through `say`. A no-op when everything is present.
pub fn build_missing(assets: &Assets, say: &mut dyn FnMut(&str)) -> Result<Report, Error> {
    let mut report = Report {
        built: Vec::new(),
        dir: assets.cache.clone(),
    };
    discard_stale(&assets.cache);
    let missing = assets.missing();
    if missing.is_empty() {
        return Ok(report);
    }

    let go = check_go()?;
    say(&format!(
        "Building {} with {go} into {} (first run only; later runs reuse the cache)",
        missing.join(", "),
        assets.cache.display()
    ));
    mkdir(&assets.cache)?;
    let lock_path = assets.cache.join(".build.lock");
    let lock = std::fs::File::create(&lock_path).map_err(|source| Error::Io {
        what: format!("failed to create {}", lock_path.display()),
        source,
    })?;
    if lock.try_lock().is_err() {
        say("Waiting for another build of the control plane to finish");
        lock.lock().map_err(|source| Error::Io {
            what: format!("failed to lock {}", lock_path.display()),
            source,
        })?;
    }
    // Another process may have finished the build while we waited.
    let missing = assets.missing();
    let work = cache_root().join("build");

    if KUBERNETES_COMMANDS.iter().any(|c| missing.contains(c)) {
        let started = Instant::now();
        build_kubernetes(&work, &assets.cache, say)?;
        report
            .built
            .push((KUBERNETES_COMMANDS.join(", "), started.elapsed()));
    }
    if missing.contains(&"etcd") {
        let started = Instant::now();
        build_etcd(&work, &assets.cache, say)?;
        report.built.push(("etcd".into(), started.elapsed()));
    }
    if missing.contains(&"helm") {
        let started = Instant::now();
        build_helm(&work, &assets.cache, say)?;
        report.built.push(("helm".into(), started.elapsed()));
    }
    if missing.contains(&"versitygw") {
        let started = Instant::now();
        build_versitygw(&work, &assets.cache, say)?;
        report.built.push(("versitygw".into(), started.elapsed()));
    }
    write_versions(&assets.cache)?;
    Ok(report)
}

/// The versions recorded next to cached binaries, one `name version` line each.
fn pinned_versions() -> [(&'static str, &'static str); 8] {
    [
        ("etcd", ETCD_VERSION),
        ("kube-apiserver", KUBERNETES_VERSION),
        ("kube-controller-manager", KUBERNETES_VERSION),
        ("kube-scheduler", KUBERNETES_VERSION),
        ("kubelet", KUBERNETES_VERSION),
        ("kube-proxy", KUBERNETES_VERSION),
        ("helm", HELM_VERSION),
        ("versitygw", VERSITYGW_VERSION),
    ]
}

fn write_versions(dir: &Path) -> Result<(), Error> {
    let text: String = pinned_versions()
        .iter()
        .filter(|(name, _)| dir.join(name).exists())
        .map(|(name, v)| format!("{name} {v}\n"))
        .collect();
    let path = dir.join("VERSIONS");
    std::fs::write(&path, text).map_err(|source| Error::Io {
        what: format!("failed to write {}", path.display()),
        source,
    })
}

/// Removes cached binaries whose recorded version is not the pinned one, so a version bump
/// rebuilds exactly what changed.
fn discard_stale(dir: &Path) {
    let recorded = std::fs::read_to_string(dir.join("VERSIONS")).unwrap_or_default();
    for (name, version) in pinned_versions() {
        let path = dir.join(name);
        let current = recorded
            .lines()
            .any(|l| l.split_once(' ') == Some((name, version)));
        if path.exists() && !current {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Checks that a Go toolchain new enough is on PATH; returns its version text.
pub fn check_go() -> Result<String, Error> {
    let (min_major, min_minor) = MIN_GO_VERSION;
    let output = match Command::new("go").arg("version").output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Go(format!(
                "Go is not installed (no `go` on PATH): Tether builds its local Kubernetes control plane from the official Go modules, so install Go {min_major}.{min_minor} or newer (https://go.dev/dl) and run this again."
            )));
        }
        Err(e) => {
            return Err(Error::Go(format!("`go version` could not be run: {e}.")));
        }
    };
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let version = parse_go_version(&text).ok_or_else(|| {
        Error::Go(format!(
            "`go version` printed {text:?}, which is not a Go version this build understands."
        ))
    })?;
    if version < (min_major, min_minor) {
        return Err(Error::Go(format!(
            "Go {}.{} is too old to build Kubernetes v{KUBERNETES_VERSION}: install Go {min_major}.{min_minor} or newer (https://go.dev/dl) and run this again.",
            version.0, version.1
        )));
    }
    Ok(format!("go{}.{}", version.0, version.1))
}

/// Extracts `(major, minor)` from `go version` output such as `go version go1.26.8 linux/amd64`.
pub fn parse_go_version(text: &str) -> Option<(u32, u32)> {
    let word = text.split_whitespace().find(|w| w.starts_with("go1"))?;
    let mut parts = word.trim_start_matches("go").split(['.', '-', 'r', 'b']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Staging modules replaced in Kubernetes' go.mod (`k8s.io/api => ./staging/src/k8s.io/api`).
pub fn staging_modules(kubernetes_go_mod: &str) -> Vec<String> {
    kubernetes_go_mod
        .lines()
        .filter_map(|line| {
            let line = line.trim().trim_start_matches("replace").trim();
            let (module, target) = line.split_once("=>")?;
            let module = module.split_whitespace().next()?;
            target
                .trim()
                .starts_with("./staging/")
                .then(|| module.to_owned())
        })
        .collect()
}

/// Renders the wrapper go.mod for building Kubernetes commands.
pub fn kubernetes_wrapper_go_mod(version: &str, staging: &[String], godebug: &str) -> String {
    let minor_patch = version.trim_start_matches("1.");
    let mut out = format!(
        "// Generated by tether-controlplane: builds Kubernetes v{version} commands from the module proxy.\nmodule tether.dev/controlplane/kubernetes\n\ngo 1.25.0\n\n"
    );
    if !godebug.is_empty() {
        out.push_str(godebug);
        out.push_str("\n\n");
    }
    out.push_str(&format!("require k8s.io/kubernetes v{version}\n\n"));
    for module in staging {
        out.push_str(&format!("replace {module} => {module} v0.{minor_patch}\n"));
    }
    out
}

fn godebug_line(go_mod: &str) -> String {
    go_mod
        .lines()
        .find(|l| l.starts_with("godebug "))
        .unwrap_or_default()
        .to_owned()
}

fn build_kubernetes(work: &Path, out: &Path, say: &mut dyn FnMut(&str)) -> Result<(), Error> {
    let v = KUBERNETES_VERSION;
    let dir = work.join(format!("kubernetes-v{v}"));
    mkdir(&dir)?;
    say(&format!(
        "[kubernetes] resolving k8s.io/kubernetes v{v} and its staging modules"
    ));
    let json = run_capture(
        "the Kubernetes module",
        Command::new("go").args([
            "mod",
            "download",
            "-json",
            &format!("k8s.io/kubernetes@v{v}"),
        ]),
        &dir,
    )?;
    let info: serde_json::Value = serde_json::from_str(&json).map_err(|e| Error::Build {
        what: "the Kubernetes module".into(),
        command: "go mod download -json".into(),
        status: "unreadable output".into(),
        output: e.to_string(),
    })?;
    let go_mod_path = info["GoMod"].as_str().unwrap_or_default().to_owned();
    let upstream = std::fs::read_to_string(&go_mod_path).map_err(|source| Error::Io {
        what: format!("failed to read Kubernetes' go.mod at {go_mod_path:?}"),
        source,
    })?;
    let staging = staging_modules(&upstream);
    let go_mod = kubernetes_wrapper_go_mod(v, &staging, &godebug_line(&upstream));
    write_if_changed(&dir.join("go.mod"), &go_mod)?;

    let cmds = KUBERNETES_COMMANDS;
    let pkgs: Vec<String> = cmds
        .iter()
        .map(|c| format!("k8s.io/kubernetes/cmd/{c}"))
        .collect();
    // Always: a go.sum from a build of fewer commands lacks the others' modules.
    {
        say(&format!(
            "[kubernetes] downloading modules ({} staging modules replaced)",
            staging.len()
        ));
        let mut get = Command::new("go");
        get.arg("get");
        get.args(pkgs.iter().map(|p| format!("{p}@v{v}")));
        run_streaming("Kubernetes modules", &mut get, &dir, "kubernetes", say)?;
    }
    let minor = v.split('.').nth(1).unwrap_or_default();
    let ldflags = [
        "-s -w".to_owned(),
        format!("-X k8s.io/component-base/version.gitVersion=v{v}"),
        "-X k8s.io/component-base/version.gitMajor=1".to_owned(),
        format!("-X k8s.io/component-base/version.gitMinor={minor}"),
        "-X k8s.io/component-base/version.gitTreeState=clean".to_owned(),
        format!("-X k8s.io/client-go/pkg/version.gitVersion=v{v}"),
        "-X k8s.io/client-go/pkg/version.gitMajor=1".to_owned(),
        format!("-X k8s.io/client-go/pkg/version.gitMinor={minor}"),
    ]
    .join(" ");
    let staging_out = dir.join("out");
    mkdir(&staging_out)?;
    say(
        "[kubernetes] compiling kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy (several minutes on 2 cores)",
    );
    let mut build = Command::new("go");
    build
        .args([
            "build",
            "-v",
            "-trimpath",
            "-tags",
            K8S_TAGS,
            "-ldflags",
            &ldflags,
            "-o",
        ])
        .arg(format!("{}/", staging_out.display()))
        .args(&pkgs);
    run_streaming("kube-apiserver", &mut build, &dir, "kubernetes", say)?;
    for c in cmds {
        install(&staging_out.join(c), &out.join(c))?;
    }
    Ok(())
}

fn build_etcd(work: &Path, out: &Path, say: &mut dyn FnMut(&str)) -> Result<(), Error> {
    let v = ETCD_VERSION;
    let dir = work.join(format!("etcd-v{v}"));
    mkdir(&dir)?;
    write_if_changed(
        &dir.join("go.mod"),
        &format!(
            "// Generated by tether-controlplane: builds etcd v{v} from the module proxy.\nmodule tether.dev/controlplane/etcd\n\ngo 1.25.0\n\nrequire go.etcd.io/etcd/server/v3 v{v}\n"
        ),
    )?;
    write_if_changed(
        &dir.join("main.go"),
        "// Command etcd is upstream etcd, built from go.etcd.io/etcd/server/v3.\npackage main\n\nimport (\n\t\"os\"\n\n\t\"go.etcd.io/etcd/server/v3/etcdmain\"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n",
    )?;
    if !dir.join("go.sum").exists() {
        say(&format!(
            "[etcd] downloading go.etcd.io/etcd/server/v3 v{v}"
        ));
        run_streaming(
            "etcd modules",
            Command::new("go").args(["mod", "tidy"]),
            &dir,
            "etcd",
            say,
        )?;
    }
    say("[etcd] compiling");
    let staged = dir.join("etcd");
    let mut build = Command::new("go");
    build
        .args(["build", "-v", "-trimpath", "-ldflags"])
        .arg(format!(
            "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=v{v}"
        ))
        .arg("-o")
        .arg(&staged)
        .arg(".");
    run_streaming("etcd", &mut build, &dir, "etcd", say)?;
    install(&staged, &out.join("etcd"))
}

fn build_helm(work: &Path, out: &Path, say: &mut dyn FnMut(&str)) -> Result<(), Error> {
    let v = HELM_VERSION;
    let dir = work.join(format!("helm-v{v}"));
    mkdir(&dir)?;
    say(&format!("[helm] compiling helm.sh/helm/v4 v{v}"));
    let mut install_cmd = Command::new("go");
    install_cmd
        .args(["install", "-v", "-trimpath", "-ldflags"])
        .arg(format!(
            "-s -w -X helm.sh/helm/v4/internal/version.version=v{v}"
        ))
        .arg(format!("helm.sh/helm/v4/cmd/helm@v{v}"))
        .env("GOBIN", &dir);
    run_streaming("helm", &mut install_cmd, &dir, "helm", say)?;
    install(&dir.join("helm"), &out.join("helm"))
}

fn build_versitygw(work: &Path, out: &Path, say: &mut dyn FnMut(&str)) -> Result<(), Error> {
    let v = VERSITYGW_VERSION;
    let dir = work.join(format!("versitygw-v{v}"));
    mkdir(&dir)?;
    say(&format!(
        "[versitygw] compiling github.com/versity/versitygw v{v}"
    ));
    let mut install_cmd = Command::new("go");
    install_cmd
        .args(["install", "-v", "-trimpath", "-ldflags"])
        // What upstream's Makefile sets from `git describe`; `versitygw --version` prints it.
        .arg(format!("-s -w -X main.Version=v{v}"))
        .arg(format!("github.com/versity/versitygw/cmd/versitygw@v{v}"))
        .env("GOBIN", &dir);
    run_streaming("versitygw", &mut install_cmd, &dir, "versitygw", say)?;
    install(&dir.join("versitygw"), &out.join("versitygw"))
}

/// Formats a duration for progress lines: `42s`, `3m07s`.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

fn mkdir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        what: format!("failed to create {}", dir.display()),
        source,
    })
}

/// Writes a generated file unless the same content was generated before. For go.mod the
/// comparison is against the last generated copy (`go get` and `go mod tidy` rewrite go.mod),
/// and a change discards go.sum so the sums are recomputed.
fn write_if_changed(path: &Path, contents: &str) -> Result<(), Error> {
    let is_go_mod = path.file_name().is_some_and(|n| n == "go.mod");
    let record = path.with_extension("generated");
    let previous = if is_go_mod {
        std::fs::read_to_string(&record).ok()
    } else {
        std::fs::read_to_string(path).ok()
    };
    if previous.as_deref() == Some(contents) && path.exists() {
        return Ok(());
    }
    if is_go_mod {
        let _ = std::fs::remove_file(path.with_file_name("go.sum"));
    }
    let write = |p: &Path| {
        std::fs::write(p, contents).map_err(|source| Error::Io {
            what: format!("failed to write {}", p.display()),
            source,
        })
    };
    write(path)?;
    if is_go_mod {
        write(&record)?;
    }
    Ok(())
}

/// Moves a freshly built binary into the cache atomically, so an interrupted build never
/// leaves a truncated binary that later runs would trust.
fn install(from: &Path, to: &Path) -> Result<(), Error> {
    let tmp = to.with_extension("partial");
    std::fs::copy(from, &tmp)
        .and_then(|_| std::fs::rename(&tmp, to))
        .map_err(|source| Error::Io {
            what: format!("failed to install {} into {}", from.display(), to.display()),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBERNETES_GO_MOD_EXCERPT: &str = r#"
module k8s.io/kubernetes

go 1.25.0

godebug default=go1.25

require (
	k8s.io/api v0.0.0
	k8s.io/client-go v0.0.0
)

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go
	k8s.io/kube-openapi => k8s.io/kube-openapi v0.0.0-2025
)

replace k8s.io/metrics => ./staging/src/k8s.io/metrics
"#;

    #[test]
    fn reads_staging_modules_from_kubernetes_go_mod() {
        assert_eq!(
            staging_modules(KUBERNETES_GO_MOD_EXCERPT),
            vec!["k8s.io/api", "k8s.io/client-go", "k8s.io/metrics"]
        );
        assert_eq!(
            godebug_line(KUBERNETES_GO_MOD_EXCERPT),
            "godebug default=go1.25"
        );
    }

    #[test]
    fn wrapper_replaces_each_staging_module_with_its_tag() {
        let staging = staging_modules(KUBERNETES_GO_MOD_EXCERPT);
        let go_mod = kubernetes_wrapper_go_mod("1.35.8", &staging, "godebug default=go1.25");
        assert!(go_mod.contains("require k8s.io/kubernetes v1.35.8\n"));
        assert!(go_mod.contains("replace k8s.io/api => k8s.io/api v0.35.8\n"));
        assert!(go_mod.contains("replace k8s.io/metrics => k8s.io/metrics v0.35.8\n"));
        assert!(go_mod.contains("godebug default=go1.25"));
        assert!(!go_mod.contains("kube-openapi"));
    }

    #[test]
    fn parses_go_versions() {
        assert_eq!(
            parse_go_version("go version go1.26.8 linux/amd64"),
            Some((1, 26))
        );
        assert_eq!(
            parse_go_version("go version go1.25 linux/arm64"),
            Some((1, 25))
        );
        assert_eq!(
            parse_go_version("go version go1.26rc1 linux/amd64"),
            Some((1, 26))
        );
        assert_eq!(parse_go_version("go version devel +abc"), None);
        assert_eq!(parse_go_version(""), None);
    }

    #[test]
    fn stale_binaries_are_discarded_by_version() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["etcd", "helm", "versitygw"] {
            std::fs::write(dir.path().join(name), "binary").unwrap();
        }
        std::fs::write(
            dir.path().join("VERSIONS"),
            format!("etcd 3.0.0\nhelm {HELM_VERSION}\nversitygw 1.0.0\n"),
        )
        .unwrap();
        discard_stale(dir.path());
        assert!(!dir.path().join("etcd").exists());
        assert!(dir.path().join("helm").exists());
        assert!(!dir.path().join("versitygw").exists());
    }

    #[test]
    fn a_binary_without_a_recorded_version_is_discarded() {
        // A cache written before versitygw was added has no line for it.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("versitygw"), "binary").unwrap();
        std::fs::write(
            dir.path().join("VERSIONS"),
            format!("helm {HELM_VERSION}\n"),
        )
        .unwrap();
        discard_stale(dir.path());
        assert!(!dir.path().join("versitygw").exists());
    }

    #[test]
    fn versions_file_lists_present_binaries_with_their_pins() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["helm", "versitygw"] {
            std::fs::write(dir.path().join(name), "binary").unwrap();
        }
        write_versions(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("VERSIONS")).unwrap(),
            format!("helm {HELM_VERSION}\nversitygw {VERSITYGW_VERSION}\n")
        );
        // What was just written is current: nothing is discarded.
        discard_stale(dir.path());
        assert!(dir.path().join("versitygw").exists());
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(4_200)), "4.2s");
        assert_eq!(human(Duration::from_secs(187)), "3m07s");
    }
}
