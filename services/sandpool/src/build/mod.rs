//! E2B template builds with `buildah` (Debian's package): the base image is
//! pulled by buildah from its registry, each step runs as a buildah command
//! (`RUN` with `--isolation oci` through runc, in its own namespaces (a
//! user namespace among them: uid 0 there is host uid 100000) and
//! cgroup with the limits below, on the sandbox network with a sandbox's
//! isolation (see [`isolation`]); `COPY` with `buildah copy` from the
//! uploaded files, `ENV`/`WORKDIR`/`USER` as image config), and the result
//! is committed to an OCI archive that is imported into the node's
//! containerd the way `sandpool image import` does it. buildah keeps its
//! own storage (vfs) under DATA_DIR/builds, so base images are pulled once.
//! Uploaded files are unpacked by buildah (`buildah add` into a scratch
//! container), never by sandpool.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use sandpool_gateway::e2b::{
    BuildFuture, BuildLog, BuildRequest, BuildStep, StepKind, TemplateBuilder,
};
use sandpool_node_agent::net::NetConfig;
use sandpool_node_agent::{
    archive,
    containerd::{Ctr, NAMESPACE},
    registry,
};
use sandpool_scheduler::store::Table;

mod isolation;
use isolation::BuildNet;

/// Longest one buildah command may take (a RUN installing packages).
const STEP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How much of a failed command's output its error keeps.
const ERROR_TAIL: usize = 2000;

/// The cgroup limits of a build container (its `RUN` steps): 2 GiB of
/// memory (no swap beyond it), two CPUs.
const BUILD_MEMORY: &str = "2g";
const BUILD_CPU_PERIOD_US: u64 = 100_000;
const BUILD_CPU_QUOTA_US: u64 = 200_000;

/// The host uids (and gids) a build's user namespace maps its 0..65536 to:
/// uid 0 in a build is host uid 100000, an unprivileged uid no host user,
/// sandbox (61000) or platform process has, so a `RUN` step has no power
/// over host files and its capabilities hold only in its own namespace.
/// The image keeps the in-namespace ownership (buildah maps it back when
/// it commits).
pub(crate) const BUILD_UID_BASE: u32 = 100_000;
pub(crate) const BUILD_ID_COUNT: u32 = 65_536;

/// `buildah from`'s user namespace flags (every later `buildah run`,
/// `copy` and `commit` of the container uses its maps).
fn userns_args() -> [String; 4] {
    let map = format!("0:{BUILD_UID_BASE}:{BUILD_ID_COUNT}");
    [
        "--userns-uid-map".into(),
        map.clone(),
        "--userns-gid-map".into(),
        map,
    ]
}

/// buildah on this host, or why there is none.
#[derive(Clone)]
pub struct Buildah {
    bin: Option<PathBuf>,
    /// runc, which isolates `RUN` steps (`--isolation oci`).
    runc: Option<PathBuf>,
    dir: PathBuf,
    socket: PathBuf,
    insecure: Vec<String>,
    /// The network `RUN` steps get (none without one).
    net: Option<BuildNet>,
    /// The cgroup mount the steps' pids limit is written under.
    cgroup_root: PathBuf,
}

/// `name` on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl Buildah {
    /// Builds under `data_dir/builds` into the containerd at `socket`;
    /// `insecure` registries (besides loopback ones) are reached over HTTP.
    pub fn new(data_dir: &Path, socket: PathBuf, insecure: Vec<String>) -> Self {
        Buildah {
            bin: std::env::var_os("SANDPOOL_BUILDAH")
                .map(PathBuf::from)
                .or_else(|| which("buildah"))
                .filter(|p| p.is_file()),
            runc: which("runc").or_else(|| {
                let p = PathBuf::from("/usr/sbin/runc");
                p.is_file().then_some(p)
            }),
            dir: data_dir.join("builds"),
            socket,
            insecure,
            net: None,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

impl TemplateBuilder for Buildah {
    fn check(&self) -> Result<(), String> {
        match (&self.bin, &self.runc) {
            (Some(_), Some(_)) => Ok(()),
            (None, _) => Err(
                "template builds need buildah, which is not installed on this host \
                 (Debian: apt-get install buildah)"
                    .into(),
            ),
            (_, None) => Err(
                "template builds need runc to isolate RUN steps, which is not installed \
                 on this host (Debian: apt-get install runc)"
                    .into(),
            ),
        }
    }

    fn files_dir(&self) -> PathBuf {
        self.dir.join("files")
    }

    fn build(&self, req: BuildRequest, log: BuildLog) -> BuildFuture {
        let b = self.clone();
        Box::pin(async move {
            let work = match work_dir(&work_root(), &req.build_id) {
                Ok(w) => w,
                Err(e) => return Err(e),
            };
            let netns = match b.network(&req).await {
                Ok(n) => n,
                Err(e) => return Err(e),
            };
            let r = b.run(&req, &work, &log, netns.as_deref()).await;
            let _ = tokio::fs::remove_dir_all(&work).await;
            if let (Some(net), Some(_)) = (b.net.clone(), netns) {
                let id = req.build_id.clone();
                let _ = tokio::task::spawn_blocking(move || net.teardown(&id)).await;
            }
            isolation::remove_cgroup(&b.cgroup_root, &req.build_id);
            r
        })
    }
}

/// Where builds' working directories go: `/var/tmp` (disk, as buildah's
/// own default), else the process's temporary directory.
fn work_root() -> PathBuf {
    let var_tmp = PathBuf::from("/var/tmp");
    if var_tmp.is_dir() {
        var_tmp
    } else {
        std::env::temp_dir()
    }
}

/// A new working directory of build `id` under `root`: buildah's `TMPDIR`,
/// where it mounts each `RUN` step's root filesystem. runc opens that as
/// the user namespace's root (an unprivileged host uid), so the directory
/// is 0711 and every directory above it must let others through, which a
/// DATA_DIR under a private directory would not.
fn work_dir(root: &Path, id: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    for dir in root.ancestors() {
        let mode = std::fs::metadata(dir)
            .map_err(|e| format!("the build's working directory: {}: {e}", dir.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(format!(
                "the build's working directory: {} is not searchable by others (mode {:o}), \
                 which RUN steps' user namespace needs",
                dir.display(),
                mode & 0o7777
            ));
        }
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("sandpool-build-{id}-"))
        .tempdir_in(root)
        .map_err(|e| format!("the build's working directory in {}: {e}", root.display()))?
        .keep();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| format!("the build's working directory {}: {e}", dir.display()))?;
    Ok(dir)
}

/// One build's buildah invocations (its storage, its working container).
struct Session<'a> {
    b: &'a Buildah,
    bin: PathBuf,
    work: PathBuf,
    log: &'a BuildLog,
    /// `RUN` steps' network namespace (none: no network).
    netns: Option<PathBuf>,
}

impl Session<'_> {
    /// `buildah <global flags> args…`; `Ok(stdout)`, else `what` failed
    /// with the output's tail. Its output goes to the build log.
    async fn buildah(&self, what: &str, args: &[String]) -> Result<String, String> {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(["--root", &path(&self.b.dir.join("storage"))])
            .args(["--runroot", &path(&self.b.dir.join("run"))])
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("TMPDIR", &self.work)
            .env("BUILDAH_ISOLATION", "oci")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(STEP_TIMEOUT, cmd.output())
            .await
            .map_err(|_| format!("{what}: buildah took over {STEP_TIMEOUT:?}"))?
            .map_err(|e| format!("{what}: running buildah: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        for line in stdout
            .lines()
            .chain(stderr.lines())
            .filter(|l| !l.is_empty())
        {
            (self.log)(line.to_string());
        }
        if out.status.success() {
            return Ok(stdout);
        }
        let all = format!("{stdout}{stderr}");
        let mut start = all.len().saturating_sub(ERROR_TAIL);
        while !all.is_char_boundary(start) {
            start += 1;
        }
        let tail = &all[start..];
        Err(format!("{what}: buildah {}: {}", out.status, tail.trim()))
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

impl Buildah {
    /// The network namespace of build `req`'s `RUN` steps, when it has
    /// any and there is a sandbox network.
    async fn network(&self, req: &BuildRequest) -> Result<Option<PathBuf>, String> {
        let has_run = req
            .steps
            .iter()
            .any(|s| matches!(s.kind, StepKind::Run { .. }));
        let Some(net) = self.net.clone().filter(|_| has_run) else {
            return Ok(None);
        };
        let id = req.build_id.clone();
        tokio::task::spawn_blocking(move || net.setup(&id))
            .await
            .map_err(|e| format!("the build's network: {e}"))?
            .map(Some)
    }

    async fn run(
        &self,
        req: &BuildRequest,
        work: &Path,
        log: &BuildLog,
        netns: Option<&Path>,
    ) -> Result<(), String> {
        let bin = self
            .bin
            .clone()
            .ok_or_else(|| "buildah is not installed".to_string())?;
        tokio::fs::create_dir_all(work)
            .await
            .map_err(|e| format!("creating {}: {e}", work.display()))?;
        let policy = work.join("policy.json");
        tokio::fs::write(
            &policy,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .await
        .map_err(|e| format!("writing {}: {e}", policy.display()))?;
        let s = Session {
            b: self,
            bin,
            work: work.to_path_buf(),
            log,
            netns: netns.map(Path::to_path_buf),
        };
        let ctr = format!("sandpool-build-{}", req.build_id);
        let from = from_args(req, &ctr, &policy, &self.insecure)?;
        log(format!("base: {}", req.base));
        s.buildah(&format!("base image {}", req.base), &from)
            .await?;
        let built = async {
            for step in &req.steps {
                log(format!("step {}: {}", step.index, describe(&step.kind)));
                s.step(&ctr, step, req).await?;
            }
            let archive = work.join("image.tar");
            let dest = format!("oci-archive:{}:{}", path(&archive), req.image);
            s.buildah(
                "committing the image",
                &[
                    "commit".into(),
                    "--format".into(),
                    "oci".into(),
                    ctr.clone(),
                    dest,
                ],
            )
            .await?;
            Ok::<_, String>(archive)
        }
        .await;
        let _ = s
            .buildah(
                "removing the working container",
                &["rm".into(), ctr.clone()],
            )
            .await;
        let archive = built?;
        log(format!("importing {} into containerd", req.image));
        self.import(&archive, &req.image).await
    }

    /// The committed archive into the node's containerd as `image`.
    async fn import(&self, archive: &Path, image: &str) -> Result<(), String> {
        let a = archive.to_path_buf();
        let img = tokio::task::spawn_blocking(move || archive::read(&a))
            .await
            .map_err(|e| format!("reading the built image: {e}"))?
            .map_err(|e| format!("reading the built image: {e}"))?;
        let ctr = Ctr::connect(&self.socket, NAMESPACE, Duration::from_secs(10))
            .await
            .map_err(|e| format!("connecting to containerd: {e}"))?;
        ctr.import_archive(&img, &[image.to_string()])
            .await
            .map_err(|e| format!("importing the built image: {e}"))
    }
}

/// `buildah from` of the base image: pulled from its registry (plain HTTP
/// for loopback and insecure ones), with the build's credentials.
fn from_args(
    req: &BuildRequest,
    ctr: &str,
    policy: &Path,
    insecure: &[String],
) -> Result<Vec<String>, String> {
    let r = registry::parse_reference(&req.base).map_err(|e| format!("base image: {e}"))?;
    if sandpool_node_agent::image::builtin(&req.base).is_some() {
        return Err(format!(
            "base image {}: a builtin image is built on the node, not pulled; \
             build from a registry image",
            req.base
        ));
    }
    let reg = r.registry().to_string();
    let plain = insecure.contains(&reg) || registry::is_loopback(&reg);
    let mut a: Vec<String> = vec![
        "from".into(),
        "--pull".into(),
        "--name".into(),
        ctr.into(),
        "--memory".into(),
        BUILD_MEMORY.into(),
        "--memory-swap".into(),
        BUILD_MEMORY.into(),
        "--cpu-period".into(),
        BUILD_CPU_PERIOD_US.to_string(),
        "--cpu-quota".into(),
        BUILD_CPU_QUOTA_US.to_string(),
        // RUN steps' cgroup: made with its pids limit before each of them
        "--cgroup-parent".into(),
        isolation::cgroup_parent(&req.build_id),
    ];
    a.extend(userns_args());
    a.extend([
        format!("--tls-verify={}", !plain),
        "--signature-policy".into(),
        path(policy),
    ]);
    if let Some((u, p)) = &req.base_credentials {
        a.push("--creds".into());
        a.push(format!("{u}:{p}"));
    }
    a.push(format!("docker://{}", r.whole()));
    Ok(a)
}

fn describe(k: &StepKind) -> String {
    match k {
        StepKind::Run { cmd, .. } => format!("RUN {cmd}"),
        StepKind::Copy { src, dest, .. } => format!("COPY {src} {dest}"),
        StepKind::Env(kv) => format!(
            "ENV {}",
            kv.iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        ),
        StepKind::Workdir(d) => format!("WORKDIR {d}"),
        StepKind::User(u) => format!("USER {u}"),
    }
}

/// The buildah commands of one step (`COPY`'s take the unpacked files'
/// directory `files`).
pub(crate) fn step_commands(
    ctr: &str,
    kind: &StepKind,
    files: &Path,
    empty: &Path,
    netns: Option<&Path>,
) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    match kind {
        StepKind::Run { cmd, user } => {
            // runc: its own user (the container's maps), pid/ipc/uts/mount
            // namespaces, the build container's cgroup limits, the build's
            // network namespace. That one belongs to the host's user
            // namespace, where the kernel refuses a sysfs mount: /sys is
            // an empty tmpfs (runc mounts the cgroups below it)
            let network = netns.map_or_else(|| "none".to_string(), |n| format!("ns:{}", path(n)));
            let mut a = s(&[
                "run",
                "--isolation",
                "oci",
                "--runtime",
                "runc",
                "--network",
                &network,
                "--mount",
                "type=tmpfs,destination=/sys,tmpfs-mode=0555",
            ]);
            if let Some(u) = user {
                a.extend(s(&["--user", u]));
            }
            a.extend(s(&[ctr, "--", "/bin/sh", "-c", cmd]));
            vec![a]
        }
        StepKind::Copy {
            src,
            dest,
            user,
            mode,
            ..
        } => {
            let mut a = s(&["copy"]);
            if let Some(u) = user {
                a.extend(s(&["--chown", u]));
            }
            if let Some(m) = mode {
                a.extend(s(&["--chmod", m]));
            }
            a.extend(s(&[
                ctr,
                &path(&files.join(src.trim_start_matches('/'))),
                dest,
            ]));
            vec![a]
        }
        StepKind::Env(kv) => kv
            .iter()
            .map(|(k, v)| s(&["config", "--env", &format!("{k}={v}"), ctr]))
            .collect(),
        // WORKDIR makes the directory, as a Dockerfile's does
        StepKind::Workdir(d) => vec![
            s(&["copy", ctr, &path(empty), d]),
            s(&["config", "--workingdir", d, ctr]),
        ],
        StepKind::User(u) => vec![s(&["config", "--user", u, ctr])],
    }
}

impl Session<'_> {
    async fn step(&self, ctr: &str, step: &BuildStep, req: &BuildRequest) -> Result<(), String> {
        let what = format!("step {} ({})", step.index, describe(&step.kind));
        let empty = self.work.join("empty");
        let _ = tokio::fs::create_dir_all(&empty).await;
        let mut files = PathBuf::new();
        let mut scratch = None;
        if let StepKind::Copy { hash, .. } = &step.kind {
            let (name, dir) = self
                .unpack(&req.files_dir.join(format!("{hash}.tar")), step.index)
                .await
                .map_err(|e| format!("{what}: {e}"))?;
            files = dir;
            scratch = Some(name);
        }
        let mut r = Ok(());
        if matches!(step.kind, StepKind::Run { .. }) {
            r = isolation::limit_pids(&self.b.cgroup_root, &req.build_id)
                .map_err(|e| format!("{what}: {e}"));
        }
        let netns = self.netns.as_deref();
        for args in step_commands(ctr, &step.kind, &files, &empty, netns) {
            if r.is_err() {
                break;
            }
            r = self.buildah(&what, &args).await.map(|_| ());
        }
        if let Some(name) = scratch {
            let _ = self
                .buildah("removing the files container", &["rm".into(), name])
                .await;
        }
        r
    }

    /// The uploaded tar (gzipped or not) unpacked by buildah into a scratch
    /// container; its name and mounted root.
    async fn unpack(&self, tar: &Path, index: usize) -> Result<(String, PathBuf), String> {
        let name = format!(
            "{}-files-{index}",
            self.work
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let a = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
        self.buildah("the files", &a(&["from", "--name", &name, "scratch"]))
            .await?;
        self.buildah("the files", &a(&["add", &name, &path(tar), "/"]))
            .await?;
        let root = self.buildah("the files", &a(&["mount", &name])).await?;
        Ok((name, PathBuf::from(root.trim())))
    }
}

/// The builder `sandpool serve` gives its gateway.
/// `RUN` steps get the sandbox network `net` (their own namespace on it,
/// isolated as a sandbox is).
pub fn builder(
    data_dir: &Path,
    socket: PathBuf,
    insecure: Vec<String>,
    net: &NetConfig,
) -> Arc<dyn TemplateBuilder> {
    let mut b = Buildah::new(data_dir, socket, insecure);
    let build_net = BuildNet::new(net, &b.dir);
    build_net.sweep();
    b.net = Some(build_net);
    Arc::new(b)
}

/// E2B template build records in the scheduler's redb store (a restart
/// keeps build status and template ids).
pub struct StoredBuilds(pub Arc<sandpool_scheduler::store::Store>);

impl sandpool_gateway::e2b::BuildStore for StoredBuilds {
    fn put(&self, build_id: &str, record: &serde_json::Value) -> Result<(), String> {
        self.0
            .put(Table::TemplateBuilds, build_id, record)
            .map_err(|e| e.to_string())
    }

    fn delete(&self, build_id: &str) -> Result<(), String> {
        self.0
            .delete(Table::TemplateBuilds, build_id)
            .map_err(|e| e.to_string())
    }

    fn all(&self) -> Result<Vec<serde_json::Value>, String> {
        self.0.all(Table::TemplateBuilds).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_records_are_kept_in_the_scheduler_store_across_a_reopen() {
        use sandpool_gateway::e2b::BuildStore;
        use sandpool_scheduler::store::Store;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("scheduler.redb");
        let rec = serde_json::json!({"buildID": "b1", "status": "ready"});
        {
            let s = StoredBuilds(Arc::new(Store::open(&path).unwrap()));
            s.put("b1", &rec).unwrap();
            s.put("b2", &rec).unwrap();
            s.delete("b2").unwrap();
        }
        let s = StoredBuilds(Arc::new(Store::open(&path).unwrap()));
        assert_eq!(s.all().unwrap(), [rec]);
    }

    fn req(base: &str) -> BuildRequest {
        BuildRequest {
            template: "t".into(),
            build_id: "b".into(),
            image: "sandpool.local/templates/t:b".into(),
            base: base.into(),
            base_credentials: None,
            steps: vec![],
            files_dir: PathBuf::from("/files"),
        }
    }

    #[test]
    fn the_base_is_pulled_over_http_only_from_loopback_or_insecure_registries() {
        let p = Path::new("/w/policy.json");
        let a = from_args(&req("127.0.0.1:5000/base:1"), "c", p, &[]).unwrap();
        assert!(a.contains(&"--tls-verify=false".to_string()), "{a:?}");
        assert_eq!(a.last().unwrap(), "docker://127.0.0.1:5000/base:1");
        let mut r = req("python:3.12");
        r.base_credentials = Some(("u".into(), "p".into()));
        let a = from_args(&r, "c", p, &[]).unwrap();
        assert!(a.contains(&"--tls-verify=true".to_string()), "{a:?}");
        assert!(a.windows(2).any(|w| w == ["--creds", "u:p"]), "{a:?}");
        assert_eq!(a.last().unwrap(), "docker://docker.io/library/python:3.12");
        let a = from_args(&req("reg.lan:5000/x:1"), "c", p, &["reg.lan:5000".into()]).unwrap();
        assert!(a.contains(&"--tls-verify=false".to_string()), "{a:?}");
        let e = from_args(&req("busybox"), "c", p, &[]).unwrap_err();
        assert!(e.contains("builtin"), "{e}");
    }

    #[test]
    fn without_buildah_builds_are_refused_naming_it() {
        let b = Buildah {
            bin: None,
            runc: None,
            dir: PathBuf::from("/nonexistent"),
            socket: PathBuf::new(),
            insecure: vec![],
            net: None,
            cgroup_root: PathBuf::new(),
        };
        let e = b.check().unwrap_err();
        assert!(e.contains("buildah"), "{e}");
    }

    #[test]
    fn run_steps_need_runc_and_the_build_container_has_limits() {
        let b = Buildah {
            bin: Some(PathBuf::from("/usr/bin/buildah")),
            runc: None,
            dir: PathBuf::from("/nonexistent"),
            socket: PathBuf::new(),
            insecure: vec![],
            net: None,
            cgroup_root: PathBuf::new(),
        };
        let e = b.check().unwrap_err();
        assert!(e.contains("runc"), "{e}");
        let a = from_args(&req("127.0.0.1:5000/base:1"), "c", Path::new("/p"), &[]).unwrap();
        for flag in [
            ["--cgroup-parent", "/sandpool-builds/b"],
            ["--memory", "2g"],
            ["--memory-swap", "2g"],
            ["--cpu-quota", "200000"],
        ] {
            assert!(a.windows(2).any(|w| w == flag), "{flag:?} in {a:?}");
        }
    }

    #[test]
    fn steps_become_buildah_commands() {
        let (files, empty) = (Path::new("/f"), Path::new("/e"));
        let cmds = |k: StepKind| step_commands("c", &k, files, empty, None);
        assert_eq!(
            cmds(StepKind::Run {
                cmd: "echo hi > /x".into(),
                user: Some("root".into())
            }),
            [[
                "run",
                "--isolation",
                "oci",
                "--runtime",
                "runc",
                "--network",
                "none",
                "--mount",
                "type=tmpfs,destination=/sys,tmpfs-mode=0555",
                "--user",
                "root",
                "c",
                "--",
                "/bin/sh",
                "-c",
                "echo hi > /x"
            ]]
        );
        assert_eq!(
            cmds(StepKind::Copy {
                src: "app/*.py".into(),
                dest: "/app/".into(),
                user: Some("user".into()),
                mode: Some("0755".into()),
                hash: "ab".into(),
            }),
            [[
                "copy",
                "--chown",
                "user",
                "--chmod",
                "0755",
                "c",
                "/f/app/*.py",
                "/app/"
            ]]
        );
        assert_eq!(
            cmds(StepKind::Env(vec![
                ("A".into(), "1 2".into()),
                ("B".into(), "".into())
            ])),
            [
                ["config", "--env", "A=1 2", "c"],
                ["config", "--env", "B=", "c"]
            ]
        );
        assert_eq!(
            cmds(StepKind::Workdir("/app".into())),
            [
                vec!["copy", "c", "/e", "/app"],
                vec!["config", "--workingdir", "/app", "c"]
            ]
        );
        assert_eq!(
            cmds(StepKind::User("user".into())),
            [["config", "--user", "user", "c"]]
        );
    }

    #[test]
    fn the_build_container_has_a_user_namespace_on_an_unprivileged_range() {
        let a = from_args(&req("127.0.0.1:5000/base:1"), "c", Path::new("/p"), &[]).unwrap();
        for flag in [
            ["--userns-uid-map", "0:100000:65536"],
            ["--userns-gid-map", "0:100000:65536"],
        ] {
            assert!(a.windows(2).any(|w| w == flag), "{flag:?} in {a:?}");
        }
        // the image reference stays last
        assert_eq!(a.last().unwrap(), "docker://127.0.0.1:5000/base:1");
        // the range holds no sandbox uid (61000) and no host system uid
        let range = BUILD_UID_BASE..BUILD_UID_BASE + BUILD_ID_COUNT;
        assert!(!range.contains(&61_000) && !range.contains(&0) && !range.contains(&65_534));
    }

    #[test]
    fn the_working_directory_lets_the_user_namespace_through() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let w = work_dir(d.path(), "b1").unwrap();
        assert!(w.starts_with(d.path()), "{w:?}");
        let name = w.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("sandpool-build-b1-"), "{name}");
        let mode = std::fs::metadata(&w).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o711);
        // a private directory above it: refused, naming it
        let private = d.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let below = private.join("below");
        std::fs::create_dir(&below).unwrap();
        let e = work_dir(&below, "b2").unwrap_err();
        assert!(e.contains(&path(&private)) && e.contains("700"), "{e}");
    }

    #[test]
    fn run_steps_join_the_builds_network_namespace() {
        let run = StepKind::Run {
            cmd: "true".into(),
            user: None,
        };
        let (files, empty) = (Path::new("/f"), Path::new("/e"));
        let ns = Path::new("/d/builds/netns/build-b");
        let a = step_commands("c", &run, files, empty, Some(ns));
        assert!(
            a[0].windows(2)
                .any(|w| w == ["--network", "ns:/d/builds/netns/build-b"]),
            "{a:?}"
        );
        // that namespace is the host user namespace's: no sysfs for /sys
        assert!(
            a[0].windows(2)
                .any(|w| w == ["--mount", "type=tmpfs,destination=/sys,tmpfs-mode=0555"]),
            "{a:?}"
        );
    }
}
