//! Changing a running sandbox's limits in place: the cgroup files of its
//! init process (cgroup v1 `memory`/`cpu`/`pids` controllers, or the v2
//! unified hierarchy), found through `/proc/<pid>/cgroup`. A claim that asks
//! for other limits than its pool's gets them on the warm sandbox it takes.

use std::path::{Path, PathBuf};

use crate::{
    error::{AgentError, Result},
    spec::{CPU_PERIOD_US, Limits},
};

/// One file to write: (path below the cgroup mount, value).
type Write = (PathBuf, String);

/// The files that set `l` for a process whose `/proc/<pid>/cgroup` reads
/// `proc_cgroup`, under the cgroup mount `root` (pure).
pub fn writes(root: &Path, proc_cgroup: &str, l: &Limits) -> Result<Vec<Write>> {
    let quota = l.cpu_millis * CPU_PERIOD_US / 1000;
    let mut v1 = Vec::new();
    let mut unified = None;
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if ctrls.is_empty() {
            unified = Some(root.join(path));
            continue;
        }
        for c in ctrls.split(',') {
            let dir = root.join(c).join(path);
            match c {
                "memory" => v1.push((
                    dir.join("memory.limit_in_bytes"),
                    l.memory_bytes.to_string(),
                )),
                "cpu" => v1.push((dir.join("cpu.cfs_quota_us"), quota.to_string())),
                "pids" => v1.push((dir.join("pids.max"), l.pids.to_string())),
                _ => {}
            }
        }
    }
    if v1.len() == 3 {
        return Ok(v1);
    }
    match unified {
        Some(dir) if v1.is_empty() => Ok(vec![
            (dir.join("memory.max"), l.memory_bytes.to_string()),
            (dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}")),
            (dir.join("pids.max"), l.pids.to_string()),
        ]),
        _ => Err(AgentError::FailedPrecondition(format!(
            "the sandbox's cgroups ({}) lack the memory, cpu or pids controller",
            proc_cgroup.trim().replace('\n', " ")
        ))),
    }
}

/// Set `l` on the cgroups of process `pid`.
pub fn set(pid: u32, l: &Limits) -> Result<()> {
    let proc_cgroup = format!("/proc/{pid}/cgroup");
    let text =
        std::fs::read_to_string(&proc_cgroup).map_err(|e| AgentError::io(&proc_cgroup, e))?;
    for (path, value) in writes(Path::new("/sys/fs/cgroup"), &text, l)? {
        std::fs::write(&path, &value)
            .map_err(|e| AgentError::io(format!("writing {value} to {}", path.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        cpu_millis: 1500,
        memory_bytes: 256 << 20,
        pids: 128,
    };

    #[test]
    fn v1_controllers_get_their_files() {
        let cg = "12:pids:/sandpool/sb-1\n7:cpu,cpuacct:/sandpool/sb-1\n5:memory:/sandpool/sb-1\n3:freezer:/sandpool/sb-1\n0::/\n";
        let w = writes(Path::new("/cg"), cg, &LIMITS).expect("v1");
        let shown: Vec<(String, &str)> = w
            .iter()
            .map(|(p, v)| (p.display().to_string(), v.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                ("/cg/pids/sandpool/sb-1/pids.max".to_string(), "128"),
                (
                    "/cg/cpu/sandpool/sb-1/cpu.cfs_quota_us".to_string(),
                    "150000"
                ),
                (
                    "/cg/memory/sandpool/sb-1/memory.limit_in_bytes".to_string(),
                    "268435456"
                ),
            ]
        );
    }

    #[test]
    fn the_unified_hierarchy_gets_v2_files_and_a_partial_one_is_refused() {
        let w = writes(Path::new("/cg"), "0::/sandpool/sb-2\n", &LIMITS).expect("v2");
        assert_eq!(
            w[1],
            (
                PathBuf::from("/cg/sandpool/sb-2/cpu.max"),
                "150000 100000".into()
            )
        );
        assert_eq!(w[0].1, "268435456");
        let e = writes(Path::new("/cg"), "5:memory:/x\n", &LIMITS).expect_err("no cpu, pids");
        assert!(
            e.to_string().contains("lack the memory, cpu or pids"),
            "{e}"
        );
    }
}
