//! `sandpool image pull|import|list|rm`: images of a standalone platform. The
//! CLI talks to the platform's private containerd directly (its socket
//! under DATA_DIR, namespace `sandpool`, the same the node agent uses), so
//! it runs on the platform's host with the rights to that socket. Imports
//! go through containerd's content, diff and snapshots services (the diff
//! service applies layers with containerd's own path checks); the tarball
//! is only indexed, never unpacked by sandpool. Pulls fetch from the
//! registry into the content store (node agent's `registry` module) and
//! unpack the same way.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use sandpool_node_agent::{
    archive,
    containerd::{Ctr, NAMESPACE},
    image,
    registry::{self, Credentials, Puller, RegistryConfig},
};

#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    #[command(subcommand)]
    cmd: ImageCmd,
    #[command(flatten)]
    dir: crate::datadir::DataDirArg,
    /// containerd socket (default: the private one, DATA_DIR/containerd/containerd.sock;
    /// give the one `serve --containerd-socket` was given).
    #[arg(long, global = true, env = "SANDPOOL_CONTAINERD_SOCKET")]
    containerd_socket: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum ImageCmd {
    /// Pull an image from a registry: `host[:port]/name:tag`,
    /// `host/name@sha256:…`, Docker Hub short names (`python:3.12`).
    Pull(PullArgs),
    /// Import a `docker save` or OCI-layout tarball; it is then usable as an image name.
    Import {
        file: PathBuf,
        /// Name it is stored under (default: the names in the tarball).
        #[arg(long)]
        name: Option<String>,
    },
    /// List images: name, digest, size, builtin, pulled or imported.
    List,
    /// Remove an imported image (builtin images are refused).
    Rm { name: String },
    /// Remove pulled, imported and template-built images no pool or
    /// sandbox uses (builtin images stay; shared layers are containerd's to
    /// collect once no image holds them).
    Gc(GcArgs),
}

#[derive(clap::Args, Debug)]
struct GcArgs {
    /// Keep images pulled or imported less than this long ago (`30m`, `24h`, `7d`, `0`).
    #[arg(long, default_value = "24h", value_parser = crate::gc::parse_duration)]
    keep_unused_for: Duration,
    /// Only say what would be removed.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    scheduler: crate::cli::SchedulerAddr,
}

#[derive(clap::Args, Debug)]
struct PullArgs {
    reference: String,
    /// Registry user (with --password).
    #[arg(long)]
    username: Option<String>,
    /// Registry password or token (with --username); `-` reads it from stdin.
    #[arg(long, env = "SANDPOOL_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// A docker `config.json` whose `auths` hold the credentials (default:
    /// $DOCKER_CONFIG/config.json or ~/.docker/config.json when present).
    #[arg(long)]
    auth_file: Option<PathBuf>,
    /// A registry (`host[:port]`) reached over plain HTTP; repeatable.
    /// Loopback registries are too unless the registries config gives
    /// them a `ca_file` or `insecure = false`; every other one is HTTPS.
    #[arg(long = "insecure-registry")]
    insecure: Vec<String>,
    /// The registries config (mirrors, insecure registries, CA files, a
    /// docker config.json); default: DATA_DIR/registries.toml when present.
    #[arg(long)]
    registries_config: Option<PathBuf>,
}

/// The registries config: `given`, else DATA_DIR/registries.toml when it
/// exists, else none; plus the `--insecure-registry` flags.
pub fn registry_config(
    given: Option<&Path>,
    data_dir: &Path,
    insecure: &[String],
) -> anyhow::Result<RegistryConfig> {
    let default = data_dir.join("registries.toml");
    let path = given.or_else(|| Some(default.as_path()).filter(|p| p.exists()));
    let mut cfg = match path {
        Some(p) => RegistryConfig::load(p)?,
        None => RegistryConfig::default(),
    };
    cfg.insecure.extend(insecure.iter().cloned());
    Ok(cfg)
}

/// The docker config file to read credentials from: the given one, else
/// the usual places when they exist.
fn auth_file(given: Option<PathBuf>) -> Option<PathBuf> {
    if given.is_some() {
        return given;
    }
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))?;
    Some(dir.join("config.json")).filter(|p| p.is_file())
}

/// The credentials for the registry of `reference`: flags, else the auth file.
fn credentials(a: &PullArgs, registry: &str) -> anyhow::Result<Option<Credentials>> {
    match (&a.username, &a.password) {
        (Some(u), Some(p)) => {
            let password = if p == "-" {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                line.trim_end_matches(['\r', '\n']).to_string()
            } else {
                p.clone()
            };
            return Ok(Some(Credentials {
                username: u.clone(),
                password,
            }));
        }
        (Some(_), None) => bail!("--username needs --password"),
        (None, Some(_)) if a.auth_file.is_none() => bail!("--password needs --username"),
        _ => {}
    }
    let Some(file) = auth_file(a.auth_file.clone()) else {
        return Ok(None);
    };
    let text = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let json: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a docker config.json", file.display()))?;
    Ok(registry::docker_config_credentials(&json, registry)?)
}

async fn pull(
    a: PullArgs,
    data_dir: &Path,
    ctr: impl Future<Output = anyhow::Result<Ctr>>,
) -> anyhow::Result<()> {
    let reference = registry::parse_reference(&a.reference)?;
    if image::builtin(&a.reference).is_some() {
        bail!(
            "{} is a builtin image name; it is built locally, not pulled",
            a.reference
        );
    }
    let cfg = registry_config(a.registries_config.as_deref(), data_dir, &a.insecure)?;
    let creds = credentials(&a, reference.registry())?;
    let ctr = ctr.await?;
    let (progress, bytes, bar) = reporters(std::io::stderr().is_terminal());
    let mut puller = Puller::new(cfg);
    if let Some(b) = bytes {
        puller = puller.on_bytes(b);
    }
    let pulled = puller.pull(&ctr, &a.reference, creds, progress).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let pulled = pulled?;
    for n in &pulled.names {
        println!("{n}\t{}", pulled.digest);
    }
    Ok(())
}

/// The size of the layer a progress line says is being fetched
/// (`layer 1/2 sha256:…: fetching 1084158 bytes`).
fn fetching_bytes(line: &str) -> Option<u64> {
    line.strip_suffix(" bytes")?
        .rsplit_once(": fetching ")?
        .1
        .parse()
        .ok()
}

/// How `image pull` reports: on a terminal, one bar of the bytes of the
/// layers being fetched, with the progress lines above it; otherwise plain lines.
fn reporters(
    tty: bool,
) -> (
    registry::Progress,
    Option<registry::ByteProgress>,
    Option<ProgressBar>,
) {
    if !tty {
        return (Arc::new(|line: String| crate::say(line)), None, None);
    }
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let bar = ProgressBar::new(0).with_style(style);
    let (b, c) = (bar.clone(), bar.clone());
    // Layers are fetched three at once: one bar holds all their bytes.
    let lines = Arc::new(move |line: String| {
        if let Some(n) = fetching_bytes(&line) {
            b.inc_length(n);
            b.set_message("layers");
        }
        b.println(format!("sandpool: {line}"));
    });
    let bytes = Arc::new(move |n: u64| c.inc(n));
    (lines, Some(bytes), Some(bar))
}

/// The names an image from `img` is stored under: `--name` or the
/// tarball's own, each also in its full docker form.
pub fn names_for(given: Option<&str>, img: &archive::ArchiveImage) -> anyhow::Result<Vec<String>> {
    let wanted: Vec<&str> = match given {
        Some(n) => vec![n],
        None => img.names.iter().map(String::as_str).collect(),
    };
    if wanted.is_empty() {
        bail!("the tarball names no image; give one with --name");
    }
    let mut out = Vec::new();
    for w in wanted {
        for n in archive::image_names(w)? {
            if image::builtin(&n).is_some() {
                bail!("{n} is a builtin image name; import under another name");
            }
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// `image gc`: the plan, printed; carried out unless `--dry-run`.
async fn gc(a: GcArgs, ctr: Ctr, token: &sandpool_proto::auth::ServiceToken) -> anyhow::Result<()> {
    let used = crate::gc::used_names(&a.scheduler.addr, token, &ctr).await?;
    let images = ctr.image_summaries().await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let (mut removed, mut freed) = (0, 0);
    for (i, keep) in crate::gc::plan(&images, &used, now, a.keep_unused_for) {
        match keep {
            Some(why) => println!("keep\t{}\t{why}", i.name),
            None if a.dry_run => println!("would remove\t{}\t{}", i.name, i.size),
            None => {
                ctr.remove_image(&i.name).await?;
                println!("removed\t{}\t{}", i.name, i.size);
                removed += 1;
                freed += i.size;
            }
        }
    }
    if !a.dry_run {
        crate::say(format!(
            "removed {removed} image(s); up to {freed} bytes go once containerd collects what nothing else shares"
        ));
    }
    Ok(())
}

pub async fn run(a: ImageArgs, service_token: Option<String>) -> anyhow::Result<()> {
    let socket = a
        .containerd_socket
        .unwrap_or_else(|| a.dir.data_dir.join("containerd").join("containerd.sock"));
    let connect = async {
        Ctr::connect(&socket, NAMESPACE, Duration::from_secs(5))
            .await
            .with_context(|| {
                format!(
                    "connecting to containerd at {} (is `sandpool serve` running?)",
                    socket.display()
                )
            })
    };
    match a.cmd {
        ImageCmd::Pull(p) => pull(p, &a.dir.data_dir, connect).await?,
        ImageCmd::Import { file, name } => {
            let f = file.clone();
            let img = tokio::task::spawn_blocking(move || archive::read(&f)).await??;
            let names = names_for(name.as_deref(), &img)?;
            let ctr = connect.await?;
            ctr.import_archive(&img, &names)
                .await
                .with_context(|| format!("importing {}", file.display()))?;
            for n in &names {
                println!("{n}\t{}", img.manifest_digest);
            }
        }
        ImageCmd::List => {
            let images = connect.await?.image_summaries().await?;
            println!("NAME\tDIGEST\tSIZE\tKIND");
            for i in images {
                let kind = match (i.builtin, i.pulled) {
                    (true, _) => "builtin",
                    (false, true) => "pulled",
                    (false, false) => "imported",
                };
                println!("{}\t{}\t{}\t{kind}", i.name, i.digest, i.size);
            }
        }
        ImageCmd::Gc(g) => {
            let given = service_token.or_else(|| {
                std::fs::read_to_string(a.dir.data_dir.join("service-token"))
                    .ok()
                    .map(|t| t.trim().to_string())
            });
            let token = sandpool_proto::auth::ServiceToken::new(given.as_deref())?;
            gc(g, connect.await?, &token).await?;
        }
        ImageCmd::Rm { name } => {
            let ctr = connect.await?;
            let builtin = image::builtin(&name).is_some()
                || ctr
                    .image_summaries()
                    .await?
                    .iter()
                    .any(|i| i.name == name && i.builtin);
            if builtin {
                bail!("{name} is a builtin image; it is rebuilt on demand and cannot be removed");
            }
            if !ctr.remove_image(&name).await? {
                bail!("no image {name}");
            }
            println!("removed {name}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(names: &[&str]) -> archive::ArchiveImage {
        archive::ArchiveImage {
            path: PathBuf::new(),
            names: names.iter().map(|s| s.to_string()).collect(),
            manifest: vec![],
            manifest_digest: String::new(),
            manifest_media_type: String::new(),
            config: vec![],
            config_digest: String::new(),
            layers: vec![],
            diff_ids: vec![],
        }
    }

    #[test]
    fn the_registries_config_is_the_given_file_else_the_data_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let insecure = ["reg.lan:5000".to_string()];
        let cfg = registry_config(None, dir.path(), &insecure).unwrap();
        assert_eq!(cfg.insecure, insecure, "no file: the flags only");
        let own = dir.path().join("registries.toml");
        std::fs::write(
            &own,
            "[registries.\"docker.io\"]\nmirrors = [\"m.lan:5000\"]\n",
        )
        .unwrap();
        let cfg = registry_config(None, dir.path(), &[]).unwrap();
        assert_eq!(cfg.mirrors["docker.io"], ["m.lan:5000"]);
        let given = dir.path().join("other.toml");
        std::fs::write(&given, "[registries.\"x.io\"]\nmirors = []\n").unwrap();
        let e = registry_config(Some(&given), dir.path(), &[]).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("mirors") && e.contains("other.toml"), "{e}");
        let missing = dir.path().join("missing.toml");
        assert!(registry_config(Some(&missing), dir.path(), &[]).is_err());
    }

    #[test]
    fn a_terminal_gets_a_byte_bar_and_a_pipe_plain_lines() {
        assert_eq!(
            fetching_bytes("layer 1/2 sha256:c4a589d73a09: fetching 1084158 bytes"),
            Some(1_084_158)
        );
        assert_eq!(fetching_bytes("layer 1/2 sha256:c4: done in 0.1s"), None);
        assert_eq!(fetching_bytes("resolving r/app:1"), None);
        let (lines, bytes, bar) = reporters(false);
        assert!(bytes.is_none() && bar.is_none(), "a pipe: lines only");
        lines("plain".into());
        let (lines, bytes, bar) = reporters(true);
        let (bytes, bar) = (bytes.expect("bytes"), bar.expect("a bar"));
        lines("layer 1/2 sha256:ab: fetching 100 bytes".into());
        bytes(40);
        lines("layer 2/2 sha256:cd: fetching 50 bytes".into());
        bytes(2);
        bytes(50);
        // two layers in flight at once: one bar of both layers' bytes
        assert_eq!((bar.length(), bar.position()), (Some(150), 92));
        assert_eq!(bar.message(), "layers");
    }

    #[test]
    fn names_come_from_the_flag_or_the_tarball() {
        let i = img(&["alpine:3"]);
        assert_eq!(
            names_for(None, &i).unwrap(),
            ["alpine:3", "docker.io/library/alpine:3"]
        );
        assert_eq!(
            names_for(Some("me/app:1"), &i).unwrap(),
            ["me/app:1", "docker.io/me/app:1"]
        );
        let e = names_for(None, &img(&[])).unwrap_err().to_string();
        assert!(e.contains("--name"), "{e}");
        let e = names_for(Some("busybox"), &i).unwrap_err().to_string();
        assert!(e.contains("builtin"), "{e}");
    }
}
