//! Sandbox images without a registry: build a root filesystem locally
//! (busybox-static, or Debian minbase + python3 with debootstrap), pack it as a
//! single-layer OCI image, and hand the blobs to containerd's content/images
//! API (see `containerd.rs`).

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use sha2::{Digest, Sha256};

use crate::error::{AgentError, Result};

pub const BUSYBOX: &str = "sandpool/busybox:latest";
pub const PYTHON: &str = "sandpool/python:3";
pub const CODE_INTERPRETER: &str = "sandpool/code-interpreter:1";

/// The images sandpool can build by itself, by name and short alias.
/// Upstream OpenSandbox's `opensandbox/code-interpreter` (any registry, any
/// tag) is the builtin code-interpreter image, so its tests run unchanged.
pub fn builtin(name: &str) -> Option<&'static str> {
    match name {
        BUSYBOX | "busybox" | "sandpool/busybox" => Some(BUSYBOX),
        PYTHON | "python" | "python3" | "sandpool/python" => Some(PYTHON),
        CODE_INTERPRETER | "code-interpreter" | "sandpool/code-interpreter" => {
            Some(CODE_INTERPRETER)
        }
        n if is_upstream_code_interpreter(n) => Some(CODE_INTERPRETER),
        _ => None,
    }
}

/// `[registry/]opensandbox/code-interpreter[:tag][@digest]`.
fn is_upstream_code_interpreter(name: &str) -> bool {
    let path = name.split('@').next().unwrap_or(name);
    let path = match path.rsplit_once(':') {
        Some((p, tag)) if !tag.contains('/') => p,
        _ => path,
    };
    path == UPSTREAM_CODE_INTERPRETER
        || path
            .strip_suffix(UPSTREAM_CODE_INTERPRETER)
            .is_some_and(|registry| registry.ends_with('/'))
}

const UPSTREAM_CODE_INTERPRETER: &str = "opensandbox/code-interpreter";

/// The entrypoint upstream's code-interpreter image has (its tests name it).
/// In sandpool the in-sandbox runtime serves execd and the interpreter, so
/// this script only keeps the sandbox's main process alive.
pub const CODE_INTERPRETER_ENTRYPOINT: &str = "/opt/code-interpreter/code-interpreter.sh";

/// Python packages of the code-interpreter image, from PyPI when it is built.
/// matplotlib stays below 3.11, which removed `boxplot(labels=...)` (renamed
/// `tick_labels` in 3.9): code written for E2B's and OpenSandbox's
/// interpreter images, whose matplotlib predates the removal, still runs.
/// `deno` (PyPI's redistribution of the Deno binary) is the JavaScript and
/// TypeScript kernel (`deno jupyter`), `jjava` the Java kernel (JShell).
pub const CODE_INTERPRETER_PIP: &[&str] = &[
    "ipykernel",
    "numpy",
    "pandas",
    "matplotlib<3.11",
    "deno",
    "jjava",
];

/// Debian packages of the code-interpreter image beyond the python
/// image's: pip, R with its Jupyter kernel (IRkernel), and the JDK whose
/// JShell the Java kernel runs.
pub const CODE_INTERPRETER_PACKAGES: &[&str] = &[
    "python3-pip",
    "r-base-core",
    "r-cran-irkernel",
    "default-jdk-headless",
];

/// The JavaScript/TypeScript kernelspec the code-interpreter image gets
/// (named `javascript`, as E2B's): Deno's kernel, without colours, update
/// checks or permission prompts (it runs with every permission, as
/// `deno jupyter` does).
const DENO_KERNELSPEC: &str = r#"{"argv": ["/usr/local/bin/deno", "jupyter", "--kernel", "--conn", "{connection_file}"], "display_name": "JavaScript and TypeScript (Deno)", "language": "typescript", "env": {"NO_COLOR": "1", "DENO_NO_UPDATE_CHECK": "1", "DENO_NO_PROMPT": "1"}}
"#;
const DENO_KERNELSPEC_PATH: &str = "/usr/local/share/jupyter/kernels/javascript/kernel.json";

/// A single-layer OCI image ready to import.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ImageBlobs {
    pub name: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layer_path: PathBuf,
    pub layer_digest: String,
    pub layer_size: u64,
    pub diff_id: String,
    /// The recipe key of a builtin image (`recipe_key`), empty otherwise;
    /// stored as the `RECIPE_LABEL` label of the containerd image record.
    #[serde(default)]
    pub recipe: String,
}

/// containerd image label holding the recipe key a builtin image was built from.
pub const RECIPE_LABEL: &str = "org.sandpool.recipe";

/// Debian packages of the builtin python image, installed by debootstrap
/// `--include` on top of minbase. debootstrap resolves only `Depends` and
/// `Pre-Depends` (never `Recommends`), so this stays lean. `python-is-python3`
/// makes `python` run python3; `sudo` comes without any sudoers grant for
/// the sandbox user (see docs/compatibility.md).
pub const PYTHON_PACKAGES: &[&str] = &[
    "python3",
    "python-is-python3",
    "ca-certificates",
    "curl",
    "git",
    "sudo",
];

const PYTHON_ENV: &[&str] = &[
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
];
const BUSYBOX_ENV: &[&str] = &["PATH=/bin"];

/// The Debian packages of a debootstrapped builtin image: the python
/// image's, plus the code-interpreter image's own.
fn debian_packages(name: &str) -> Vec<&'static str> {
    let mut p = PYTHON_PACKAGES.to_vec();
    if name == CODE_INTERPRETER {
        p.extend_from_slice(CODE_INTERPRETER_PACKAGES);
    }
    p
}

/// debootstrap's arguments for the python image's root filesystem in `dir`.
pub fn debootstrap_args(codename: &str, dir: &Path, mirror: &str) -> Vec<String> {
    debootstrap_args_for(PYTHON, codename, dir, mirror)
}

fn debootstrap_args_for(name: &str, codename: &str, dir: &Path, mirror: &str) -> Vec<String> {
    vec![
        "--variant=minbase".into(),
        format!("--include={}", debian_packages(name).join(",")),
        codename.into(),
        dir.display().to_string(),
        mirror.into(),
    ]
}

/// Everything a builtin image's contents depend on, as text (None for a
/// name that is not a builtin image). Any change here changes `recipe_key`.
pub fn recipe(name: &str) -> Option<String> {
    // bump when the build code changes what an image holds in a way the
    // text below does not show
    const FORMAT: u32 = 5;
    let (uid, gid) = crate::spec::SANDBOX_USER;
    let user = format!("user {uid}:{gid} {}", crate::spec::SANDBOX_HOME);
    match name {
        BUSYBOX => Some(format!(
            "format {FORMAT}\nbusybox-static\n{user}\nenv {}\n",
            BUSYBOX_ENV.join(" ")
        )),
        PYTHON => Some(format!(
            "format {FORMAT}\ndebootstrap minbase {}\n{user} no-sudoers-grant\nenv {}\n",
            PYTHON_PACKAGES.join(","),
            PYTHON_ENV.join(" ")
        )),
        CODE_INTERPRETER => Some(format!(
            "format {FORMAT}\ndebootstrap minbase {}\npip {}\nkernelspec {DENO_KERNELSPEC_PATH} {DENO_KERNELSPEC}entrypoint {CODE_INTERPRETER_ENTRYPOINT}\n{user} no-sudoers-grant\nenv {}\n",
            debian_packages(name).join(","),
            CODE_INTERPRETER_PIP.join(" "),
            PYTHON_ENV.join(" ")
        )),
        _ => None,
    }
}

/// Short digest of `recipe(name)`: names the image's cache directory and
/// labels its containerd record, so a changed recipe never reuses an image
/// built from an older one.
pub fn recipe_key(name: &str) -> Option<String> {
    recipe(name).map(|r| hex::encode(&Sha256::digest(r.as_bytes())[..8]))
}

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

struct HashWriter<W> {
    inner: W,
    hash: Sha256,
    count: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Pack `rootfs` as a gzip layer in `out_dir` and describe it as an image.
pub fn pack(name: &str, rootfs: &Path, out_dir: &Path, env: &[&str]) -> Result<ImageBlobs> {
    fs::create_dir_all(out_dir).map_err(|e| AgentError::io(out_dir.display().to_string(), e))?;
    let layer_path = out_dir.join("layer.tar.gz");
    let tmp = out_dir.join("layer.tar.gz.tmp");
    let file = fs::File::create(&tmp).map_err(|e| AgentError::io(tmp.display().to_string(), e))?;
    let gz_hashed = HashWriter {
        inner: io::BufWriter::new(file),
        hash: Sha256::new(),
        count: 0,
    };
    let gz = flate2::write::GzEncoder::new(gz_hashed, flate2::Compression::fast());
    let tar_hashed = HashWriter {
        inner: gz,
        hash: Sha256::new(),
        count: 0,
    };
    let mut builder = tar::Builder::new(tar_hashed);
    builder.follow_symlinks(false);
    append_tree(&mut builder, rootfs, Path::new(""))
        .map_err(|e| AgentError::image(format!("packing {}", rootfs.display()), e))?;
    let tar_hashed = builder
        .into_inner()
        .map_err(|e| AgentError::image("finishing the layer tar", e))?;
    let diff_id = format!("sha256:{}", hex::encode(tar_hashed.hash.finalize()));
    let gz_hashed = tar_hashed
        .inner
        .finish()
        .map_err(|e| AgentError::image("finishing the layer gzip", e))?;
    let layer_digest = format!("sha256:{}", hex::encode(gz_hashed.hash.clone().finalize()));
    let layer_size = gz_hashed.count;
    let mut w = gz_hashed.inner;
    w.flush()
        .map_err(|e| AgentError::image("flushing the layer file", e))?;
    drop(w);
    fs::rename(&tmp, &layer_path)
        .map_err(|e| AgentError::io(layer_path.display().to_string(), e))?;

    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": env, "Cmd": ["/bin/sh"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created_by": format!("sandpool image build {name}") }]
    }))
    .map_err(|e| AgentError::image("encoding the image config", e))?;
    let config_digest = sha256_digest(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": { "mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": MEDIA_LAYER, "digest": layer_digest, "size": layer_size }]
    }))
    .map_err(|e| AgentError::image("encoding the image manifest", e))?;
    Ok(ImageBlobs {
        name: name.to_string(),
        manifest_digest: sha256_digest(&manifest),
        manifest,
        config_digest,
        config,
        layer_path,
        layer_digest,
        layer_size,
        diff_id,
        recipe: String::new(),
    })
}

/// Deterministic walk (sorted), skipping special files (device nodes and
/// sockets are created by the runtime at start, not shipped in images).
fn append_tree<W: Write>(b: &mut tar::Builder<W>, root: &Path, rel: &Path) -> io::Result<()> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = fs::read_dir(&dir)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let rel_path = rel.join(e.file_name());
        let ft = e.file_type()?;
        if ft.is_dir() {
            b.append_path_with_name(e.path(), &rel_path)?;
            append_tree(b, root, &rel_path)?;
        } else if ft.is_file() || ft.is_symlink() {
            b.append_path_with_name(e.path(), &rel_path)?;
        }
    }
    Ok(())
}

fn mkdirs(root: &Path, dirs: &[(&str, u32)]) -> io::Result<()> {
    for (d, mode) in dirs {
        let p = root.join(d);
        fs::create_dir_all(&p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode))?;
    }
    Ok(())
}

/// The unprivileged user sandboxes run as (`spec::SANDBOX_USER`): `user`,
/// uid/gid 61000, home /home/user, as in E2B. Appended to passwd/group when
/// absent.
fn add_sandbox_user(root: &Path, shell: &str) -> io::Result<()> {
    let (uid, gid) = crate::spec::SANDBOX_USER;
    let home = root.join(crate::spec::SANDBOX_HOME.trim_start_matches('/'));
    fs::create_dir_all(&home)?;
    fs::set_permissions(&home, fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::chown(&home, Some(uid), Some(gid))?;
    for (file, line) in [
        (
            "etc/passwd",
            format!(
                "user:x:{uid}:{gid}:user:{}:{shell}\n",
                crate::spec::SANDBOX_HOME
            ),
        ),
        ("etc/group", format!("user:x:{gid}:\n")),
    ] {
        let path = root.join(file);
        let text = fs::read_to_string(&path).unwrap_or_default();
        if !text
            .lines()
            .any(|l| l.split(':').nth(2) == Some(&uid.to_string()) || l.starts_with("user:"))
        {
            let mut text = text;
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&line);
            fs::write(&path, text)?;
        }
    }
    Ok(())
}

/// A minimal root filesystem: static busybox with its applets as symlinks.
pub fn busybox_rootfs(dir: &Path, busybox: &Path) -> Result<()> {
    let build = || -> io::Result<()> {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        mkdirs(
            dir,
            &[
                ("bin", 0o755),
                ("etc", 0o755),
                ("tmp", 0o1777),
                ("root", 0o700),
                ("proc", 0o555),
                ("sys", 0o555),
                ("dev", 0o755),
                ("home", 0o755),
            ],
        )?;
        fs::copy(busybox, dir.join("bin/busybox"))?;
        fs::set_permissions(dir.join("bin/busybox"), fs::Permissions::from_mode(0o755))?;
        let out = Command::new(busybox).arg("--list").output()?;
        for applet in String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && *a != "busybox")
        {
            let _ = symlink("busybox", dir.join("bin").join(applet));
        }
        fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
        )?;
        fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
        add_sandbox_user(dir, "/bin/sh")?;
        fs::write(
            dir.join("etc/hosts"),
            "127.0.0.1 localhost\n::1 localhost\n",
        )?;
        // E2B's SDK runs commands with `/bin/bash -l -c`; busybox has no bash
        // applet, so bash here is busybox's ash (POSIX sh, not GNU bash).
        fs::write(dir.join("bin/bash"), "#!/bin/sh\nexec /bin/sh \"$@\"\n")?;
        fs::set_permissions(dir.join("bin/bash"), fs::Permissions::from_mode(0o755))?;
        Ok(())
    };
    build().map_err(|e| AgentError::image(format!("busybox rootfs in {}", dir.display()), e))
}

/// The Debian mirror this machine's apt already uses (never hard-coded):
/// the first `http(s)` URI of an enabled `.list`/`.sources` file that is not
/// the security archive, preferring URIs with "debian" in them.
pub fn apt_mirror() -> Option<String> {
    let mut texts = Vec::new();
    if let Ok(s) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(s);
    }
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources"))
            .collect();
        paths.sort();
        texts.extend(paths.iter().filter_map(|p| fs::read_to_string(p).ok()));
    }
    let mut uris = Vec::new();
    for t in &texts {
        for line in t.lines().map(str::trim) {
            let rest = line
                .strip_prefix("URIs:")
                .or_else(|| line.strip_prefix("deb "));
            if let Some(rest) = rest {
                uris.extend(
                    rest.split_whitespace()
                        .filter(|u| u.starts_with("http") && !u.contains("security"))
                        .map(str::to_string),
                );
            }
        }
    }
    uris.iter()
        .find(|u| u.contains("debian"))
        .or_else(|| uris.first())
        .cloned()
}

fn codename() -> String {
    fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VERSION_CODENAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "bookworm".into())
}

/// Debian minbase with python3, via debootstrap (minutes; cached by the caller).
pub fn debian_python_rootfs(dir: &Path) -> Result<()> {
    debian_rootfs(PYTHON, dir)
}

/// The root filesystem of a debootstrapped builtin image `name` in `dir`.
fn debian_rootfs(name: &str, dir: &Path) -> Result<()> {
    let mirror = apt_mirror()
        .ok_or_else(|| AgentError::Image("no Debian mirror found in /etc/apt sources".into()))?;
    let tmp = dir.with_extension("partial");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| AgentError::io(tmp.display().to_string(), e))?;
    }
    if let Some(parent) = tmp.parent() {
        fs::create_dir_all(parent).map_err(|e| AgentError::io(parent.display().to_string(), e))?;
    }
    let out = Command::new("debootstrap")
        .args(debootstrap_args_for(name, &codename(), &tmp, &mirror))
        .output()
        .map_err(|e| AgentError::image("running debootstrap (apt-get install debootstrap)", e))?;
    if !out.status.success() {
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let tail: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .rev()
            .take(5)
            .collect();
        return Err(AgentError::Image(format!(
            "debootstrap from {mirror} failed: {}",
            tail.join(" | ")
        )));
    }
    add_sandbox_user(&tmp, "/bin/bash")
        .map_err(|e| AgentError::io("adding the sandbox user", e))?;
    // Leave out apt caches; they are large and useless in a sandbox.
    let _ = fs::remove_dir_all(tmp.join("var/cache/apt/archives"));
    let _ = fs::create_dir_all(tmp.join("var/cache/apt/archives/partial"));
    if name == CODE_INTERPRETER {
        code_interpreter_extras(&tmp)?;
    }
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| AgentError::io(dir.display().to_string(), e))?;
    }
    fs::rename(&tmp, dir).map_err(|e| AgentError::io(dir.display().to_string(), e))
}

/// The code-interpreter image on top of Debian + python3 + pip: its PyPI
/// packages (pip in a chroot of the new root, with the host's DNS config and
/// CA bundle for the download only: a host behind a TLS-inspecting proxy
/// trusts its CA, the image keeps Debian's), Deno's kernelspec and
/// upstream's entrypoint path.
fn code_interpreter_extras(root: &Path) -> Result<()> {
    const HOST_CA: &str = "/etc/ssl/certs/ca-certificates.crt";
    const BUILD_CA: &str = "/tmp/sandpool-build-ca.crt";
    let resolv = root.join("etc/resolv.conf");
    let ca = root.join(BUILD_CA.trim_start_matches('/'));
    let _ = fs::remove_file(&resolv);
    fs::copy("/etc/resolv.conf", &resolv).map_err(|e| AgentError::io("/etc/resolv.conf", e))?;
    fs::copy(HOST_CA, &ca).map_err(|e| AgentError::io(HOST_CA, e))?;
    let out = Command::new("chroot")
        .arg(root)
        .args(["python3", "-m", "pip", "install", "--no-cache-dir"])
        .args(["--break-system-packages", "--root-user-action=ignore"])
        .args(["--disable-pip-version-check", "--cert", BUILD_CA])
        .args(CODE_INTERPRETER_PIP)
        // the host's environment names host paths (CA bundles, pip config,
        // wheel dirs) that mean something else in the chroot: only the
        // proxy settings pass
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k.ends_with("_proxy") || k == "pip_default_timeout"
        }))
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .output()
        .map_err(|e| AgentError::image("running pip in the image's chroot", e))?;
    let _ = fs::remove_file(&resolv);
    let _ = fs::remove_file(&ca);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        return Err(AgentError::Image(format!(
            "pip install {} failed: {}",
            CODE_INTERPRETER_PIP.join(" "),
            tail.join(" | ")
        )));
    }
    let script = root.join(CODE_INTERPRETER_ENTRYPOINT.trim_start_matches('/'));
    let spec = root.join(DENO_KERNELSPEC_PATH.trim_start_matches('/'));
    let write = || -> io::Result<()> {
        if let Some(dir) = spec.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(&spec, DENO_KERNELSPEC)?;
        if let Some(dir) = script.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(
            &script,
            "#!/bin/sh\n# sandpool: the in-sandbox runtime serves execd and the code interpreter;\n# this entrypoint only keeps the sandbox's main process alive.\nexec sleep infinity\n",
        )?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))
    };
    write().map_err(|e| AgentError::io(script.display().to_string(), e))
}

/// The directory of builtin image `name` in `cache`, named by its recipe
/// key, and that key.
pub fn cache_dir(cache: &Path, name: &str) -> Result<(PathBuf, String)> {
    let key = recipe_key(name).ok_or_else(|| {
        AgentError::UnknownImage(
            name.to_string(),
            format!("{BUSYBOX}, {PYTHON}, {CODE_INTERPRETER}"),
        )
    })?;
    let dir = cache.join(format!("{}-{key}", name.replace(['/', ':'], "_")));
    Ok((dir, key))
}

/// Build (or reuse from `cache`) the blobs of a builtin image.
pub fn build_builtin(name: &str, cache: &Path) -> Result<ImageBlobs> {
    let (dir, key) = cache_dir(cache, name)?;
    fs::create_dir_all(&dir).map_err(|e| AgentError::io(dir.display().to_string(), e))?;
    // One builder at a time per image (agents, tests and benches may share a cache).
    let lock_file = fs::File::create(dir.with_extension("lock"))
        .map_err(|e| AgentError::io(dir.display().to_string(), e))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive).map_err(
        |(_, e)| AgentError::image(format!("locking the image cache {}", dir.display()), e),
    )?;
    let packed = dir.join("image.json");
    if let Some(b) = fs::read(&packed)
        .ok()
        .and_then(|j| serde_json::from_slice::<ImageBlobs>(&j).ok())
        && b.name == name
        && b.recipe == key
        && fs::metadata(&b.layer_path)
            .map(|m| m.len() == b.layer_size)
            .unwrap_or(false)
    {
        return Ok(b);
    }
    let mut blobs = build_uncached(name, &dir)?;
    blobs.recipe = key;
    if let Ok(j) = serde_json::to_vec(&blobs) {
        let _ = fs::write(&packed, j);
    }
    Ok(blobs)
}

fn build_uncached(name: &str, dir: &Path) -> Result<ImageBlobs> {
    let rootfs = dir.join("rootfs");
    let stamp = dir.join("rootfs.done");
    match name {
        BUSYBOX => {
            let bb = ["/bin/busybox", "/usr/bin/busybox"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .ok_or_else(|| {
                    AgentError::Image("busybox not found (apt-get install busybox-static)".into())
                })?;
            if !stamp.exists() {
                busybox_rootfs(&rootfs, &bb)?;
                fs::write(&stamp, b"")
                    .map_err(|e| AgentError::io(stamp.display().to_string(), e))?;
            }
            pack(name, &rootfs, dir, BUSYBOX_ENV)
        }
        PYTHON => {
            if !stamp.exists() {
                debian_python_rootfs(&rootfs)?;
                fs::write(&stamp, b"")
                    .map_err(|e| AgentError::io(stamp.display().to_string(), e))?;
            }
            pack(name, &rootfs, dir, PYTHON_ENV)
        }
        CODE_INTERPRETER => {
            if !stamp.exists() {
                debian_rootfs(name, &rootfs)?;
                fs::write(&stamp, b"")
                    .map_err(|e| AgentError::io(stamp.display().to_string(), e))?;
            }
            pack(name, &rootfs, dir, PYTHON_ENV)
        }
        other => Err(AgentError::UnknownImage(
            other.to_string(),
            format!("{BUSYBOX}, {PYTHON}, {CODE_INTERPRETER}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_code_interpreter_names_are_the_builtin_code_interpreter_image() {
        for n in [
            "code-interpreter",
            "sandpool/code-interpreter",
            "opensandbox/code-interpreter",
            "opensandbox/code-interpreter:latest",
            "docker.io/opensandbox/code-interpreter:v1.0.1",
            "registry.example:5000/opensandbox/code-interpreter@sha256:ab",
        ] {
            assert_eq!(builtin(n), Some(CODE_INTERPRETER), "{n}");
        }
        for n in [
            "myopensandbox/code-interpreter",
            "opensandbox/code-interpreter-extra:1",
            "x/code-interpreter",
        ] {
            assert_eq!(builtin(n), None, "{n}");
        }
        let r = recipe(CODE_INTERPRETER).expect("a recipe");
        assert!(r.contains("python3-pip") && r.contains("pip ipykernel numpy pandas matplotlib"));
        assert!(r.contains(CODE_INTERPRETER_ENTRYPOINT), "{r}");
        assert_ne!(recipe_key(CODE_INTERPRETER), recipe_key(PYTHON));
        let args = debootstrap_args_for(CODE_INTERPRETER, "bookworm", Path::new("/r"), "http://m");
        assert!(
            args[1].ends_with(",python3-pip,r-base-core,r-cran-irkernel,default-jdk-headless"),
            "{args:?}"
        );
        // the kernels of E2B's languages: Deno (JavaScript, TypeScript), R, Java
        assert!(
            r.contains(" deno jjava\n") && r.contains(DENO_KERNELSPEC),
            "{r}"
        );
        assert!(DENO_KERNELSPEC.contains("\"{connection_file}\""));
        serde_json::from_str::<serde_json::Value>(DENO_KERNELSPEC).expect("a JSON kernelspec");
        assert!(!debootstrap_args("bookworm", Path::new("/r"), "http://m")[1].contains("pip"));
    }

    #[test]
    fn packs_a_tree_reproducibly() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::write(root.join("bin/hello"), b"#!/bin/sh\necho hi\n").unwrap();
        symlink("hello", root.join("bin/hi")).unwrap();
        let a = pack("t:1", &root, &d.path().join("a"), &["PATH=/bin"]).unwrap();
        let b = pack("t:1", &root, &d.path().join("b"), &["PATH=/bin"]).unwrap();
        assert_eq!(a.diff_id, b.diff_id, "same tree, same uncompressed digest");
        assert_eq!(a.layer_size, fs::metadata(&a.layer_path).unwrap().len());
        assert_eq!(
            sha256_digest(&fs::read(&a.layer_path).unwrap()),
            a.layer_digest
        );
        let m: serde_json::Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(m["layers"][0]["digest"], a.layer_digest.as_str());
        assert_eq!(m["config"]["digest"], a.config_digest.as_str());
        let c: serde_json::Value = serde_json::from_slice(&a.config).unwrap();
        assert_eq!(c["rootfs"]["diff_ids"][0], a.diff_id.as_str());
        // the layer holds the symlink as a symlink
        let gz = flate2::read::GzDecoder::new(fs::File::open(&a.layer_path).unwrap());
        let mut ar = tar::Archive::new(gz);
        let kinds: Vec<(String, bool)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type().is_symlink(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("bin".into(), false),
                ("bin/hello".into(), false),
                ("bin/hi".into(), true)
            ]
        );
    }

    #[test]
    fn the_python_recipe_installs_the_e2b_tools_without_recommends() {
        let args = debootstrap_args("bookworm", Path::new("/x/rootfs"), "http://m/debian");
        assert_eq!(args[0], "--variant=minbase");
        let include: Vec<&str> = args[1]
            .strip_prefix("--include=")
            .expect("an --include")
            .split(',')
            .collect();
        for p in [
            "python3",
            "python-is-python3",
            "curl",
            "git",
            "sudo",
            "ca-certificates",
        ] {
            assert!(include.contains(&p), "{p} in {include:?}");
        }
        assert!(
            !args.iter().any(|a| a.contains("recommends")),
            "debootstrap never pulls Recommends: {args:?}"
        );
        assert_eq!(&args[2..], ["bookworm", "/x/rootfs", "http://m/debian"]);
    }

    #[test]
    fn a_changed_recipe_gets_a_new_cache_key() {
        let py = recipe_key(PYTHON).expect("python is builtin");
        let bb = recipe_key(BUSYBOX).expect("busybox is builtin");
        assert_eq!(py.len(), 16);
        assert_ne!(py, bb);
        assert_eq!(recipe_key(PYTHON), Some(py.clone()), "stable");
        assert_eq!(recipe_key("nginx"), None);
        let text = recipe(PYTHON).expect("recipe");
        for p in PYTHON_PACKAGES {
            assert!(text.contains(p), "the key covers package {p}");
        }
        assert!(text.contains(PYTHON_ENV[0]), "and the env");
        // the cache directory is named by the key: an old image is not reused
        let (dir, key) = cache_dir(Path::new("/c"), PYTHON).unwrap();
        assert_eq!(key, py);
        assert_eq!(dir, Path::new("/c").join(format!("sandpool_python_3-{py}")));
        assert!(cache_dir(Path::new("/c"), "sandpool/nope:1").is_err());
    }

    #[test]
    fn aliases() {
        assert_eq!(builtin("busybox"), Some(BUSYBOX));
        assert_eq!(builtin("python"), Some(PYTHON));
        assert_eq!(builtin("nginx"), None);
    }
}
