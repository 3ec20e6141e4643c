//! E2B templates are sandpool pools: `GET /templates`, `GET /templates/{id}`
//! and `GET /templates/aliases/{alias}` show every pool as a template in
//! E2B's `Template` / `TemplateWithBuilds` / `TemplateAliasResponse` shapes.
//! A pool made by a template build (see [`super::builds`]) shows that
//! build; any other pool one ready build standing for its image.

use std::collections::BTreeMap;

use axum::{
    Json,
    extract::{Path, State},
    response::{IntoResponse, Response},
};
use sandpool_proto::v1 as pb;
use serde_json::{Value, json};

use super::{ENVD_VERSION, Result, builds::BuildRecord};
use crate::{Gateway, error::ApiError, rfc3339_ms};

/// CPU count of a Kubernetes cpu quantity (`"500m"` → 1, `"2"` → 2); an
/// unlimited (empty or unreadable) one is this host's CPU count.
pub(crate) fn cpu_count(q: &str) -> u64 {
    let q = q.trim();
    let millis = match q.strip_suffix('m') {
        Some(m) => m.parse::<u64>().ok(),
        None => q
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0 && *v < 1.0e6)
            .map(|v| (v * 1000.0).round() as u64),
    };
    match millis {
        Some(m) if m > 0 => m.div_ceil(1000),
        _ => std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
    }
}

/// MiB of a Kubernetes memory quantity (`"512Mi"`, `"1G"`); 0 when unlimited.
pub(crate) fn memory_mb(q: &str) -> u64 {
    let q = q.trim();
    let split = q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len());
    let (num, unit) = q.split_at(split);
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1_048_576.0,
        "Gi" => 1_073_741_824.0,
        "Ti" => 1_099_511_627_776.0,
        _ => return 0,
    };
    match num.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => ((v * mult) / 1_048_576.0).ceil() as u64,
        _ => 0,
    }
}

/// A MiB count as a Kubernetes memory quantity (`512` → `"512Mi"`; 0 → unlimited).
pub(crate) fn memory_quantity(mb: u64) -> String {
    if mb == 0 {
        String::new()
    } else {
        format!("{mb}Mi")
    }
}

/// How the pools' claims add up per pool: how many are known, and when the
/// newest started (unix ms).
#[derive(Default, Clone, Copy)]
pub(crate) struct Spawns {
    count: u64,
    last_ms: Option<i64>,
}

fn spawns(claims: &[pb::Claim]) -> BTreeMap<String, Spawns> {
    let mut m: BTreeMap<String, Spawns> = BTreeMap::new();
    for c in claims {
        let s = m.entry(c.pool.clone()).or_default();
        s.count += 1;
        s.last_ms = s.last_ms.max(Some(c.created_unix_ms));
    }
    m
}

/// One pool as an E2B `Template` (with its `builds` when `with_builds`).
/// `started_ms` stands for the times a pool does not record.
pub(crate) fn template_json(
    pool: &pb::Pool,
    build: Option<&BuildRecord>,
    spawned: Spawns,
    started_ms: i64,
    with_builds: bool,
) -> Value {
    let t = pool.template.clone().unwrap_or_default();
    let r = t.resources.unwrap_or_default();
    let (cpu, mem) = (cpu_count(&r.cpu), memory_mb(&r.memory));
    let (build_id, created, updated) = match build {
        Some(b) => (b.build_id.clone(), b.created_ms, b.updated_ms),
        None => (pool_build_id(pool), started_ms, started_ms),
    };
    let mut v = json!({
        "templateID": pool.name,
        "buildID": build_id,
        "cpuCount": cpu,
        "memoryMB": mem,
        "diskSizeMB": 0,
        "public": false,
        "aliases": [pool.name],
        "names": [pool.name],
        "createdAt": rfc3339_ms(created),
        "updatedAt": rfc3339_ms(updated),
        "createdBy": null,
        "lastSpawnedAt": spawned.last_ms.map(rfc3339_ms),
        "spawnCount": spawned.count,
        "buildCount": 1,
        "envdVersion": ENVD_VERSION,
        "buildStatus": "ready",
    });
    if with_builds {
        v["builds"] = json!([{
            "buildID": build_id,
            "status": "ready",
            "createdAt": rfc3339_ms(created),
            "updatedAt": rfc3339_ms(updated),
            "finishedAt": rfc3339_ms(updated),
            "cpuCount": cpu,
            "memoryMB": mem,
            "diskSizeMB": 0,
            "envdVersion": ENVD_VERSION,
        }]);
    }
    v
}

/// A stable UUID-shaped build id for a pool that was not built here: the
/// hash of its name and image, so it changes when the image does.
pub(crate) fn pool_build_id(pool: &pb::Pool) -> String {
    use sha2::{Digest, Sha256};
    let image = pool
        .template
        .as_ref()
        .map(|t| t.image.as_str())
        .unwrap_or_default();
    let h = Sha256::digest(format!("{}\0{image}", pool.name).as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b).to_string()
}

/// The pool a template reference names: `name`, `ns/name`, `name:tag`.
pub(crate) fn pool_name(reference: &str) -> &str {
    let bare = reference.rsplit('/').next().unwrap_or_default();
    bare.split(':').next().unwrap_or_default()
}

async fn templates(gw: &Gateway, only: Option<&str>, with_builds: bool) -> Result<Vec<Value>> {
    let pools = match only {
        Some(name) => vec![gw.get_pool(name).await?],
        None => gw.list_pools().await?,
    };
    let claims = gw.claims_with_metadata(BTreeMap::new()).await?;
    let by_pool = spawns(&claims);
    Ok(pools
        .iter()
        .map(|p| {
            let build = gw.builds.ready_build(&p.name);
            let s = by_pool.get(&p.name).copied().unwrap_or_default();
            template_json(p, build.as_ref(), s, gw.builds.started_ms, with_builds)
        })
        .collect())
}

/// `GET /templates`: every pool.
pub(super) async fn list(State(gw): State<Gateway>) -> Result<Response> {
    Ok(Json(templates(&gw, None, false).await?).into_response())
}

/// `GET /templates/{templateID}`: one pool with its build.
pub(super) async fn get(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<Response> {
    let name = pool_name(&id).to_string();
    let mut v = templates(&gw, Some(&name), true).await?;
    let t = v
        .pop()
        .ok_or_else(|| ApiError::PoolNotFound(format!("template {id}")))?;
    Ok(Json(t).into_response())
}

/// `GET /templates/aliases/{alias}`: the template of that name, if any.
pub(super) async fn alias(
    State(gw): State<Gateway>,
    Path(alias): Path<String>,
) -> Result<Response> {
    let p = gw.get_pool(pool_name(&alias)).await?;
    Ok(Json(json!({"templateID": p.name, "public": false})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, cpu: &str, memory: &str) -> pb::Pool {
        pb::Pool {
            name: name.into(),
            template: Some(pb::SandboxTemplate {
                image: "127.0.0.1:5000/app:1".into(),
                command: vec!["sleep".into(), "inf".into()],
                resources: Some(pb::Resources {
                    cpu: cpu.into(),
                    memory: memory.into(),
                    pids: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn quantities_become_e2b_counts() {
        assert_eq!(cpu_count("500m"), 1);
        assert_eq!(cpu_count("2"), 2);
        assert_eq!(cpu_count("1.5"), 2);
        assert!(cpu_count("") >= 1);
        assert_eq!(memory_mb("512Mi"), 512);
        assert_eq!(memory_mb("1Gi"), 1024);
        assert_eq!(memory_mb("1G"), 954);
        assert_eq!(memory_mb(""), 0);
        assert_eq!(memory_mb("lots"), 0);
        assert_eq!(memory_quantity(256), "256Mi");
        assert_eq!(memory_quantity(0), "");
    }

    #[test]
    fn a_pool_is_a_ready_template_with_one_build() {
        let p = pool("app", "2", "1Gi");
        let s = Spawns {
            count: 3,
            last_ms: Some(1_700_000_000_000),
        };
        let v = template_json(&p, None, s, 0, true);
        assert_eq!(v["templateID"], "app");
        assert_eq!(v["aliases"], json!(["app"]));
        assert_eq!(v["names"], json!(["app"]));
        assert_eq!(
            (v["cpuCount"].as_u64(), v["memoryMB"].as_u64()),
            (Some(2), Some(1024))
        );
        assert_eq!(v["spawnCount"], 3);
        assert_eq!(v["lastSpawnedAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["buildStatus"], "ready");
        assert_eq!(v["createdBy"], Value::Null);
        let b = &v["builds"][0];
        assert_eq!(b["buildID"], v["buildID"]);
        assert!(
            uuid::Uuid::parse_str(b["buildID"].as_str().unwrap()).is_ok(),
            "{b}"
        );
        // the build id stays while the image does, and changes with it
        assert_eq!(
            template_json(&p, None, s, 0, false)["buildID"],
            v["buildID"]
        );
        let mut other = p.clone();
        other.template.as_mut().unwrap().image = "busybox".into();
        assert_ne!(
            template_json(&other, None, s, 0, false)["buildID"],
            v["buildID"]
        );
        // the list shape has no builds, and nothing spawned is null
        let l = template_json(&p, None, Spawns::default(), 0, false);
        assert!(l.get("builds").is_none(), "{l}");
        assert_eq!(l["lastSpawnedAt"], Value::Null);
    }

    #[test]
    fn spawns_add_up_per_pool() {
        let c = |pool: &str, ms| pb::Claim {
            pool: pool.into(),
            created_unix_ms: ms,
            ..Default::default()
        };
        let m = spawns(&[c("a", 5), c("a", 9), c("b", 1)]);
        assert_eq!((m["a"].count, m["a"].last_ms), (2, Some(9)));
        assert_eq!((m["b"].count, m["b"].last_ms), (1, Some(1)));
        assert_eq!(pool_name("team/app:v2"), "app");
    }
}
