//! Idle auto-pause in Kubernetes mode (`sandpool controller
//! --idle-pause-after`), as standalone's scheduler does it: every
//! [`ROUND`] the leading controller asks the runtime in each running claim's
//! pod for its activity (`Health`: running commands, milliseconds since its
//! last request) and pauses the claims idle for the limit exactly as a REST
//! pause does (the pod frozen by the node agent of its node, what is left of
//! the TTL set aside), with a `PausedIdle` event. They are resumed through
//! the APIs (OpenSandbox `resume`, E2B `connect`, traffic to an E2B
//! `autoResume` sandbox). Paused claims are not asked (a frozen runtime
//! cannot answer), nor claims whose pod is not Ready.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ListParams};
use sandpool_core::claim::{ClaimState, is_idle};

use crate::batch::expire::pause_claim;
use crate::context::Context;
use crate::crd::BatchSandbox;
use crate::error::Result;
use crate::kube_scheduler::{CLAIM_LABEL, claim_pod, core_state};

/// How often the claims' activity is read.
pub const ROUND: Duration = Duration::from_secs(1);

/// Pause the claims of `ns` idle for `limit`, every [`ROUND`], for ever.
pub async fn run(ctx: Arc<Context>, ns: String, limit: Duration) {
    tracing::info!(limit_s = limit.as_secs(), "idle auto-pause on");
    loop {
        tokio::time::sleep(ROUND).await;
        if let Err(e) = sweep(&ctx, &ns, limit).await {
            tracing::warn!(error = %e, "idle auto-pause round failed");
        }
    }
}

/// One round: pause every running claim of `ns` idle for `limit`; the
/// claims paused.
pub async fn sweep(ctx: &Context, ns: &str, limit: Duration) -> Result<Vec<String>> {
    let batches: Api<BatchSandbox> = ctx.api(ns);
    let claims = batches
        .list(&ListParams::default().labels(&format!("{CLAIM_LABEL}=true")))
        .await?;
    let mut paused = Vec::new();
    for b in claims.items {
        let name = b.name_any();
        let pod = match claim_pod(&ctx.api(ns), &b).await {
            Ok(Some(pod)) => pod,
            Ok(None) => continue,
            Err(s) => {
                tracing::debug!(claim = %name, error = s.message(), "idle check skipped");
                continue;
            }
        };
        if core_state(&b, Some(&pod)) != ClaimState::Bound {
            continue;
        }
        let Some(h) = ctx.tasks.health(&pod).await else {
            continue;
        };
        if !is_idle(h.running_commands, h.idle_ms, limit) {
            continue;
        }
        match pause_claim(&b, Some(&pod), ctx, ns, None).await {
            Ok(()) => {
                let note = format!(
                    "paused after {} s without activity (--idle-pause-after {} s); resume it through the API",
                    h.idle_ms / 1000,
                    limit.as_secs()
                );
                ctx.event(&b, false, "PausedIdle", note).await;
                paused.push(name);
            }
            Err(s) => {
                tracing::warn!(claim = %name, error = s.message(), "idle auto-pause failed");
            }
        }
    }
    Ok(paused)
}
