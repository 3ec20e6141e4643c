//! E2B's `readyCmd`: a template's sandbox is ready once this shell command
//! exits 0 inside it (after its start command began). sandpool injects the
//! start command when a sandbox is handed out, so the command is polled
//! then: once when a build finishes (a build whose readyCmd never succeeds
//! fails, and its template is removed), and on every create from the
//! template (a create whose readyCmd never succeeds fails and its sandbox
//! is released). The command is kept as a label of the pool's template.

use std::time::{Duration, Instant};

use sandpool_proto::v1 as pb;
use tokio_stream::StreamExt;

use crate::opensandbox;

/// The pool template label holding a template's readyCmd.
pub(crate) const READY_LABEL: &str = sandpool_core::READY_CMD_LABEL;

/// How long a readyCmd may keep failing at the end of a build before the
/// build fails.
pub(crate) const READY_BOUND: Duration = Duration::from_secs(60);

/// How long a create waits for its sandbox's readyCmd: within the SDKs'
/// default request timeout (60 s), so the caller gets the reason.
pub(crate) const CREATE_READY_BOUND: Duration = Duration::from_secs(30);

/// One run of the command may take this long before it counts as a failure.
const ATTEMPT: Duration = Duration::from_secs(10);

/// Pause between two runs.
const PAUSE: Duration = Duration::from_millis(250);

/// The readyCmd of a pool's template, if it has one.
pub(crate) fn ready_cmd(pool: &pb::Pool) -> Option<String> {
    pool.template
        .as_ref()?
        .labels
        .get(READY_LABEL)
        .filter(|c| !c.trim().is_empty())
        .cloned()
}

/// Run `cmd` in sandbox `sb` until it exits 0, for at most `bound`; the
/// error says why the last run failed.
pub(crate) async fn wait(sb: &pb::SandboxInfo, cmd: &str, bound: Duration) -> Result<(), String> {
    let started = Instant::now();
    let mut runs = 0u32;
    loop {
        runs += 1;
        let last = match run_once(sb, cmd).await {
            Ok(0) => return Ok(()),
            Ok(code) => format!("exit code {code}"),
            Err(e) => e,
        };
        if started.elapsed() + PAUSE >= bound {
            return Err(format!(
                "readyCmd {cmd:?} did not exit 0 within {}s ({runs} runs; last: {last})",
                bound.as_secs()
            ));
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// One run of `cmd` through the sandbox runtime's Exec: its exit code.
async fn run_once(sb: &pb::SandboxInfo, cmd: &str) -> Result<i32, String> {
    let port =
        opensandbox::sandbox_port(sb, opensandbox::RUNTIME_PORT).map_err(|e| e.to_string())?;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}:{port}", sb.ip))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("runtime unreachable: {e}"))?;
    let start = pb::ExecInput {
        input: Some(pb::exec_input::Input::Start(pb::ExecStart {
            command: cmd.to_string(),
            timeout_ms: u64::try_from(ATTEMPT.as_millis()).unwrap_or(u64::MAX),
            ..Default::default()
        })),
    };
    let mut req = tonic::Request::new(tokio_stream::iter([start]));
    if let Ok(t) = sb.access_token.parse() {
        req.metadata_mut()
            .insert(sandpool_proto::ACCESS_TOKEN_METADATA, t);
    }
    let mut out = pb::runtime_client::RuntimeClient::new(ch)
        .exec(req)
        .await
        .map_err(|s| format!("exec: {}", s.message()))?
        .into_inner();
    let deadline = ATTEMPT + Duration::from_secs(2);
    let exited = tokio::time::timeout(deadline, async {
        while let Some(m) = out.next().await {
            let m = m.map_err(|s| format!("exec: {}", s.message()))?;
            if let Some(pb::exec_output::Output::Exited(e)) = m.output {
                return Ok(if e.timed_out { -1 } else { e.exit_code });
            }
        }
        Err("exec ended without an exit".to_string())
    })
    .await;
    exited.unwrap_or_else(|_| Err(format!("no exit within {}s", deadline.as_secs())))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn the_ready_cmd_is_a_template_label() {
        let mut pool = pb::Pool {
            template: Some(pb::SandboxTemplate {
                labels: HashMap::from([(READY_LABEL.to_string(), "test -e /ok".to_string())]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(ready_cmd(&pool).as_deref(), Some("test -e /ok"));
        if let Some(t) = pool.template.as_mut() {
            t.labels.insert(READY_LABEL.into(), "  ".into());
        }
        assert_eq!(ready_cmd(&pool), None, "blank is none");
        assert_eq!(ready_cmd(&pb::Pool::default()), None);
    }

    #[tokio::test]
    async fn an_unreachable_sandbox_fails_within_the_bound_naming_the_command() {
        let sb = pb::SandboxInfo {
            ip: "127.0.0.1".into(),
            runtime_port: 1,
            ..Default::default()
        };
        let t0 = Instant::now();
        let e = wait(&sb, "true", Duration::from_millis(600))
            .await
            .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(
            e.contains("readyCmd \"true\" did not exit 0 within 0s") && e.contains("unreachable"),
            "{e}"
        );
    }
}
