//! OCI runtime spec of a sandbox (pure; the JSON containerd hands to runc/runsc).

use serde_json::{Value, json};

/// Where the runtime binary appears inside every sandbox (bind-mounted read-only).
pub const RUNTIME_PATH_IN_SANDBOX: &str = "/.sandpool/sandpool-runtime";
pub const RUNTIME_PORT: u16 = 44772;
/// The runtime's state directory inside the sandbox.
pub const RUNTIME_DATA_DIR: &str = "/tmp/.sandpool-runtime";
/// E2B's envd port, served by the same runtime.
pub const ENVD_PORT: u16 = 49983;
/// E2B's code interpreter port, served by the same runtime.
pub const INTERP_PORT: u16 = 49999;
pub const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pids: u32,
}

#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub id: String,
    /// Image config env first, then template env, then sandpool's own.
    pub env: Vec<(String, String)>,
    pub netns_path: String,
    /// Host path of the (static) runtime binary.
    pub runtime_bin: String,
    pub limits: Limits,
    pub cgroup_parent: String,
    pub access_token: String,
    /// Whom the runtime runs as; `None` = root.
    pub user: Option<SandboxUser>,
    /// The process's working directory (the image's WorkingDir, else `/`).
    pub cwd: String,
}

/// A non-root user a sandbox runs as, with its `USER` name and `HOME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxUser {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub home: String,
}

impl SandboxUser {
    /// sandpool's default sandbox user ([`SANDBOX_USER`], `user`, [`SANDBOX_HOME`]).
    pub fn default_user() -> Self {
        SandboxUser {
            uid: SANDBOX_USER.0,
            gid: SANDBOX_USER.1,
            name: "user".into(),
            home: SANDBOX_HOME.into(),
        }
    }
}

/// The default unprivileged sandbox user: `user` with home `/home/user`, as
/// in E2B (the built-in images have it). Without a user namespace a sandbox
/// uid is a host uid, so it is one from Debian's reserved 60000-64999 range,
/// never a host login's (a host uid 1000 could signal the sandbox's processes
/// or read its runtime token from /proc).
pub const SANDBOX_USER: (u32, u32) = (61000, 61000);
pub const SANDBOX_HOME: &str = "/home/user";

/// Syscalls no sandbox needs that widen the kernel's attack surface: kernel
/// modules and kexec, mounts and namespaces, keyrings, BPF and perf, clock
/// and swap control, io_uring, handle-based opens, userfaultfd. The profile
/// allows everything else (Docker's default profile blocks the same set for
/// a container without extra capabilities); a blocked call fails with EPERM.
const SECCOMP_BLOCKED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "fanotify_init",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "_sysctl",
    "sysfs",
    "syslog",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];
const CLONE_NEWUSER: u64 = 0x1000_0000;

/// The OCI `linux.seccomp` section (runc applies it; runsc filters syscalls
/// in its own kernel instead).
pub fn seccomp_profile() -> Value {
    let archs: &[&str] = if cfg!(target_arch = "aarch64") {
        &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    } else {
        &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    };
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": archs,
        "syscalls": [
            { "names": SECCOMP_BLOCKED, "action": "SCMP_ACT_ERRNO", "errnoRet": 1 },
            // new user namespaces: the door to most namespace exploits
            { "names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
              "args": [{ "index": 0, "value": CLONE_NEWUSER, "valueTwo": CLONE_NEWUSER, "op": "SCMP_CMP_MASKED_EQ" }] },
            // clone3's flags are in memory seccomp cannot read: ENOSYS makes libc fall back to clone
            { "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38 }
        ]
    })
}

/// containerd's default capability set for a container (what a sandbox's
/// root keeps; the CRI test kit gives its containers the same).
pub(crate) const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// What the runtime of an unprivileged sandbox keeps for its file API, so
/// that it acts as upstream's root execd does (any owner and group, any
/// directory); see the runtime's `privilege` module.
const RUNTIME_FILE_CAPS: &[&str] = &["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"];

pub fn runtime_args() -> Vec<String> {
    vec![
        RUNTIME_PATH_IN_SANDBOX.to_string(),
        "--listen".into(),
        format!("0.0.0.0:{RUNTIME_PORT}"),
        "--data-dir".into(),
        RUNTIME_DATA_DIR.into(),
        "--envd-listen".into(),
        format!("0.0.0.0:{ENVD_PORT}"),
        "--interp-listen".into(),
        format!("0.0.0.0:{INTERP_PORT}"),
    ]
}

/// OpenTelemetry settings handed to the sandbox runtime so its spans join the
/// claim's trace: the agent's own `OTEL_*` exporter variables, with a
/// loopback collector address rewritten to the node bridge's gateway IP
/// (the sandbox's loopback is its own).
pub fn sandbox_otel_env(
    get: impl Fn(&str) -> Option<String>,
    bridge_gateway: Option<std::net::Ipv4Addr>,
) -> Vec<(String, String)> {
    const KEYS: [&str; 7] = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_BSP_SCHEDULE_DELAY",
        "OTEL_TRACES_EXPORTER",
    ];
    let mut out = Vec::new();
    for k in KEYS {
        let Some(mut v) = get(k).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        if k.ends_with("ENDPOINT")
            && let Some(gw) = bridge_gateway
        {
            for lo in ["127.0.0.1", "localhost", "[::1]"] {
                v = v.replacen(&format!("//{lo}:"), &format!("//{gw}:"), 1);
            }
        }
        out.push((k.to_string(), v));
    }
    if !out.is_empty() {
        out.push(("OTEL_SERVICE_NAME".into(), "sandpool-runtime".into()));
    }
    out
}

/// Host ports named by endpoint URLs that point at the bridge gateway.
pub fn host_ports(
    env: &[(String, String)],
    bridge_gateway: Option<std::net::Ipv4Addr>,
) -> Vec<u16> {
    let Some(gw) = bridge_gateway else {
        return Vec::new();
    };
    let prefix = format!("//{gw}:");
    env.iter()
        .filter(|(k, _)| k.ends_with("ENDPOINT"))
        .filter_map(|(_, v)| {
            let rest = &v[v.find(&prefix)? + prefix.len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

impl SandboxSpec {
    pub fn to_json(&self) -> Value {
        let mut env: Vec<String> = Vec::new();
        let mut push = |k: &str, v: &str| {
            env.retain(|e: &String| !e.starts_with(&format!("{k}=")));
            env.push(format!("{k}={v}"));
        };
        push(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        for (k, v) in &self.env {
            push(k, v);
        }
        push("EXECD_ACCESS_TOKEN", &self.access_token);
        push("SANDPOOL_SANDBOX_ID", &self.id);
        let (uid, gid) = self.user.as_ref().map_or((0, 0), |u| (u.uid, u.gid));
        if let Some(u) = &self.user {
            push("HOME", &u.home);
            push("USER", &u.name);
        }
        // root keeps a reduced set. The unprivileged user's runtime gets only
        // the file capabilities, as ambient ones (the only kind a non-root
        // exec keeps); it clears the ambient and inheritable sets at start,
        // so the commands it runs get none. The bounding set still caps what
        // any later exec could gain.
        let (caps, ambient): (&[&str], &[&str]) = if self.user.is_some() {
            (RUNTIME_FILE_CAPS, RUNTIME_FILE_CAPS)
        } else {
            (CAPS, &[])
        };

        let mut resources = json!({ "devices": [{ "allow": false, "access": "rwm" }] });
        if self.limits.memory_bytes > 0 {
            resources["memory"] = json!({ "limit": self.limits.memory_bytes });
        }
        if self.limits.cpu_millis > 0 {
            resources["cpu"] = json!({ "quota": self.limits.cpu_millis * CPU_PERIOD_US / 1000, "period": CPU_PERIOD_US });
        }
        if self.limits.pids > 0 {
            resources["pids"] = json!({ "limit": self.limits.pids });
        }
        let hostname: String = self.id.chars().take(12).collect();
        // no path: a fresh namespace (network-less runsc sandboxes)
        let network = if self.netns_path.is_empty() {
            json!({ "type": "network" })
        } else {
            json!({ "type": "network", "path": self.netns_path })
        };
        json!({
            "ociVersion": "1.0.2-dev",
            "process": {
                "terminal": false,
                "user": { "uid": uid, "gid": gid },
                "args": runtime_args(),
                "env": env,
                "cwd": if self.cwd.starts_with('/') { self.cwd.as_str() } else { "/" },
                "capabilities": { "bounding": CAPS, "effective": caps, "permitted": caps, "inheritable": ambient, "ambient": ambient },
                "noNewPrivileges": true
            },
            "root": { "path": "rootfs", "readonly": false },
            "hostname": hostname,
            "mounts": [
                { "destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"] },
                { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
                { "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
                { "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
                { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] },
                { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] },
                { "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "noexec", "nodev"] },
                { "destination": RUNTIME_PATH_IN_SANDBOX, "type": "bind", "source": self.runtime_bin, "options": ["rbind", "ro", "nosuid", "nodev"] }
            ],
            "linux": {
                "seccomp": seccomp_profile(),
                "cgroupsPath": format!("{}/{}", self.cgroup_parent.trim_end_matches('/'), self.id),
                "resources": resources,
                "namespaces": [
                    { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" },
                    network
                ],
                "maskedPaths": [
                    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"
                ],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SandboxSpec {
        SandboxSpec {
            id: "abcdef0123456789".into(),
            env: vec![("PATH".into(), "/bin".into()), ("A".into(), "1".into())],
            netns_path: "/run/sandpool/netns/x".into(),
            runtime_bin: "/opt/sandpool-runtime".into(),
            limits: Limits {
                cpu_millis: 500,
                memory_bytes: 256 << 20,
                pids: 128,
            },
            cgroup_parent: "/sandpool".into(),
            access_token: "tok".into(),
            user: Some(SandboxUser::default_user()),
            cwd: "/".into(),
        }
    }

    #[test]
    fn unprivileged_by_default_with_seccomp() {
        let v = spec().to_json();
        assert_eq!(v["process"]["user"]["uid"], SANDBOX_USER.0);
        // only the runtime's file capabilities, handed over as ambient ones
        // (the runtime clears those before it starts anything)
        let caps = &v["process"]["capabilities"];
        let file_caps = json!(["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"]);
        for set in ["effective", "permitted", "inheritable", "ambient"] {
            assert_eq!(caps[set], file_caps, "{set}");
        }
        assert!(
            v["process"]["env"]
                .as_array()
                .unwrap()
                .contains(&json!("HOME=/home/user"))
        );
        let sc = &v["linux"]["seccomp"];
        assert_eq!(sc["defaultAction"], "SCMP_ACT_ALLOW");
        let blocked = sc["syscalls"][0]["names"].as_array().unwrap();
        for s in [
            "unshare",
            "mount",
            "bpf",
            "keyctl",
            "io_uring_setup",
            "kexec_load",
        ] {
            assert!(blocked.contains(&json!(s)), "{s} blocked");
        }
        assert_eq!(sc["syscalls"][1]["args"][0]["value"], CLONE_NEWUSER);
        let mut root = spec();
        root.user = None;
        let v = root.to_json();
        assert_eq!(v["process"]["user"]["uid"], 0);
        assert_eq!(
            v["process"]["capabilities"]["effective"]
                .as_array()
                .unwrap()
                .len(),
            CAPS.len()
        );
        assert_eq!(v["process"]["capabilities"]["ambient"], json!([]));
    }

    #[test]
    fn otel_env_follows_the_agent_and_reaches_the_host_over_the_bridge() {
        let vars = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://127.0.0.1:4317".to_string()),
            "OTEL_BSP_SCHEDULE_DELAY" => Some("200".to_string()),
            _ => None,
        };
        let env = sandbox_otel_env(vars, Some("10.213.0.1".parse().unwrap()));
        assert!(env.contains(&(
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            "http://10.213.0.1:4317".into()
        )));
        assert!(env.contains(&("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into())));
        assert!(env.contains(&("OTEL_SERVICE_NAME".into(), "sandpool-runtime".into())));
        assert!(
            sandbox_otel_env(|_| None, None).is_empty(),
            "off by default"
        );
        assert_eq!(
            host_ports(&env, Some("10.213.0.1".parse().unwrap())),
            [4317]
        );
        assert!(host_ports(&env, Some("10.9.9.1".parse().unwrap())).is_empty());
        let remote = sandbox_otel_env(
            |k| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://otel:4317".to_string()),
            None,
        );
        assert_eq!(remote[0].1, "http://otel:4317");
    }

    #[test]
    fn the_image_user_and_working_dir_reach_the_process() {
        let mut s = spec();
        s.user = Some(SandboxUser {
            uid: 1000,
            gid: 2000,
            name: "app".into(),
            home: "/home/app".into(),
        });
        s.cwd = "/app".into();
        let v = s.to_json();
        assert_eq!(v["process"]["user"], json!({"uid": 1000, "gid": 2000}));
        assert_eq!(v["process"]["cwd"], "/app");
        let env = v["process"]["env"].as_array().unwrap();
        for e in ["HOME=/home/app", "USER=app"] {
            assert!(env.contains(&json!(e)), "{env:?}");
        }
        // no working dir, or a relative one: the root
        for cwd in ["", "app"] {
            s.cwd = cwd.into();
            assert_eq!(s.to_json()["process"]["cwd"], "/");
        }
    }

    #[test]
    fn spec_carries_limits_netns_runtime_and_env() {
        let v = spec().to_json();
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 256u64 << 20);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 128);
        assert_eq!(v["linux"]["cgroupsPath"], "/sandpool/abcdef0123456789");
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(
            ns.iter()
                .any(|n| n["type"] == "network" && n["path"] == "/run/sandpool/netns/x")
        );
        assert_eq!(v["process"]["args"][0], RUNTIME_PATH_IN_SANDBOX);
        let env: Vec<&str> = v["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(
            env.contains(&"PATH=/bin"),
            "template PATH overrides the default"
        );
        assert_eq!(env.iter().filter(|e| e.starts_with("PATH=")).count(), 1);
        assert!(env.contains(&"A=1") && env.contains(&"EXECD_ACCESS_TOKEN=tok"));
        let m = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == RUNTIME_PATH_IN_SANDBOX)
            .unwrap();
        assert_eq!(m["source"], "/opt/sandpool-runtime");
        assert!(m["options"].as_array().unwrap().contains(&json!("ro")));
        assert_eq!(v["process"]["noNewPrivileges"], true);
    }

    #[test]
    fn unlimited_means_no_resource_sections() {
        let mut s = spec();
        s.limits = Limits::default();
        let v = s.to_json();
        assert!(v["linux"]["resources"].get("cpu").is_none());
        assert!(v["linux"]["resources"].get("memory").is_none());
        assert!(v["linux"]["resources"].get("pids").is_none());
    }
}
