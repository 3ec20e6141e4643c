//! Sandbox networking: one network namespace per sandbox (a bind-mounted
//! nsfs file under the agent's data dir) attached to a node bridge with the
//! CNI `bridge` + `host-local` plugins from Debian's containernetworking-plugins.

use std::{
    fs,
    io::Write,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{Value, json};

use crate::error::{AgentError, Result};

/// The DNS proxy's default UDP port on the bridge address.
pub const DNS_PROXY_PORT: u16 = 15353;

#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Where the per-sandbox netns files live.
    pub netns_dir: PathBuf,
    /// host-local IPAM state.
    pub ipam_dir: PathBuf,
    /// CNI plugin binaries.
    pub cni_bin_dir: PathBuf,
    pub bridge: String,
    pub subnet: String,
    /// Keep sandboxes apart: no sandbox-to-sandbox traffic on the bridge and
    /// no connections from sandboxes to the host (see [`NetConfig::ensure_isolation`]).
    pub isolate: bool,
    /// Host TCP ports sandboxes may still connect to (e.g. an OTLP collector).
    pub allow_host_ports: Vec<u16>,
    /// UDP port of the node's DNS proxy on the bridge address, which
    /// enforces domain egress rules ([`crate::dnsproxy`]); 0: no proxy, and
    /// domain rules are refused.
    pub dns_proxy_port: u16,
    /// TCP port of the node's credential proxy on the bridge address
    /// ([`crate::credproxy`]); 0: none, and credential vaults are refused.
    pub cred_proxy_port: u16,
    /// The resolver the DNS proxy asks (`None`: the first nameserver of the
    /// host's /etc/resolv.conf).
    pub dns_upstream: Option<std::net::SocketAddr>,
}

impl NetConfig {
    pub fn new(data_dir: &Path, bridge: &str, subnet: &str) -> Self {
        NetConfig {
            netns_dir: data_dir.join("netns"),
            ipam_dir: data_dir.join("cni-ipam"),
            cni_bin_dir: ["/usr/lib/cni", "/opt/cni/bin"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.join("bridge").exists())
                .unwrap_or_else(|| PathBuf::from("/usr/lib/cni")),
            bridge: bridge.to_string(),
            subnet: subnet.to_string(),
            isolate: true,
            allow_host_ports: Vec::new(),
            dns_proxy_port: DNS_PROXY_PORT,
            cred_proxy_port: crate::credproxy::PORT,
            dns_upstream: None,
        }
    }

    /// The iptables chain guarding the host from this bridge's sandboxes.
    pub fn chain(&self) -> String {
        format!("SANDPOOL-{}", self.bridge)
    }

    /// Sandboxes may not open connections to the host — node agent,
    /// scheduler, gateway, metrics, anything listening on any host address —
    /// except on `allow_host_ports`; replies to connections the host opened
    /// (the agent and gateway talking to runtimes) pass. TCP is refused with a
    /// reset, the rest with ICMP port-unreachable, so callers fail fast.
    /// Idempotent (the chain is rebuilt).
    pub fn ensure_isolation(&self) -> Result<()> {
        let chain = self.chain();
        let _ = iptables(&["-N", &chain]); // exists already: fine
        iptables(&["-F", &chain])?;
        iptables(&[
            "-A",
            &chain,
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ])?;
        let accept = |proto: &str, port: u16| {
            let port = port.to_string();
            iptables(&["-A", &chain, "-p", proto, "--dport", &port, "-j", "ACCEPT"])
        };
        for port in &self.allow_host_ports {
            accept("tcp", *port)?;
        }
        if self.dns_proxy_port != 0 {
            // the DNS proxy answers registered sandboxes only
            accept("udp", self.dns_proxy_port)?;
        }
        if self.cred_proxy_port != 0 {
            // the credential proxy serves sandboxes with a vault only
            accept("tcp", self.cred_proxy_port)?;
        }
        iptables(&[
            "-A",
            &chain,
            "-p",
            "tcp",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ])?;
        iptables(&[
            "-A",
            &chain,
            "-j",
            "REJECT",
            "--reject-with",
            "icmp-port-unreachable",
        ])?;
        if iptables(&["-C", "INPUT", "-i", &self.bridge, "-j", &chain]).is_err() {
            iptables(&["-I", "INPUT", "1", "-i", &self.bridge, "-j", &chain])?;
        }
        // redirects of a previous run: their vaults are gone
        let _ = iptables(&["-t", "nat", "-F", &self.cred_chain()]);
        Ok(())
    }

    /// Remove what [`NetConfig::ensure_isolation`] installed (idempotent).
    pub fn remove_isolation(&self) {
        let chain = self.chain();
        while iptables(&["-D", "INPUT", "-i", &self.bridge, "-j", &chain]).is_ok() {}
        let _ = iptables(&["-F", &chain]);
        let _ = iptables(&["-X", &chain]);
        let cred = self.cred_chain();
        while iptables(&[
            "-t",
            "nat",
            "-D",
            "PREROUTING",
            "-i",
            &self.bridge,
            "-j",
            &cred,
        ])
        .is_ok()
        {}
        let _ = iptables(&["-t", "nat", "-F", &cred]);
        let _ = iptables(&["-t", "nat", "-X", &cred]);
    }

    /// The nat chain sending sandboxes' port-80 connections to the node's
    /// credential proxy ([`crate::credproxy`]): on the host, so the proxy's
    /// socket sees the original destination (`SO_ORIGINAL_DST`), after the
    /// sandbox's own egress filter has judged that destination.
    pub fn cred_chain(&self) -> String {
        format!("SPCRED-{}", self.bridge)
    }

    /// Make the credential redirect chain, emptied (the proxy that starts
    /// has no vault yet), and jump to it from PREROUTING for this bridge.
    pub fn reset_cred_chain(&self) -> Result<()> {
        let chain = self.cred_chain();
        let _ = iptables(&["-t", "nat", "-N", &chain]); // exists already: fine
        iptables(&["-t", "nat", "-F", &chain])?;
        let jump = ["PREROUTING", "-i", &self.bridge, "-j", &chain];
        if iptables(&[&["-t", "nat", "-C"][..], &jump].concat()).is_err() {
            iptables(&[&["-t", "nat", "-I"][..], &jump].concat())?;
        }
        Ok(())
    }

    /// Redirect (`on`) or stop redirecting sandbox address `ip`'s new TCP
    /// connections to port 80 to `proxy` (idempotent).
    pub fn redirect_http(&self, ip: Ipv4Addr, proxy: SocketAddrV4, on: bool) -> Result<()> {
        let chain = self.cred_chain();
        let (src, to) = (format!("{ip}/32"), proxy.to_string());
        let rule = [
            &chain[..],
            "-s",
            &src,
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ];
        let with = |op: &'static str| [&["-t", "nat", op][..], &rule[..]].concat();
        if on {
            if iptables(&with("-C")).is_err() {
                iptables(&with("-A"))?;
            }
        } else {
            while iptables(&with("-D")).is_ok() {}
        }
        Ok(())
    }

    /// Mark the sandbox's bridge port isolated: isolated ports cannot talk to
    /// each other (the host, not a port, is still reachable — and guarded by
    /// the INPUT chain).
    fn isolate_port(&self, cni_result: &Value) -> Result<()> {
        let Some(veth) = host_veth(cni_result, &self.bridge) else {
            return Err(AgentError::Network("CNI result names no host veth".into()));
        };
        let path = format!("/sys/class/net/{veth}/brport/isolated");
        fs::write(&path, "1")
            .map_err(|e| AgentError::network(format!("isolating bridge port {veth} ({path})"), e))
    }

    /// The bridge's IP (the sandboxes' gateway): the first host of the subnet.
    pub fn gateway_ip(&self) -> Option<Ipv4Addr> {
        let (net, bits) = self.subnet.split_once('/')?;
        let net: Ipv4Addr = net.parse().ok()?;
        let bits: u32 = bits.parse().ok().filter(|b| *b <= 30)?;
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        Some(Ipv4Addr::from((u32::from(net) & mask) + 1))
    }

    pub fn netns_path(&self, id: &str) -> PathBuf {
        self.netns_dir.join(id)
    }

    fn bridge_conf(&self) -> Value {
        json!({
            "cniVersion": "0.4.0",
            "name": "sandpool",
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": self.subnet }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": self.ipam_dir,
            }
        })
    }

    /// Create the namespace, bring up `lo`, attach `eth0` to the bridge;
    /// returns the sandbox IP. Undoes its own steps on failure.
    pub fn setup(&self, id: &str) -> Result<Ipv4Addr> {
        let ns = self.netns_path(id);
        create_netns(&ns)?;
        let res = (|| {
            self.cni(
                "ADD",
                "loopback",
                id,
                "lo",
                &json!({"cniVersion": "0.4.0", "name": "lo", "type": "loopback"}),
            )?;
            let out = self.cni("ADD", "bridge", id, "eth0", &self.bridge_conf())?;
            if self.isolate {
                self.isolate_port(&out)?;
            }
            parse_ip(&out)
        })();
        if res.is_err() {
            let _ = self.cni("DEL", "bridge", id, "eth0", &self.bridge_conf());
            let _ = delete_netns(&ns);
        }
        res
    }

    /// Release the IP, remove the veth and the namespace (idempotent).
    pub fn teardown(&self, id: &str) -> Result<()> {
        let ns = self.netns_path(id);
        let del = self.cni("DEL", "bridge", id, "eth0", &self.bridge_conf());
        delete_netns(&ns)?;
        del.map(|_| ())
    }

    /// Sandbox ids that have a namespace file.
    pub fn list(&self) -> Vec<String> {
        fs::read_dir(&self.netns_dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// IPs held by host-local IPAM (leak checks).
    pub fn allocated_ips(&self) -> Vec<String> {
        fs::read_dir(self.ipam_dir.join("sandpool"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn cni(
        &self,
        command: &str,
        plugin: &str,
        id: &str,
        ifname: &str,
        conf: &Value,
    ) -> Result<Value> {
        let bin = self.cni_bin_dir.join(plugin);
        let mut child = Command::new(&bin)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", self.netns_path(id))
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", &self.cni_bin_dir)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                AgentError::network(
                    format!(
                        "running CNI plugin {} (apt-get install containernetworking-plugins)",
                        bin.display()
                    ),
                    e,
                )
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(conf.to_string().as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| AgentError::network(format!("CNI {plugin}"), e))?;
        if !out.status.success() {
            let msg = serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .and_then(|v| v["msg"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
            return Err(AgentError::Network(format!(
                "CNI {plugin} {command} for {id}: {msg}"
            )));
        }
        if out.stdout.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| AgentError::network(format!("CNI {plugin} output"), e))
    }
}

fn iptables(args: &[&str]) -> Result<()> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| AgentError::network("running iptables (apt-get install iptables)", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(AgentError::Network(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The host side of the sandbox's veth in a CNI bridge result: the interface
/// that is neither the bridge nor inside the sandbox.
pub fn host_veth(result: &Value, bridge: &str) -> Option<String> {
    result["interfaces"]
        .as_array()?
        .iter()
        .find(|i| {
            i.get("sandbox")
                .is_none_or(|s| s.as_str().unwrap_or("").is_empty())
                && i["name"] != bridge
        })
        .and_then(|i| i["name"].as_str())
        .map(str::to_string)
}

/// First IPv4 address of a CNI result.
pub fn parse_ip(result: &Value) -> Result<Ipv4Addr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok())
        .next()
        .ok_or_else(|| AgentError::Network(format!("CNI result without an IPv4 address: {result}")))
}

/// A persistent network namespace at `path` (like `ip netns add`): a thread
/// unshares its netns and bind-mounts it onto the file.
pub fn create_netns(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| AgentError::io(dir.display().to_string(), e))?;
    }
    fs::File::create(path).map_err(|e| AgentError::io(path.display().to_string(), e))?;
    let target = path.to_path_buf();
    let res = std::thread::spawn(move || -> Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| AgentError::network("unshare(CLONE_NEWNET)", e))?;
        disable_ipv6()?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| AgentError::network(format!("bind-mounting netns to {}", target.display()), e))
    })
    .join()
    .map_err(|_| AgentError::Network("netns thread panicked".into()))?;
    if let Err(e) = res {
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// Turn IPv6 off in the calling thread's network namespace, before any
/// interface is in it: the isolation chain is IPv4 (iptables), and over IPv6
/// a sandbox would reach the host through the bridge's link-local address.
/// A kernel without IPv6 has nothing to turn off.
fn disable_ipv6() -> Result<()> {
    for scope in ["all", "default"] {
        let path = format!("/proc/sys/net/ipv6/conf/{scope}/disable_ipv6");
        match fs::write(&path, "1") {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(AgentError::network(format!("writing {path}"), e)),
        }
    }
    Ok(())
}

pub fn delete_netns(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(AgentError::network(
                format!("unmounting {}", path.display()),
                e,
            ));
        }
    }
    fs::remove_file(path).map_err(|e| AgentError::io(path.display().to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_is_the_non_sandbox_non_bridge_interface() {
        let v = json!({"interfaces": [
            {"name": "sandpool0", "mac": "aa"},
            {"name": "veth1234", "mac": "bb"},
            {"name": "eth0", "mac": "cc", "sandbox": "/var/run/netns/x"}
        ]});
        assert_eq!(host_veth(&v, "sandpool0").as_deref(), Some("veth1234"));
        assert_eq!(host_veth(&json!({}), "sandpool0"), None);
    }

    #[test]
    fn gateway_is_the_first_host_of_the_subnet() {
        let c = |subnet: &str| {
            NetConfig::new(Path::new("/x"), "b", subnet)
                .gateway_ip()
                .map(|i| i.to_string())
        };
        assert_eq!(c("10.213.0.0/16").as_deref(), Some("10.213.0.1"));
        assert_eq!(c("10.213.7.0/24").as_deref(), Some("10.213.7.1"));
        assert_eq!(c("10.213.7.9/24").as_deref(), Some("10.213.7.1"));
        assert_eq!(c("bogus"), None);
        assert_eq!(c("10.0.0.0/31"), None);
    }

    #[test]
    fn parses_cni_result() {
        let v = json!({"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.213.0.5/16", "gateway": "10.213.0.1"}]});
        assert_eq!(parse_ip(&v).unwrap(), Ipv4Addr::new(10, 213, 0, 5));
        assert!(parse_ip(&json!({"ips": []})).is_err());
        assert!(parse_ip(&json!({})).is_err());
    }

    #[test]
    fn bridge_conf_uses_host_local_in_data_dir() {
        let c = NetConfig::new(Path::new("/var/lib/sp"), "sp0", "10.213.0.0/16");
        let v = c.bridge_conf();
        assert_eq!(v["bridge"], "sp0");
        assert_eq!(v["ipam"]["dataDir"], "/var/lib/sp/cni-ipam");
        assert_eq!(v["ipam"]["ranges"][0][0]["subnet"], "10.213.0.0/16");
        assert_eq!(c.netns_path("abc"), PathBuf::from("/var/lib/sp/netns/abc"));
    }
}
