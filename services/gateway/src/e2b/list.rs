//! E2B sandbox lists: `GET /sandboxes` (v1) and `GET /v2/sandboxes` (paginated).

use std::collections::BTreeMap;

use axum::{
    Json,
    extract::State,
    http::HeaderValue,
    response::{IntoResponse, Response},
};
use sandpool_proto::v1 as pb;
use serde_json::Value;

use super::{E2bError, Result, detail_json, state};
use crate::{Gateway, error::ApiError, extract};

/// Filtered claims: `metadata` (url-encoded `k=v&k2=v2`), `state` (comma list).
async fn filtered(gw: &Gateway, q: &[(String, String)]) -> Result<Vec<pb::Claim>> {
    let mut metadata = BTreeMap::new();
    let mut states: Vec<String> = Vec::new();
    for (k, v) in q {
        match k.as_str() {
            "metadata" | "query" => {
                for (mk, mv) in form_urlencoded::parse(v.as_bytes()) {
                    metadata.insert(mk.into_owned(), mv.into_owned());
                }
            }
            "state" => states.extend(
                v.split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty()),
            ),
            _ => {}
        }
    }
    for s in &states {
        if s != "running" && s != "paused" {
            return Err(ApiError::Invalid(format!("unknown state {s:?} (running, paused)")).into());
        }
    }
    let claims = gw.claims_with_metadata(metadata).await?;
    Ok(claims
        .into_iter()
        .filter(|c| states.is_empty() || states.iter().any(|s| s == state(c)))
        .collect())
}

pub(super) async fn list_v1(
    State(gw): State<Gateway>,
    extract::Query(q, _): extract::Query<E2bError>,
) -> Result<Json<Value>> {
    let claims = filtered(&gw, &q).await?;
    // a listed sandbox has no network (upstream's ListedSandbox)
    let listed = claims.iter().map(|c| detail_json(c, false));
    Ok(Json(Value::Array(listed.collect())))
}

pub(super) async fn list_v2(
    State(gw): State<Gateway>,
    extract::Query(q, _): extract::Query<E2bError>,
) -> Result<Response> {
    let limit: usize = match q.iter().find(|(k, _)| k == "limit") {
        Some((_, v)) => v
            .parse()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::Invalid(format!("limit must be 1..=1000, got {v}")))?,
        None => 100,
    };
    let start: usize = match q.iter().find(|(k, _)| k == "nextToken") {
        Some((_, v)) if !v.is_empty() => v
            .parse()
            .map_err(|_| ApiError::Invalid(format!("bad nextToken {v}")))?,
        _ => 0,
    };
    let claims = filtered(&gw, &q).await?;
    let page: Vec<Value> = claims
        .iter()
        .skip(start)
        .take(limit)
        .map(|c| detail_json(c, false))
        .collect();
    let next = start + page.len();
    let mut r = Json(Value::Array(page)).into_response();
    if next < claims.len()
        && let Ok(v) = HeaderValue::from_str(&next.to_string())
    {
        r.headers_mut().insert("x-next-token", v);
    }
    Ok(r)
}
