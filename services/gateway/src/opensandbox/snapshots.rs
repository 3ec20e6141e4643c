//! `/v1/sandboxes/{id}/snapshots` and `/v1/snapshots`: checkpoints of
//! running sandboxes: memory and files where the platform keeps memory
//! (standalone), else files only (Kubernetes mode: a SandboxSnapshot, which
//! is what upstream's snapshot is).

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use sandpool_proto::v1 as pb;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Paging, Result};
use crate::{Gateway, error::ApiError, extract, rfc3339_ms};

#[derive(Deserialize, Default)]
pub(super) struct SnapshotRequest {
    #[serde(default)]
    name: Option<String>,
}

fn snapshot_json(c: &pb::CheckpointInfo) -> Value {
    let mut v = json!({
        "id": c.checkpoint_id,
        "sandboxId": if c.owner.is_empty() { &c.sandbox_id } else { &c.owner },
        "status": { "state": "Ready", "lastTransitionAt": rfc3339_ms(c.created_unix_ms) },
        "createdAt": rfc3339_ms(c.created_unix_ms),
        "sizeBytes": c.size_bytes,
        "image": { "uri": c.image },
    });
    if !c.name.is_empty() {
        v["name"] = json!(c.name);
    }
    if !c.pool.is_empty() {
        v["extensions"] = json!({ "poolRef": c.pool });
    }
    v
}

/// `POST /sandboxes/{id}/snapshots`: a checkpoint of the running sandbox
/// (memory if the platform can, and files), which goes on running.
pub async fn create_snapshot(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    extract::JsonOrEmpty(r, _): extract::JsonOrEmpty<SnapshotRequest>,
) -> Result<Response> {
    let info = gw
        .checkpoint_claim(pb::CheckpointClaimRequest {
            claim_id: id,
            leave_running: true,
            name: r.name.unwrap_or_default(),
            filesystem_only: false,
            memory_if_supported: true,
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(snapshot_json(&info))).into_response())
}

pub async fn get_snapshot(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let all = gw.list_checkpoints().await?;
    all.iter()
        .find(|c| c.checkpoint_id == id)
        .map(|c| Json(snapshot_json(c)))
        .ok_or(ApiError::SnapshotNotFound(id))
}

pub async fn list_snapshots(
    State(gw): State<Gateway>,
    extract::Query(q, _): extract::Query,
) -> Result<Json<Value>> {
    let (mut sandbox, mut name, mut state) = (None, None, None);
    let mut pages = Paging::default();
    for (k, v) in q {
        match k.as_str() {
            "sandboxId" => sandbox = Some(v),
            "name" => name = Some(v),
            "state" => state = Some(v),
            _ => pages.param(&k, &v)?,
        }
    }
    let items: Vec<Value> = gw
        .list_checkpoints()
        .await?
        .iter()
        .map(snapshot_json)
        .filter(|s| {
            sandbox
                .as_ref()
                .is_none_or(|x| s["sandboxId"] == x.as_str())
        })
        .filter(|s| name.as_ref().is_none_or(|x| s["name"] == x.as_str()))
        .filter(|_| {
            state
                .as_ref()
                .is_none_or(|x| x.eq_ignore_ascii_case("Ready"))
        })
        .collect();
    Ok(Json(pages.json(items)))
}

pub async fn delete_snapshot(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    gw.delete_checkpoint(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_shape_has_sdk_required_fields() {
        let c = pb::CheckpointInfo {
            checkpoint_id: "ck-1".into(),
            sandbox_id: "sb-1".into(),
            owner: "claim-1".into(),
            created_unix_ms: 1_700_000_000_000,
            name: "before-step-3".into(),
            ..Default::default()
        };
        let v = snapshot_json(&c);
        for k in ["id", "sandboxId", "status", "createdAt"] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert_eq!(
            (
                v["sandboxId"].as_str(),
                v["status"]["state"].as_str(),
                v["name"].as_str()
            ),
            (Some("claim-1"), Some("Ready"), Some("before-step-3"))
        );
    }
}
