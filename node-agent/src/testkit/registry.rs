//! A real OCI registry on loopback for tests (Debian's `docker-registry`,
//! with its own config, optionally htpasswd basic auth) and test images
//! built with umoci from a scratch rootfs, pushed with skopeo.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::image::sha256_digest;

/// Whether the tools these helpers run are installed.
pub fn tools_missing() -> Option<&'static str> {
    ["docker-registry", "skopeo", "umoci", "htpasswd", "openssl"]
        .into_iter()
        .find(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
        })
}

/// `false` (test skipped) when a tool is missing, a panic instead when
/// SANDPOOL_REQUIRE_CONTAINERD=1.
pub fn gate_tools() -> bool {
    match tools_missing() {
        None => true,
        Some(t) if std::env::var("SANDPOOL_REQUIRE_CONTAINERD").as_deref() == Ok("1") => {
            panic!("registry tests required but {t} is not installed")
        }
        Some(t) => {
            eprintln!("SKIPPED (set SANDPOOL_REQUIRE_CONTAINERD=1 to require): {t} not installed");
            false
        }
    }
}

/// Run `cmd`, panicking with its stderr unless it succeeds; its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `docker-registry` on a loopback port with its own config and storage.
pub struct Registry {
    child: Child,
    pub addr: String,
}

impl Registry {
    pub fn start(dir: &Path, htpasswd: Option<&Path>) -> Registry {
        Self::start_with(dir, htpasswd, None)
    }

    /// A registry serving HTTPS with the certificate and key of `tls`.
    pub fn start_tls(dir: &Path, tls: &TestCerts) -> Registry {
        Self::start_with(dir, None, Some(tls))
    }

    fn start_with(dir: &Path, htpasswd: Option<&Path>, tls: Option<&TestCerts>) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let auth = match htpasswd {
            Some(p) => format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                p.display()
            ),
            None => String::new(),
        };
        let tls = match tls {
            Some(t) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                t.server_cert.display(),
                t.server_key.display()
            ),
            None => String::new(),
        };
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n{tls}{auth}",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { child, addr }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private CA and a server certificate it signed for 127.0.0.1 and
/// localhost, made with the openssl CLI.
pub struct TestCerts {
    pub ca_cert: std::path::PathBuf,
    pub server_cert: std::path::PathBuf,
    pub server_key: std::path::PathBuf,
}

impl TestCerts {
    pub fn make(dir: &Path) -> TestCerts {
        std::fs::create_dir_all(dir).unwrap();
        let p = |f: &str| dir.join(f);
        let openssl = |args: &[&str]| {
            run(Command::new("openssl").args(args).current_dir(dir));
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=sandpool test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            p("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ]);
        TestCerts {
            ca_cert: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
        }
    }
}

/// An OCI layout at `dir/oci`: tag `app` (two layers; the second deletes
/// /etc/gone and adds /marker2), `app-arm` (the same, arm64) and `multi`
/// (an index of both). Returns the amd64 manifest digest.
pub fn build_images(dir: &Path) -> String {
    let layout = dir.join("oci");
    let image = format!("{}:app", layout.display());
    let bundle = dir.join("bundle");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    let root = bundle.join("rootfs");
    for d in ["bin", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::fs::write(root.join("etc/gone"), "deleted in layer 2\n").unwrap();
    let repack = |image: &str| {
        run(Command::new("umoci")
            .args(["repack", "--refresh-bundle", "--image", image])
            .arg(&bundle))
    };
    repack(&image);
    std::fs::remove_file(root.join("etc/gone")).unwrap();
    std::fs::write(root.join("marker2"), "second layer\n").unwrap();
    repack(&image);
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.env=FROM_IMAGE=yes",
        "--config.cmd=sh",
    ]));
    let arm = format!("{}:app-arm", layout.display());
    run(Command::new("umoci").args(["config", "--image", &image, "--tag", "app-arm"]));
    run(Command::new("umoci").args(["config", "--image", &arm, "--architecture=arm64"]));
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let entry = |tag: &str| {
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap()
            .clone()
    };
    let with_platform = |mut m: serde_json::Value, arch: &str| {
        m.as_object_mut().unwrap().remove("annotations");
        m["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        m
    };
    let (amd, arm) = (entry("app"), entry("app-arm"));
    let amd_digest = amd["digest"].as_str().unwrap().to_string();
    let multi = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [with_platform(arm, "arm64"), with_platform(amd, "amd64")],
    }))
    .unwrap();
    let digest = sha256_digest(&multi);
    std::fs::write(layout.join("blobs/sha256").join(&digest[7..]), &multi).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": multi.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    amd_digest
}

pub fn push(layout: &Path, tag: &str, dest: &str, extra: &[&str]) {
    let src = format!("oci:{}:{tag}", layout.display());
    run(Command::new("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .args(extra)
        .arg(&src)
        .arg(format!("docker://{dest}")));
}

/// Tag `zstd` in the layout at `layout`: tag `app` with its layers
/// recompressed with zstd (the `zstd` tool); returns its manifest digest.
pub fn add_zstd_variant(layout: &Path) -> String {
    use std::io::Read;
    let blob = |d: &str| layout.join("blobs/sha256").join(&d[7..]);
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let app = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "app")
        .unwrap()
        .clone();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(app["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    for l in manifest["layers"].as_array_mut().unwrap() {
        let gz = std::fs::File::open(blob(l["digest"].as_str().unwrap())).unwrap();
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut tar)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("layer.tar"), &tar).unwrap();
        run(Command::new("zstd")
            .args(["-q", "layer.tar"])
            .current_dir(dir.path()));
        let z = std::fs::read(dir.path().join("layer.tar.zst")).unwrap();
        let digest = sha256_digest(&z);
        std::fs::write(blob(&digest), &z).unwrap();
        l["digest"] = digest.into();
        l["size"] = z.len().into();
        l["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd".into();
    }
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = sha256_digest(&bytes);
    std::fs::write(blob(&digest), &bytes).unwrap();
    let mut entry = app;
    entry["digest"] = digest.clone().into();
    entry["size"] = bytes.len().into();
    entry["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "zstd"});
    index["manifests"].as_array_mut().unwrap().push(entry);
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    digest
}
