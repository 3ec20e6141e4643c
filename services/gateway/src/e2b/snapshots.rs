//! E2B snapshots and fork on sandpool's checkpoints (memory and files of a
//! checkpointable runsc sandbox): `POST /sandboxes/{id}/snapshots`,
//! `GET /snapshots`, `DELETE /templates/{id}` (the SDK's snapshot delete),
//! a create whose `templateID` is a snapshot, and `POST /sandboxes/{id}/fork`.
//!
//! A snapshot's `snapshotID` is the checkpoint id; `names` holds its name when
//! it was given one. A sandbox of any other pool is refused with the node's
//! reason (501: it must come from a checkpointable runsc template).

use std::collections::BTreeMap;

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use sandpool_proto::v1 as pb;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{E2bError, JsonBody, NewClaim, Result, sandbox_json};
use crate::{Gateway, error::ApiError, extract};

/// E2B's default and largest fork count; its default fork timeout (s).
const FORK_DEFAULT_TIMEOUT_S: i64 = 15;
const MAX_FORK_COUNT: i64 = 20;
const DEFAULT_LIST_LIMIT: usize = 100;

#[derive(Deserialize, Default)]
pub(super) struct SnapshotRequest {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    memory: Option<bool>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

fn refuse_other(other: &BTreeMap<String, Value>, what: &str) -> std::result::Result<(), ApiError> {
    match other.iter().find(|(_, v)| !v.is_null()) {
        Some((k, _)) => Err(ApiError::Unsupported(format!("the {what} field {k}"))),
        None => Ok(()),
    }
}

/// `POST /sandboxes/{id}/pause`'s body (E2B's `SandboxPauseRequest`).
#[derive(Deserialize, Default)]
pub(super) struct PauseRequest {
    #[serde(default)]
    memory: Option<bool>,
    #[serde(default, rename = "requireHealthyGuest")]
    require_healthy_guest: Option<bool>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// Whether pause body `r` asks for a filesystem-only pause (`memory: false`:
/// the processes stop, the files stay, a resume reboots from them); the
/// default freezes the sandbox with its memory. `requireHealthyGuest: true`
/// (E2B refuses the pause while envd does not answer) is 501 naming the
/// field, as is any other field.
pub(super) fn check_pause(r: &PauseRequest) -> std::result::Result<bool, ApiError> {
    refuse_other(&r.other, "pause")?;
    if r.require_healthy_guest == Some(true) {
        return Err(ApiError::Unsupported(
            "requireHealthyGuest: true (sandpool's pause does not check the guest agent first)"
                .into(),
        ));
    }
    Ok(r.memory == Some(false))
}

/// E2B's `SnapshotInfo` of checkpoint `c`.
pub(super) fn snapshot_info(c: &pb::CheckpointInfo) -> Value {
    let names: Vec<&str> = if c.name.is_empty() {
        Vec::new()
    } else {
        vec![c.name.as_str()]
    };
    json!({"snapshotID": c.checkpoint_id, "names": names})
}

/// Whether `reference` names checkpoint `c`: its id or its name, with or
/// without a `namespace/` and a `:tag`.
fn names(c: &pb::CheckpointInfo, reference: &str) -> bool {
    let bare = reference.rsplit('/').next().unwrap_or_default();
    let untagged = bare.split(':').next().unwrap_or_default();
    [reference, bare, untagged]
        .iter()
        .any(|r| !r.is_empty() && (c.checkpoint_id == *r || c.name == *r))
}

/// The caller's checkpoint `reference` names (see [`names`]).
pub(super) async fn find_snapshot(gw: &Gateway, reference: &str) -> Result<pb::CheckpointInfo> {
    let all = gw.list_checkpoints().await?;
    all.into_iter()
        .find(|c| names(c, reference))
        .ok_or_else(|| E2bError(ApiError::SnapshotNotFound(reference.to_string())))
}

/// Checkpoint claim `id` for `what` (a snapshot or a fork), of its root
/// file system only when `filesystem_only` (E2B `memory: false`); a sandbox
/// that cannot be checkpointed is refused with the node's reason and the
/// way out.
async fn checkpoint(
    gw: &Gateway,
    id: &str,
    name: String,
    what: &str,
    filesystem_only: bool,
) -> Result<pb::CheckpointInfo> {
    let req = pb::CheckpointClaimRequest {
        claim_id: id.to_string(),
        leave_running: true,
        name,
        filesystem_only,
        // E2B's memory default is an explicit memory snapshot
        memory_if_supported: false,
    };
    gw.checkpoint_claim(req).await.map_err(|e| match e {
        ApiError::NotImplemented(why) if filesystem_only => {
            E2bError(ApiError::NotImplemented(format!(
                "memory: false (a filesystem-only {what} of sandbox {id}): {why}"
            )))
        }
        ApiError::NotImplemented(why) => E2bError(ApiError::NotImplemented(format!(
            "{what} of sandbox {id}: only a sandbox created from a checkpointable runsc template can be snapshotted ({why})"
        ))),
        e => E2bError(e),
    })
}

/// `POST /sandboxes/{id}/snapshots`: a checkpoint of the running sandbox,
/// which goes on running.
pub(super) async fn create(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    extract::JsonOrEmpty(r, _): JsonBody<SnapshotRequest>,
) -> Result<Response> {
    refuse_other(&r.other, "snapshot")?;
    let name = r.name.unwrap_or_default();
    if !name.is_empty() && find_snapshot(&gw, &name).await.is_ok() {
        return Err(ApiError::Unsupported(format!(
            "name {name:?}: a snapshot of that name exists, and sandpool does not add builds to a snapshot (delete it or pick another name)"
        ))
        .into());
    }
    // memory: false is a filesystem-only checkpoint (Kubernetes mode's)
    let fs_only = r.memory == Some(false);
    let info = checkpoint(&gw, &id, name, "snapshot", fs_only).await?;
    Ok((StatusCode::CREATED, Json(snapshot_info(&info))).into_response())
}

/// `GET /snapshots?sandboxID&name&limit&nextToken`: the caller's snapshots,
/// newest first; `x-next-token` when there are more.
pub(super) async fn list(
    State(gw): State<Gateway>,
    extract::Query(q, _): extract::Query<E2bError>,
) -> Result<Response> {
    let (mut sandbox, mut name, mut limit, mut from) = (None, None, DEFAULT_LIST_LIMIT, 0);
    for (k, v) in q {
        match k.as_str() {
            "sandboxID" => sandbox = Some(v),
            "name" => name = Some(v),
            "limit" => {
                limit =
                    v.parse().ok().filter(|l| *l > 0).ok_or_else(|| {
                        ApiError::Invalid(format!("limit {v:?}: a positive integer"))
                    })?;
            }
            "nextToken" => {
                from = v
                    .parse()
                    .map_err(|_| ApiError::Invalid(format!("nextToken {v:?} is not ours")))?;
            }
            _ => return Err(ApiError::Invalid(format!("unknown query parameter {k}")).into()),
        }
    }
    let mut all: Vec<pb::CheckpointInfo> = gw
        .list_checkpoints()
        .await?
        .into_iter()
        .filter(|c| {
            sandbox
                .as_ref()
                .is_none_or(|s| c.owner == *s || c.sandbox_id == *s)
        })
        .filter(|c| name.as_ref().is_none_or(|n| names(c, n)))
        .collect();
    all.sort_by(|a, b| {
        (b.created_unix_ms, &b.checkpoint_id).cmp(&(a.created_unix_ms, &a.checkpoint_id))
    });
    let page: Vec<Value> = all
        .iter()
        .skip(from)
        .take(limit)
        .map(snapshot_info)
        .collect();
    let mut r = Json(page).into_response();
    let next = from.saturating_add(limit);
    if next < all.len()
        && let Ok(h) = HeaderValue::from_str(&next.to_string())
    {
        r.headers_mut().insert("x-next-token", h);
    }
    Ok(r)
}

/// `DELETE /templates/{id}`: the SDK's snapshot delete (a snapshot is a
/// template upstream). Only snapshots are templates one can delete here.
pub(super) async fn delete(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let ck = find_snapshot(&gw, &id).await?;
    gw.delete_checkpoint(&ck.checkpoint_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A create whose `templateID` names snapshot `ck`: its sandbox restored.
pub(super) async fn create_from(
    gw: &Gateway,
    headers: &HeaderMap,
    ck: &pb::CheckpointInfo,
    new: NewClaim,
) -> Result<Response> {
    let c = new.claim;
    let refused = [
        (!new.envs.is_empty(), "envVars"),
        (c.egress.is_some(), "network / allow_internet_access"),
        (new.ingress.private, "network.allowPublicTraffic"),
        (
            new.ingress.mask_request_host.is_some(),
            "network.maskRequestHost",
        ),
        (new.transforms.is_some(), "network.rules"),
        (!c.mounts.is_empty(), super::CSI_VOLUME_KEY),
        (!c.image.is_empty(), super::IMAGE_KEY),
    ];
    if let Some((_, field)) = refused.iter().find(|(set, _)| *set) {
        return Err(ApiError::Invalid(format!(
            "{field} cannot be set on a sandbox from snapshot {} (its processes and network are the snapshot's)",
            ck.checkpoint_id
        ))
        .into());
    }
    let mut claims = gw
        .restore_checkpoint(pb::RestoreCheckpointRequest {
            checkpoint_id: ck.checkpoint_id.clone(),
            count: 1,
            ttl_seconds: c.ttl_seconds,
            metadata: c.metadata,
            ..Default::default()
        })
        .await?;
    let c = claims
        .pop()
        .ok_or_else(|| ApiError::Internal("restore made no sandbox".into()))?;
    Ok((StatusCode::CREATED, Json(sandbox_json(&c, headers))).into_response())
}

#[derive(Deserialize, Default)]
pub(super) struct ForkRequest {
    #[serde(default, deserialize_with = "crate::timeout::whole_seconds")]
    timeout: Option<i64>,
    #[serde(default)]
    count: Option<i64>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// `POST /sandboxes/{id}/fork`: one checkpoint of the running sandbox (which
/// goes on), `count` sandboxes restored from it. The checkpoint stays, named
/// `fork-of-{id}` (listed, deletable), as restored sandboxes come from it.
pub(super) async fn fork(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    headers: HeaderMap,
    extract::JsonOrEmpty(r, _): JsonBody<ForkRequest>,
) -> Result<Response> {
    refuse_other(&r.other, "fork")?;
    let count = r.count.unwrap_or(1);
    if !(1..=MAX_FORK_COUNT).contains(&count) {
        return Err(ApiError::Invalid(format!(
            "count must be between 1 and {MAX_FORK_COUNT}, got {count}"
        ))
        .into());
    }
    let timeout = match r.timeout.unwrap_or(FORK_DEFAULT_TIMEOUT_S) {
        t if t > 0 => gw.check_timeout("timeout", t as u64)?,
        t => return Err(ApiError::Invalid(format!("timeout must be positive, got {t}")).into()),
    };
    let info = checkpoint(&gw, &id, format!("fork-of-{id}"), "fork", false).await?;
    // each fork is restored on its own, so one that fails (no room, a node
    // error) leaves the others running: one result per fork, as E2B's
    let restores = (0..count).map(|_| {
        gw.restore_checkpoint(pb::RestoreCheckpointRequest {
            checkpoint_id: info.checkpoint_id.clone(),
            count: 1,
            ttl_seconds: timeout,
            metadata: Default::default(),
            ..Default::default()
        })
    });
    let results: Vec<Value> = futures_util::future::join_all(restores)
        .await
        .into_iter()
        .map(|r| match r.map(|mut claims| claims.pop()) {
            Ok(Some(c)) => json!({"sandbox": sandbox_json(&c, &headers)}),
            Ok(None) => fork_error(&ApiError::Internal("restore made no sandbox".into())),
            Err(e) => fork_error(&e),
        })
        .collect();
    Ok((StatusCode::CREATED, Json(results)).into_response())
}

/// One fork's failure, as E2B's fork result carries it.
fn fork_error(e: &ApiError) -> Value {
    json!({"error": {"code": e.status().as_u16(), "message": e.to_string()}})
}

#[cfg(test)]
mod tests {
    #[test]
    fn pause_bodies_sandpool_cannot_honour_are_refused_naming_the_field() {
        let parse = |v: Value| -> PauseRequest { serde_json::from_value(v).expect("body") };
        for (ok, filesystem_only) in [
            (serde_json::json!({}), false),
            (serde_json::json!({"memory": true}), false),
            (
                serde_json::json!({"memory": null, "requireHealthyGuest": false}),
                false,
            ),
            // a filesystem-only pause
            (serde_json::json!({"memory": false}), true),
        ] {
            assert_eq!(
                check_pause(&parse(ok.clone())).expect("accepted"),
                filesystem_only,
                "{ok}"
            );
        }
        for (bad, names) in [
            (
                serde_json::json!({"requireHealthyGuest": true}),
                "requireHealthyGuest",
            ),
            (serde_json::json!({"onResume": "reboot"}), "onResume"),
        ] {
            let e = check_pause(&parse(bad.clone())).expect_err("refused");
            assert!(matches!(e, ApiError::Unsupported(_)), "{bad}: {e}");
            assert!(e.to_string().contains(names), "{bad}: {e}");
        }
    }

    use super::*;

    #[test]
    fn snapshot_info_names_only_a_named_snapshot() {
        let mut c = pb::CheckpointInfo {
            checkpoint_id: "ck-1".into(),
            ..Default::default()
        };
        assert_eq!(
            snapshot_info(&c),
            json!({"snapshotID": "ck-1", "names": []})
        );
        c.name = "before".into();
        assert_eq!(
            snapshot_info(&c),
            json!({"snapshotID": "ck-1", "names": ["before"]})
        );
    }
}
