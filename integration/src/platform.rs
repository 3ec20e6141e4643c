//! One standalone `sandpool serve` for the benchmark commands (root): started
//! as a child with free loopback ports, its own data dir and bridge, stopped
//! and cleaned up by a guard; plus the OpenSandbox calls the benchmarks time.

use std::{
    ffi::OsString,
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::free_port;

/// The API key every benchmark platform accepts.
pub const API_KEY: &str = "bench-key";
const KEY_HEADER: &str = "OPEN-SANDBOX-API-KEY";
/// execd's port in a sandbox (the runtime's HTTP API).
pub const EXECD_PORT: u16 = sandpool_node_agent::spec::RUNTIME_PORT;
/// How long `sandpool serve` gets to finish `--cleanup-on-exit` after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(120);
/// Per-request bound of the benchmark HTTP client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

// The binaries a benchmark runs, as command-line arguments flattened into
// each benchmark's own (a plain comment: clap would take a doc comment as
// the benchmark's description).
#[derive(clap::Args, Debug, Clone)]
pub struct Binaries {
    /// The `sandpool` binary.
    #[arg(long)]
    pub sandpool: PathBuf,
    /// Static runtime for sandboxes (default: next to `sandpool`).
    #[arg(long)]
    pub runtime_bin: Option<PathBuf>,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct PlatformSpec {
    pub sandpool: PathBuf,
    /// Static runtime for sandboxes (default: `sandpool-runtime-static` next to `sandpool`).
    pub runtime_bin: Option<PathBuf>,
    /// Names the data dir: `$TMPDIR/<name>-<pid>`.
    pub name: String,
    /// A bridge and subnet of its own, so benchmarks don't meet other platforms.
    pub bridge: String,
    pub subnet: String,
    /// `NAME:IMAGE:BUFFER_MIN:BUFFER_MAX:POOL_MIN:POOL_MAX` each.
    pub pools: Vec<String>,
    /// The node's most sandboxes (`None`: serve's default).
    pub max_sandboxes: Option<u32>,
}

/// Loopback ports of one platform.
#[derive(Debug, Clone, Copy)]
struct Ports {
    gateway: u16,
    agent: u16,
    scheduler: u16,
    metrics: u16,
}

/// `sandpool serve` arguments (after the program name).
fn serve_args(spec: &PlatformSpec, ports: Ports, data_dir: &Path) -> Vec<OsString> {
    let loopback = |port: u16| OsString::from(format!("127.0.0.1:{port}"));
    let runtime = spec
        .runtime_bin
        .clone()
        .unwrap_or_else(|| spec.sandpool.with_file_name("sandpool-runtime-static"));
    let mut args: Vec<OsString> = vec!["serve".into(), "--cleanup-on-exit".into()];
    let mut opt = |flag: &str, value: OsString| args.extend([flag.into(), value]);
    opt("--listen", loopback(ports.gateway));
    opt("--api-key", API_KEY.into());
    for pool in &spec.pools {
        opt("--pool", pool.into());
    }
    opt("--bridge", (&spec.bridge).into());
    opt("--subnet", (&spec.subnet).into());
    opt("--agent-listen", loopback(ports.agent));
    opt("--scheduler-listen", loopback(ports.scheduler));
    opt("--metrics-listen", loopback(ports.metrics));
    opt("--data-dir", data_dir.into());
    opt("--runtime-bin", runtime.into());
    if let Some(n) = spec.max_sandboxes {
        opt("--max-sandboxes", n.to_string().into());
    }
    args
}

/// A running `sandpool serve`. Dropping it stops the platform (SIGTERM:
/// `--cleanup-on-exit` releases every claim and deletes every sandbox), then
/// removes the data dir and the bridge.
pub struct Platform {
    child: Child,
    data_dir: PathBuf,
    bridge: String,
    api: Api,
}

impl Platform {
    /// Start `sandpool serve` (its stderr goes to `serve.log` in the data dir).
    pub fn start(spec: &PlatformSpec) -> anyhow::Result<Platform> {
        let ports = Ports {
            gateway: free_port()?,
            agent: free_port()?,
            scheduler: free_port()?,
            metrics: free_port()?,
        };
        let api = Api::new(
            format!("http://127.0.0.1:{}", ports.gateway),
            format!("http://127.0.0.1:{}/metrics", ports.metrics),
        )?;
        let data_dir = std::env::temp_dir().join(format!("{}-{}", spec.name, std::process::id()));
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let log = File::create(data_dir.join("serve.log")).context("creating serve.log")?;
        let child = Command::new(&spec.sandpool)
            .args(serve_args(spec, ports, &data_dir))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} serve", spec.sandpool.display()))?;
        Ok(Platform {
            child,
            data_dir,
            bridge: spec.bridge.clone(),
            api,
        })
    }

    pub fn api(&self) -> &Api {
        &self.api
    }

    /// PID of `sandpool serve`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Wait until `pool` has `n` warm sandboxes; fails early when serve exits.
    pub async fn wait_ready(
        &mut self,
        pool: &str,
        n: u64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let t = Instant::now();
        loop {
            self.check_running()?;
            // Connection errors are expected while serve is starting.
            if self
                .api
                .pool_status(pool)
                .await
                .is_ok_and(|s| s.available >= n)
            {
                return Ok(());
            }
            if t.elapsed() > timeout {
                bail!(
                    "platform did not become ready in {} s{}",
                    timeout.as_secs(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// An error (with the end of serve's log) when `sandpool serve` has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self
            .child
            .try_wait()
            .context("waiting for sandpool serve")?
        {
            None => Ok(()),
            Some(status) => bail!("sandpool serve exited ({status}){}", self.log_tail()),
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data_dir.join("serve.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        match lines.len() {
            0 => String::new(),
            n => format!(
                "; end of its log:\n{}",
                lines[n.saturating_sub(20)..].join("\n")
            ),
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            terminate(pid);
        }
        let t = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && t.elapsed() < STOP_GRACE {
            std::thread::sleep(Duration::from_millis(100));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            eprintln!(
                "sandpool serve did not stop in {} s; killing it",
                STOP_GRACE.as_secs()
            );
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// SIGTERM (lets serve run its shutdown; `Child::kill` would be SIGKILL).
fn terminate(pid: i32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// Claim body for a warm sandbox from `pool`.
pub fn warm_claim(pool: &str) -> Value {
    json!({"image": {"uri": "busybox"}, "timeout": 600, "entrypoint": ["tail", "-f", "/dev/null"], "extensions": {"poolRef": pool}})
}

/// Claim body for a cold start (no pool: a busybox container started for the request).
pub fn cold_claim() -> Value {
    json!({"image": {"uri": "busybox"}, "timeout": 600, "entrypoint": ["tail", "-f", "/dev/null"], "resourceLimits": {"cpu": "1", "memory": "256Mi"}})
}

/// `status` of `GET /v1/pools/{name}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    pub total: u64,
    pub allocated: u64,
    pub available: u64,
}

/// execd of one sandbox.
#[derive(Debug, Clone)]
pub struct Execd {
    /// `ip:port` of the sandbox's execd.
    pub endpoint: String,
    token: String,
}

/// OpenSandbox API of a platform (cheap to clone).
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    metrics: String,
}

impl Api {
    fn new(base: String, metrics: String) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(Api {
            http,
            base,
            metrics,
        })
    }

    /// A `method` request to `path` of the OpenSandbox API, with the key.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header(KEY_HEADER, API_KEY)
    }

    /// `POST /v1/sandboxes`; the sandbox id.
    pub async fn create(&self, body: &Value) -> anyhow::Result<String> {
        let r = self
            .request(reqwest::Method::POST, "/v1/sandboxes")
            .json(body)
            .send()
            .await?;
        if r.status().as_u16() != 202 {
            bail!(
                "create: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        let v: Value = r.json().await.context("create: response")?;
        Ok(v["id"]
            .as_str()
            .context("create: response without an id")?
            .to_string())
    }

    /// `GET /v1/sandboxes/{id}/endpoints/44772`: where execd is, and its token.
    pub async fn execd(&self, id: &str) -> anyhow::Result<Execd> {
        let path = format!("/v1/sandboxes/{id}/endpoints/{EXECD_PORT}");
        let ep: Value = self
            .request(reqwest::Method::GET, &path)
            .send()
            .await?
            .json()
            .await
            .context("endpoint: response")?;
        let endpoint = ep["endpoint"]
            .as_str()
            .context("endpoint: no endpoint")?
            .to_string();
        let token = ep["headers"]["X-EXECD-ACCESS-TOKEN"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Ok(Execd { endpoint, token })
    }

    /// `POST /command` on execd; reads the event stream to its end.
    pub async fn exec(&self, execd: &Execd, command: &str) -> anyhow::Result<()> {
        let url = format!("http://{}/command", execd.endpoint);
        let token = Some(execd.token.as_str());
        run_command(&self.http, url, token, command, "exec did not complete").await
    }

    /// `DELETE /v1/sandboxes/{id}`.
    pub async fn delete(&self, id: &str) -> anyhow::Result<()> {
        let r = self
            .request(reqwest::Method::DELETE, &format!("/v1/sandboxes/{id}"))
            .send()
            .await?;
        if r.status().as_u16() != 204 {
            bail!("delete {id}: {}", r.status());
        }
        Ok(())
    }

    /// create → endpoint → exec `true`: the claim latency and the sandbox id
    /// (the caller deletes it; on failure it is deleted here).
    pub async fn claim_and_exec(&self, body: &Value) -> anyhow::Result<(Duration, String)> {
        let t = Instant::now();
        let id = self.create(body).await?;
        let first_exec = async {
            let execd = self.execd(&id).await?;
            self.exec(&execd, "true").await
        };
        match first_exec.await {
            Ok(()) => Ok((t.elapsed(), id)),
            Err(e) => {
                let _ = self.delete(&id).await;
                Err(e)
            }
        }
    }

    /// `GET /v1/pools/{pool}`.
    pub async fn pool_status(&self, pool: &str) -> anyhow::Result<PoolStatus> {
        let r = self
            .request(reqwest::Method::GET, &format!("/v1/pools/{pool}"))
            .send()
            .await?;
        let v: Value = r
            .error_for_status()?
            .json()
            .await
            .context("pool: response")?;
        let field = |k: &str| {
            v["status"][k]
                .as_u64()
                .with_context(|| format!("pool {pool}: no status.{k}"))
        };
        Ok(PoolStatus {
            total: field("total")?,
            allocated: field("allocated")?,
            available: field("available")?,
        })
    }

    /// Wait until `pool` has `n` warm sandboxes.
    pub async fn wait_available(
        &self,
        pool: &str,
        n: u64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let t = Instant::now();
        while self.pool_status(pool).await?.available < n {
            if t.elapsed() > timeout {
                bail!(
                    "pool {pool} did not refill to {n} in {} s",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// How many claims of `pool` ended with `outcome` (`warm`, `cold`, ...),
    /// from the platform's Prometheus `/metrics`.
    pub async fn claim_count(&self, pool: &str, outcome: &str) -> anyhow::Result<u64> {
        let text = self
            .http
            .get(&self.metrics)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let n = counter_value(
            &text,
            "sandpool_claim_duration_seconds_count",
            &[("pool", pool), ("outcome", outcome)],
        );
        Ok(n as u64)
    }
}

/// execd's `POST /command` of `command` at `url` (with `token`, if any),
/// its event stream read to its end; an error starting with `failed` (and
/// showing the stream) when it has no `execution_complete` event.
pub async fn run_command(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    command: &str,
    failed: &str,
) -> anyhow::Result<()> {
    let mut req = http.post(url).json(&json!({ "command": command }));
    if let Some(token) = token {
        req = req.header("X-EXECD-ACCESS-TOKEN", token);
    }
    let mut s = req.send().await?.bytes_stream();
    let mut all = Vec::new();
    while let Some(c) = s.next().await {
        all.extend_from_slice(&c?);
    }
    if !all.windows(18).any(|w| w == b"execution_complete") {
        bail!("{failed}: {}", String::from_utf8_lossy(&all));
    }
    Ok(())
}

/// Sum of the samples of `metric` whose labels include all of `labels`
/// (Prometheus text format; 0 when there are none).
fn counter_value(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(metric)?.strip_prefix('{')?.split_once('}'))
        .filter(|(set, _)| {
            labels
                .iter()
                .all(|(k, v)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, value)| value.split_whitespace().next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_args_have_every_port_and_pool() {
        let spec = PlatformSpec {
            sandpool: "/opt/sp/sandpool".into(),
            runtime_bin: None,
            name: "t".into(),
            bridge: "spb9".into(),
            subnet: "10.0.9.0/24".into(),
            pools: vec!["a:busybox:1:2:0:4".into(), "b:busybox:1:1:0:2".into()],
            max_sandboxes: None,
        };
        let args = serve_args(
            &spec,
            Ports {
                gateway: 1,
                agent: 2,
                scheduler: 3,
                metrics: 4,
            },
            Path::new("/d"),
        );
        let args: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
        let value = |flag: &str| {
            args.windows(2)
                .filter(|w| w[0] == flag)
                .map(|w| w[1])
                .collect::<Vec<_>>()
        };
        assert_eq!(&args[..2], ["serve", "--cleanup-on-exit"]);
        assert_eq!(value("--listen"), ["127.0.0.1:1"]);
        assert_eq!(value("--metrics-listen"), ["127.0.0.1:4"]);
        assert_eq!(value("--pool"), ["a:busybox:1:2:0:4", "b:busybox:1:1:0:2"]);
        assert_eq!(value("--runtime-bin"), ["/opt/sp/sandpool-runtime-static"]);
        assert_eq!(value("--api-key"), [API_KEY]);
    }

    #[test]
    fn counter_value_matches_label_sets() {
        let text = "# TYPE sandpool_claim_duration_seconds histogram\n\
            sandpool_claim_duration_seconds_count{pool=\"bench\",outcome=\"warm\"} 12\n\
            sandpool_claim_duration_seconds_count{pool=\"bench\",outcome=\"cold\"} 3\n\
            sandpool_claim_duration_seconds_count{pool=\"bench2\",outcome=\"cold\"} 5\n\
            sandpool_claim_duration_seconds_sum{pool=\"bench\",outcome=\"cold\"} 0.9\n";
        let m = "sandpool_claim_duration_seconds_count";
        assert_eq!(
            counter_value(text, m, &[("pool", "bench"), ("outcome", "cold")]),
            3.0
        );
        assert_eq!(counter_value(text, m, &[("outcome", "cold")]), 8.0);
        assert_eq!(counter_value(text, m, &[("pool", "none")]), 0.0);
    }
}
