//! `sandpool image import|list|rm`: images of a standalone platform. The
//! CLI talks to the platform's private containerd directly (its socket
//! under DATA_DIR, namespace `sandpool`, the same the node agent uses), so
//! it runs on the platform's host with the rights to that socket. Imports
//! go through containerd's content, diff and snapshots services (the diff
//! service applies layers with containerd's own path checks); the tarball
//! is only indexed, never unpacked by sandpool.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::Subcommand;
use sandpool_node_agent::{archive, containerd::Ctr, image};

/// containerd namespace of the node agent's images and sandboxes.
const NAMESPACE: &str = "sandpool";

#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    #[command(subcommand)]
    cmd: ImageCmd,
    #[arg(
        long,
        global = true,
        env = "SANDPOOL_DATA_DIR",
        default_value = "/var/lib/sandpool"
    )]
    data_dir: PathBuf,
    /// containerd socket (default: the private one, DATA_DIR/containerd/containerd.sock;
    /// give the one `serve --containerd-socket` was given).
    #[arg(long, global = true, env = "SANDPOOL_CONTAINERD_SOCKET")]
    containerd_socket: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum ImageCmd {
    /// Import a `docker save` or OCI-layout tarball; it is then usable as an image name.
    Import {
        file: PathBuf,
        /// Name it is stored under (default: the names in the tarball).
        #[arg(long)]
        name: Option<String>,
    },
    /// List images: name, digest, size, builtin or imported.
    List,
    /// Remove an imported image (builtin images are refused).
    Rm { name: String },
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

pub async fn run(a: ImageArgs) -> anyhow::Result<()> {
    let socket = a
        .containerd_socket
        .unwrap_or_else(|| a.data_dir.join("containerd").join("containerd.sock"));
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
                let kind = if i.builtin { "builtin" } else { "imported" };
                println!("{}\t{}\t{}\t{kind}", i.name, i.digest, i.size);
            }
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
