//! E2B `GET /sandboxes/{id}/metrics?start=&end=`: the sandbox's resource
//! use in a time range (unix seconds; by default from the sandbox's start to
//! its end, as upstream). sandpool samples a sandbox when asked, so a range
//! holds at most one sample: the current one, when the range covers now
//! and the sandbox runs.

use axum::{
    Json,
    extract::{Path, State},
};
use chrono::{SecondsFormat, Utc};
use sandpool_proto::v1 as pb;
use serde_json::{Value, json};

use super::{E2bError, Result, get_claim};
use crate::{Gateway, error::ApiError, extract};

/// The `[start, end]` range (unix seconds) query `q` asks about `c` for;
/// 400 for a value that is not whole seconds or a start after the end.
fn range(q: &[(String, String)], c: &pb::Claim) -> std::result::Result<(i64, i64), ApiError> {
    let param = |name: &str| -> std::result::Result<Option<i64>, ApiError> {
        q.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| {
                v.trim().parse::<i64>().map_err(|_| {
                    ApiError::Invalid(format!("{name} must be unix seconds, got {v:?}"))
                })
            })
            .transpose()
    };
    let start = param("start")?.unwrap_or(c.created_unix_ms.div_euclid(1000));
    let end = match param("end")? {
        Some(e) => e,
        None if c.expires_unix_ms > 0 => c.expires_unix_ms.div_euclid(1000),
        None => i64::MAX,
    };
    if start > end {
        return Err(ApiError::Invalid(format!(
            "Invalid time range for metrics: start {start} is after end {end}"
        )));
    }
    Ok((start, end))
}

pub(super) async fn metrics(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    extract::Query(q, _): extract::Query<E2bError>,
) -> Result<Json<Value>> {
    let c = get_claim(&gw, &id).await?;
    let (start, end) = range(&q, &c)?;
    let now = Utc::now();
    // a paused sandbox is not sampled: it has no current sample
    let paused = c.state == pb::ClaimState::Paused as i32;
    if paused || !(start..=end).contains(&now.timestamp()) {
        return Ok(Json(json!([])));
    }
    let sb = c.sandbox.unwrap_or_default();
    let fetched = async {
        gw.http
            .get(format!("http://{}:{}/metrics", sb.ip, sb.runtime_port))
            .header("x-execd-access-token", sb.access_token)
            .send()
            .await?
            .json::<Value>()
            .await
    };
    let m = fetched
        .await
        .map_err(ApiError::sandbox_unreachable(format!("sandbox {id}")))?;
    let mib = |k: &str| (m[k].as_f64().unwrap_or(0.0) * 1048576.0) as u64;
    Ok(Json(json!([{
        "timestamp": now.to_rfc3339_opts(SecondsFormat::Secs, true),
        "timestampUnix": now.timestamp(),
        "cpuCount": m["cpu_count"].as_f64().unwrap_or(0.0) as u64,
        "cpuUsedPct": m["cpu_used_pct"].as_f64().unwrap_or(0.0),
        "memUsed": mib("mem_used_mib"),
        "memTotal": mib("mem_total_mib"),
        "memCache": 0,
        "diskUsed": 0,
        "diskTotal": 0,
    }])))
}
