//! What a build's `RUN` steps run inside besides runc's namespaces: a
//! network namespace wired like a sandbox's, and a pids limit.
//!
//! - **Network:** the node agent's sandbox network (its bridge, an address
//!   from its pool subnet through the same host-local IPAM, an isolated
//!   bridge port, IPv6 off, and the bridge's host isolation chain), plus an
//!   nftables table in the namespace that refuses link-local addresses (the
//!   cloud metadata service) and the rest of the pool subnet. The namespace
//!   files live in their own directory (`builds/netns`), apart from the
//!   agent's, whose sweep removes netns no sandbox owns; namespaces a crash
//!   left behind are removed when the builder starts.
//! - **Pids:** the build container's cgroup parent is
//!   `/sandpool-builds/<build>`; before each `RUN` it is made in the pids
//!   hierarchy with `pids.max` (runc joins it and removes it when the step
//!   ends), so a fork bomb in a step stops at the limit.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use sandpool_core::egress::{EgressAction, EgressPolicy, EgressRule};
use sandpool_node_agent::{egress, net::NetConfig};

/// Most processes (and threads) one `RUN` step may have at once.
pub const BUILD_PIDS: u64 = 1024;

/// The cgroup (below each hierarchy's root) build `id`'s steps run in.
pub fn cgroup_parent(id: &str) -> String {
    format!("/sandpool-builds/{id}")
}

/// Where the pids limit of build `id` is written, under the cgroup mount
/// `root`: the v1 `pids` hierarchy, else the v2 unified one.
pub fn pids_dir(root: &Path, id: &str) -> Option<PathBuf> {
    let rel = cgroup_parent(id);
    let rel = rel.trim_start_matches('/');
    if root.join("pids/cgroup.procs").exists() {
        return Some(root.join("pids").join(rel));
    }
    root.join("cgroup.controllers")
        .exists()
        .then(|| root.join(rel))
}

/// Make build `id`'s cgroup with its pids limit (before a `RUN`).
pub fn limit_pids(root: &Path, id: &str) -> Result<(), String> {
    let dir = pids_dir(root, id).ok_or_else(|| {
        format!(
            "no pids cgroup controller under {} to limit build steps with",
            root.display()
        )
    })?;
    if let Some(parent) = dir.parent()
        && root.join("cgroup.controllers").exists()
    {
        // v2: the parent hands the pids controller down (already on: fine)
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+pids");
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let max = dir.join("pids.max");
    std::fs::write(&max, BUILD_PIDS.to_string())
        .map_err(|e| format!("writing {BUILD_PIDS} to {}: {e}", max.display()))
}

/// Remove build `id`'s cgroup if a step left it (runc removes it itself).
pub fn remove_cgroup(root: &Path, id: &str) {
    if let Some(dir) = pids_dir(root, id) {
        let _ = std::fs::remove_dir(dir);
    }
}

/// The egress table of a build's namespace: no link-local addresses (the
/// metadata service), nothing else on the pool subnet (other sandboxes;
/// the host's allowed ports are accepted before), the rest allowed.
pub fn policy(subnet: &str) -> EgressPolicy {
    let deny = |cidr: &str| EgressRule {
        action: EgressAction::Deny,
        cidr: cidr.to_string(),
        port: 0,
    };
    EgressPolicy {
        default_action: EgressAction::Allow,
        rules: vec![deny("169.254.0.0/16"), deny(subnet)],
    }
}

/// Network namespaces for builds, wired like sandboxes'.
#[derive(Clone)]
pub struct BuildNet {
    net: NetConfig,
}

impl BuildNet {
    /// On the sandbox network `sandbox_net`, namespace files under `dir`.
    pub fn new(sandbox_net: &NetConfig, dir: &Path) -> Self {
        let mut net = sandbox_net.clone();
        net.netns_dir = dir.join("netns");
        BuildNet { net }
    }

    fn key(id: &str) -> String {
        format!("build-{id}")
    }

    /// Remove the namespaces (and addresses) of builds a crash interrupted.
    pub fn sweep(&self) {
        for id in self.net.list() {
            if let Err(e) = self.net.teardown(&id) {
                tracing::warn!(netns = %id, error = %e, "removing a build's network namespace");
            }
        }
    }

    /// Build `id`'s namespace: attached to the bridge, its egress table
    /// loaded. Returns its path (`buildah run --network ns:<path>`).
    pub fn setup(&self, id: &str) -> Result<PathBuf, String> {
        let key = Self::key(id);
        let ip = self
            .net
            .setup(&key)
            .map_err(|e| format!("the build's network: {e}"))?;
        let ns = self.net.netns_path(&key);
        let platform: Vec<(IpAddr, u16)> = self
            .net
            .gateway_ip()
            .map(|gw| {
                self.net
                    .allow_host_ports
                    .iter()
                    .map(|p| (IpAddr::V4(gw), *p))
                    .collect()
            })
            .unwrap_or_default();
        if let Err(e) = egress::apply(&ns, Some(&policy(&self.net.subnet)), &platform) {
            self.teardown(id);
            return Err(format!("the build's egress rules: {e}"));
        }
        tracing::info!(build = %id, %ip, "build network");
        Ok(ns)
    }

    /// Remove build `id`'s namespace and release its address.
    pub fn teardown(&self, id: &str) {
        if let Err(e) = self.net.teardown(&Self::key(id)) {
            tracing::warn!(build = %id, error = %e, "removing a build's network namespace");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_netns_live_apart_from_the_agents() {
        let sandboxes = NetConfig::new(Path::new("/d/agent"), "sp0", "10.213.0.0/16");
        let b = BuildNet::new(&sandboxes, Path::new("/d/builds"));
        assert_eq!(b.net.netns_dir, PathBuf::from("/d/builds/netns"));
        // same bridge, subnet and address pool as sandboxes
        assert_eq!(b.net.ipam_dir, sandboxes.ipam_dir);
        assert_eq!((b.net.bridge.as_str(), b.net.isolate), ("sp0", true));
    }

    #[test]
    fn the_build_egress_table_refuses_link_local_and_the_pool_subnet() {
        let p = policy("10.213.0.0/16");
        assert!(p.validate().is_ok());
        let gw: IpAddr = "10.213.0.1".parse().unwrap();
        let s = egress::ruleset(Some(&p), &[(gw, 4317)]);
        let accept = s.find("ip daddr 10.213.0.1 tcp dport 4317 accept").unwrap();
        let link_local = s.find("ip daddr 169.254.0.0/16 reject").unwrap();
        let subnet = s.find("ip daddr 10.213.0.0/16 reject").unwrap();
        assert!(accept < link_local && link_local < subnet, "{s}");
    }

    #[test]
    fn the_pids_limit_goes_to_the_v1_pids_hierarchy_else_the_unified_one() {
        let v1 = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(v1.path().join("pids")).unwrap();
        std::fs::write(v1.path().join("pids/cgroup.procs"), "").unwrap();
        limit_pids(v1.path(), "b1").unwrap();
        let max = v1.path().join("pids/sandpool-builds/b1/pids.max");
        assert_eq!(std::fs::read_to_string(max).unwrap(), "1024");
        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu pids").unwrap();
        limit_pids(v2.path(), "b2").unwrap();
        let dir = v2.path().join("sandpool-builds");
        assert_eq!(
            std::fs::read_to_string(dir.join("b2/pids.max")).unwrap(),
            "1024"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        let none = tempfile::tempdir().unwrap();
        assert!(limit_pids(none.path(), "b3").unwrap_err().contains("pids"));
    }
}
