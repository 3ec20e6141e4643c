//! E2B `GET /sandboxes/{id}/metrics`: the sandbox's resource use.

use axum::{
    Json,
    extract::{Path, State},
};
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

use super::{Result, get_claim};
use crate::{Gateway, error::ApiError};

pub(super) async fn metrics(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let c = get_claim(&gw, &id).await?;
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
    let now = Utc::now();
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
