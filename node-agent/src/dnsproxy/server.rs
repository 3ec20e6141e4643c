//! The running DNS proxy of a node: one UDP socket (on the bridge address)
//! that sandboxes' port-53 traffic is redirected to. A query's source
//! address names the sandbox (sandbox processes cannot forge it: they have
//! no raw sockets); each query is decided by that sandbox's policy
//! ([`super::decide`]), answered NXDOMAIN or forwarded to the upstream
//! resolver, and an allowed answer's addresses are written to the
//! sandbox's allow sets ([`SetWriter`]) before the answer goes back. A
//! source that is no registered sandbox is answered REFUSED.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use hickory_proto::op::{Message, ResponseCode};
use parking_lot::RwLock;
use sandpool_core::egress::EgressPolicy;
use tokio::{net::UdpSocket, task::JoinHandle};

use super::{TtlClamp, Verdict, admitted, answer_addresses, decide, error_answer, set_script};
use crate::error::{AgentError, Result};

/// How long the upstream resolver may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest UDP DNS message handled (EDNS sizes included).
const MAX_MESSAGE: usize = 4096;

/// Where allowed addresses go (blocking; run off the async threads).
pub trait SetWriter: Send + Sync + 'static {
    /// Run an nft script from [`set_script`].
    fn add(&self, script: &str) -> Result<()>;
}

/// The allow sets in a sandbox's network namespace.
#[derive(Debug, Clone)]
pub struct NetnsSets(pub PathBuf);

impl SetWriter for NetnsSets {
    fn add(&self, script: &str) -> Result<()> {
        crate::egress::run_nft(&self.0, script)
    }
}

/// One sandbox the proxy answers.
#[derive(Clone)]
struct Client {
    id: String,
    policy: Arc<EgressPolicy>,
    sets: Arc<dyn SetWriter>,
}

/// What every query of one proxy needs.
struct Shared {
    clients: RwLock<HashMap<IpAddr, Client>>,
    upstream: SocketAddr,
    clamp: TtlClamp,
}

/// A running proxy; dropping it stops it.
pub struct DnsProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for DnsProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

impl DnsProxy {
    /// Listen on `bind` (port 0: any) and resolve through `upstream`.
    pub async fn start(bind: SocketAddr, upstream: SocketAddr, clamp: TtlClamp) -> Result<Self> {
        let sock = UdpSocket::bind(bind)
            .await
            .map_err(|e| AgentError::network(format!("binding the DNS proxy on {bind}"), e))?;
        let addr = sock
            .local_addr()
            .map_err(|e| AgentError::network("the DNS proxy's address", e))?;
        let shared = Arc::new(Shared {
            clients: RwLock::new(HashMap::new()),
            upstream,
            clamp,
        });
        let task = tokio::spawn(serve(Arc::new(sock), shared.clone()));
        Ok(Self { addr, shared, task })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answer queries from sandbox `id`, whose address is `source`, by
    /// `policy`, allowing resolved addresses through `sets` (replaces what
    /// `id` and `source` had).
    pub fn set_client(
        &self,
        id: &str,
        source: IpAddr,
        policy: EgressPolicy,
        sets: Arc<dyn SetWriter>,
    ) {
        let c = Client {
            id: id.to_owned(),
            policy: Arc::new(policy),
            sets,
        };
        let mut clients = self.shared.clients.write();
        clients.retain(|_, c| c.id != id);
        clients.insert(source, c);
    }

    /// Stop answering sandbox `id` (its address gets REFUSED from now on).
    pub fn remove_client(&self, id: &str) {
        self.shared.clients.write().retain(|_, c| c.id != id);
    }
}

impl Drop for DnsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(sock: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "DNS proxy receive failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let (sock, shared) = (sock.clone(), shared.clone());
        tokio::spawn(async move {
            if let Some(answer) = handle(&query, from.ip(), &shared).await
                && !answer.is_empty()
                && let Err(e) = sock.send_to(&answer, from).await
            {
                tracing::debug!(error = %e, %from, "DNS proxy reply failed");
            }
        });
    }
}

/// The answer to one query (`None`: none is sent).
async fn handle(query: &[u8], from: IpAddr, shared: &Shared) -> Option<Vec<u8>> {
    let client = shared.clients.read().get(&canonical(from)).cloned();
    let Some(client) = client else {
        let q = Message::from_vec(query).ok()?;
        return Some(error_answer(&q, ResponseCode::Refused));
    };
    let verdict = decide(query, &client.policy);
    match verdict {
        Verdict::Answer(a) => Some(a),
        Verdict::Drop => None,
        Verdict::Forward => {
            let q = Message::from_vec(query).ok()?;
            let answer = match forward(query, q.id(), shared.upstream).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "DNS upstream failed");
                    return Some(error_answer(&q, ResponseCode::ServFail));
                }
            };
            let addrs = admitted(&q, answer_addresses(&answer), &client.policy);
            let script = set_script(&addrs, shared.clamp);
            if script.is_empty() {
                return Some(answer);
            }
            let sets = client.sets.clone();
            let added = tokio::task::spawn_blocking(move || sets.add(&script)).await;
            match added {
                Ok(Ok(())) => Some(answer),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "allowing resolved addresses failed");
                    Some(error_answer(&q, ResponseCode::ServFail))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "allowing resolved addresses failed");
                    Some(error_answer(&q, ResponseCode::ServFail))
                }
            }
        }
    }
}

/// An IPv4 peer seen through an IPv6 socket as itself.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        IpAddr::V4(_) => a,
    }
}

/// Ask `upstream` (UDP) and wait for the answer with the query's id.
async fn forward(query: &[u8], id: u16, upstream: SocketAddr) -> Result<Vec<u8>> {
    let any: IpAddr = if upstream.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let sock = UdpSocket::bind((any, 0))
        .await
        .map_err(|e| AgentError::network("binding a DNS upstream socket", e))?;
    sock.connect(upstream)
        .await
        .map_err(|e| AgentError::network(format!("reaching DNS upstream {upstream}"), e))?;
    sock.send(query)
        .await
        .map_err(|e| AgentError::network(format!("asking DNS upstream {upstream}"), e))?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let wait = async {
        loop {
            let n = sock
                .recv(&mut buf)
                .await
                .map_err(|e| AgentError::network(format!("reading DNS upstream {upstream}"), e))?;
            // a stray datagram with another id is not our answer
            if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                return Ok(buf[..n].to_vec());
            }
        }
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, wait)
        .await
        .map_err(|_| AgentError::Network(format!("DNS upstream {upstream} did not answer")))?
}

/// The first `nameserver` of a resolv.conf text, port 53.
pub fn resolv_conf_upstream(text: &str) -> Option<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
}
