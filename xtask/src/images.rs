//! `cargo xtask images`: OCI images of the operator, the relay and the agent, built without a
//! container daemon. Each image is two layers in an OCI image layout (`<out>/<image>`):
//!
//! 1. **The base**, the same for all three: the files of Debian's `libc6`, `libgcc-s1` and
//!    `ca-certificates` (downloaded with `apt-get download`, unpacked with `dpkg-deb -x`; the
//!    binaries need nothing else), with the CA bundle assembled from Mozilla's certificates as
//!    `update-ca-certificates` would, the user and group `nonroot` (65532), and `/tmp`.
//!    Every other executable is removed: there is no shell, no package manager, no `ldd`.
//! 2. **The binary**, stripped of debug information, as `/usr/local/bin/<binary>`.
//!
//! The configuration runs the binary as 65532:65532 with the OCI labels for title, version,
//! revision, source and licence. Layers are assembled with `umoci` (Debian's package,
//! installed when missing). `Containerfile` at the top of the repository builds the same images
//! with Docker or Podman.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::crdgen::workspace_root;

/// The images: name, binary, what it is.
pub const IMAGES: &[(&str, &str, &str)] = &[
    (
        "tether-operator",
        "tether-operator",
        "Tether's operator: reconciles RemoteSessions, AssistanceRequests and Devices",
    ),
    (
        "tether-relay",
        "tether-relay",
        "Tether's relay: joins technicians to dial-out device agents, records sessions",
    ),
    (
        "tether-agent",
        "tether-agent",
        "Tether's device agent: dials out to the relay, serves the session's channels",
    ),
];

/// Debian packages whose files make the base layer.
const BASE_PACKAGES: &[&str] = &["libc6", "libgcc-s1", "ca-certificates"];

/// The user and group the images run as (distroless's `nonroot`).
pub const NONROOT: u32 = 65532;

/// Parameters of `cargo xtask images`.
#[derive(Clone, Debug, clap::Args)]
pub struct ImagesArgs {
    /// Where the OCI image layouts go (one directory per image); default
    /// `<target>/images`.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The images' tag; default the workspace version (the chart's appVersion).
    #[arg(long)]
    pub tag: Option<String>,
    /// Take the binaries from this directory instead of building them (`cargo build
    /// --release`), e.g. `target/debug` for a quick local image.
    #[arg(long, value_name = "DIR")]
    pub binaries: Option<PathBuf>,
}

/// Builds the three images.
pub fn run(args: ImagesArgs) -> Result<()> {
    let tag = args
        .tag
        .clone()
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned());
    if !valid_tag(&tag) {
        bail!(
            "--tag {tag:?} is not an image tag (letters, digits, '.', '_', '-', not starting with '.' or '-'; at most 128)"
        );
    }
    ensure_umoci()?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let binaries = match args.binaries {
        Some(dir) => dir,
        None => {
            crate::test::cargo(&[
                "build",
                "--release",
                "-p",
                "tether-operator",
                "-p",
                "tether-relay",
                "-p",
                "tether-agent",
            ])?;
            target.join("release")
        }
    };
    let out = args.out.unwrap_or_else(|| target.join("images"));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let work = tempfile::Builder::new()
        .prefix("tether-images-")
        .tempdir()
        .context("cannot create a working directory")?;

    eprintln!("[images] base layer: {}", BASE_PACKAGES.join(", "));
    let base = work.path().join("base");
    base_rootfs(work.path(), &base)?;
    let revision = git_revision();
    for (i, (name, binary, description)) in IMAGES.iter().enumerate() {
        eprintln!("[images] {}/{}: {name}:{tag}", i + 1, IMAGES.len());
        let source = binaries.join(binary);
        if !source.is_file() {
            bail!(
                "{} does not exist: build it first or drop --binaries",
                source.display()
            );
        }
        let layer = work.path().join(format!("{name}-layer"));
        let bin = layer.join("usr/local/bin");
        std::fs::create_dir_all(&bin)?;
        run_tool(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(&source)
                .arg(bin.join(binary)),
            "objcopy (binutils)",
        )?;
        let layout = out.join(name);
        if layout.exists() {
            std::fs::remove_dir_all(&layout)
                .with_context(|| format!("cannot replace {}", layout.display()))?;
        }
        let image = format!("{}:{tag}", layout.display());
        umoci(&["init", "--layout", &layout.to_string_lossy()])?;
        umoci(&["new", "--image", &image])?;
        umoci(&[
            "insert",
            "--image",
            &image,
            "--history.comment",
            "libc6, libgcc-s1, ca-certificates from Debian; user nonroot",
            &base.to_string_lossy(),
            "/",
        ])?;
        umoci(&[
            "insert",
            "--image",
            &image,
            "--history.comment",
            &format!("{binary} {tag}"),
            &layer.to_string_lossy(),
            "/",
        ])?;
        let user = format!("{NONROOT}:{NONROOT}");
        let entrypoint = format!("/usr/local/bin/{binary}");
        let labels = [
            format!("org.opencontainers.image.title={name}"),
            format!("org.opencontainers.image.description={description}"),
            format!("org.opencontainers.image.version={tag}"),
            format!("org.opencontainers.image.revision={revision}"),
            format!(
                "org.opencontainers.image.source={}",
                env!("CARGO_PKG_REPOSITORY")
            ),
            format!(
                "org.opencontainers.image.licenses={}",
                env!("CARGO_PKG_LICENSE")
            ),
        ];
        let mut config: Vec<&str> = vec![
            "config",
            "--image",
            &image,
            "--config.user",
            &user,
            "--config.entrypoint",
            &entrypoint,
            "--config.workingdir",
            "/",
            "--config.env",
            "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
        ];
        for label in &labels {
            config.extend(["--config.label", label]);
        }
        umoci(&config)?;
        umoci(&["gc", "--layout", &layout.to_string_lossy()])?;
    }
    println!("Images (OCI layouts) in {}:", out.display());
    for (name, _, _) in IMAGES {
        println!("  {name}:{tag}  {}", out.join(name).display());
    }
    println!(
        "Push one with skopeo, e.g.: skopeo copy oci:{}:{tag} docker://REGISTRY/{}:{tag}",
        out.join(IMAGES[1].0).display(),
        IMAGES[1].0
    );
    Ok(())
}

/// An OCI tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag.len() <= 128
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The base layer's files in `root`: the packages' contents, the CA bundle, the user, /tmp.
fn base_rootfs(work: &Path, root: &Path) -> Result<()> {
    let debs = work.join("debs");
    std::fs::create_dir_all(&debs)?;
    let mut download = Command::new("apt-get");
    download
        .arg("download")
        .args(BASE_PACKAGES)
        .current_dir(&debs);
    if run_tool(&mut download, "apt-get (Debian or Ubuntu)").is_err() {
        bail!(
            "apt-get download {} failed: the base layer is made of Debian packages (is this Debian or Ubuntu, with its package lists? try apt-get update)",
            BASE_PACKAGES.join(" ")
        );
    }
    std::fs::create_dir_all(root)?;
    let mut found = 0;
    for entry in std::fs::read_dir(&debs)? {
        let deb = entry?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            run_tool(
                Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root),
                "dpkg-deb",
            )?;
            found += 1;
        }
    }
    if found != BASE_PACKAGES.len() {
        bail!(
            "apt-get download gave {found} packages for {}",
            BASE_PACKAGES.len()
        );
    }
    // Nothing runs but the binary: no shell, no tools, no documentation.
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "usr/libexec",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/lintian",
        "usr/share/locale",
        "usr/share/info",
        "etc/ca-certificates",
    ] {
        let path = root.join(dir);
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
    }
    // The CA bundle, as update-ca-certificates makes it from Mozilla's list.
    let mozilla = root.join("usr/share/ca-certificates/mozilla");
    let mut certs: Vec<PathBuf> = std::fs::read_dir(&mozilla)
        .with_context(|| format!("ca-certificates has no {}", mozilla.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "crt"))
        .collect();
    certs.sort();
    let mut bundle = String::new();
    for cert in &certs {
        let pem = std::fs::read_to_string(cert)?;
        bundle.push_str(pem.trim_end());
        bundle.push('\n');
    }
    let ssl = root.join("etc/ssl/certs");
    std::fs::create_dir_all(&ssl)?;
    std::fs::write(ssl.join("ca-certificates.crt"), bundle)?;
    let etc = root.join("etc");
    std::fs::write(
        etc.join("passwd"),
        format!(
            "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
        ),
    )?;
    std::fs::write(
        etc.join("group"),
        format!("root:x:0:\nnonroot:x:{NONROOT}:\n"),
    )?;
    std::fs::write(
        etc.join("nsswitch.conf"),
        "passwd: files\ngroup: files\nhosts: files dns\n",
    )?;
    for dir in ["tmp", "home/nonroot"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    if is_root() {
        std::os::unix::fs::chown(root.join("home/nonroot"), Some(NONROOT), Some(NONROOT))?;
    }
    eprintln!(
        "[images] base: {} CA certificates, nonroot {NONROOT}",
        certs.len()
    );
    Ok(())
}

/// Runs umoci (rootless when not root).
fn umoci(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("umoci");
    let (verb, rest) = args.split_first().context("umoci without a command")?;
    cmd.arg(verb);
    if !is_root() && matches!(*verb, "insert") {
        cmd.arg("--rootless");
    }
    cmd.args(rest);
    run_tool(&mut cmd, "umoci")
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to run {what}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Installs Debian's umoci if it is not on PATH.
fn ensure_umoci() -> Result<()> {
    crate::tools::ensure_debian_packages(&[("umoci", "umoci")])
}

fn is_root() -> bool {
    crate::tools::is_root()
}

fn git_revision() -> String {
    Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}
