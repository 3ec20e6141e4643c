//! E2B sandbox lists: `GET /sandboxes` (v1) and `GET /v2/sandboxes`
//! (paginated), newest first unless `order=asc`, filtered by `metadata`,
//! `state`, `startedAfter` and `template` as upstream (other query
//! parameters are ignored, as upstream ignores them).

use std::{cmp::Ordering, collections::BTreeMap};

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

/// What a list asks for.
#[derive(Default)]
struct Filter {
    metadata: BTreeMap<String, String>,
    states: Vec<String>,
    /// oldest first (`order=asc`); newest first by default
    ascending: bool,
    /// started at or after, in microseconds since the epoch
    started_after_us: Option<i64>,
    /// the template (pool) name
    template: Option<String>,
}

impl Filter {
    fn parse(q: &[(String, String)]) -> std::result::Result<Self, ApiError> {
        let mut f = Filter::default();
        for (k, v) in q {
            match k.as_str() {
                "metadata" | "query" => {
                    for (mk, mv) in form_urlencoded::parse(v.as_bytes()) {
                        f.metadata.insert(mk.into_owned(), mv.into_owned());
                    }
                }
                "state" => f.states.extend(
                    v.split(',')
                        .map(|s| s.trim().to_ascii_lowercase())
                        .filter(|s| !s.is_empty()),
                ),
                "order" => {
                    f.ascending = match v.as_str() {
                        "asc" => true,
                        "desc" => false,
                        _ => {
                            return Err(ApiError::Invalid(format!(
                                "Invalid order parameter: unknown order {v:?} (asc, desc)"
                            )));
                        }
                    }
                }
                "startedAfter" => f.started_after_us = Some(parse_time(v)?),
                "template" => f.template = Some(template_name(v)?),
                _ => {}
            }
        }
        for s in &f.states {
            if s != "running" && s != "paused" {
                return Err(ApiError::Invalid(format!(
                    "unknown state {s:?} (running, paused)"
                )));
            }
        }
        Ok(f)
    }

    /// Whether `c` passes the filters other than metadata and state.
    fn admits(&self, c: &pb::Claim) -> bool {
        self.started_after_us
            .is_none_or(|t| c.created_unix_ms.saturating_mul(1000) >= t)
            && self.template.as_ref().is_none_or(|t| *t == c.pool)
    }

    fn wants(&self, state: &str) -> bool {
        self.states.is_empty() || self.states.iter().any(|s| s == state)
    }

    /// The list order: by start time, then id.
    fn order(&self, a: &pb::Claim, b: &pb::Claim) -> Ordering {
        let o = (a.created_unix_ms, &a.claim_id).cmp(&(b.created_unix_ms, &b.claim_id));
        if self.ascending { o } else { o.reverse() }
    }
}

/// An RFC 3339 time in microseconds (a `+` offset that arrived unencoded,
/// as a space, is read as `+`).
fn parse_time(v: &str) -> std::result::Result<i64, ApiError> {
    chrono::DateTime::parse_from_rfc3339(v)
        .or_else(|e| chrono::DateTime::parse_from_rfc3339(&v.replace(' ', "+")).map_err(|_| e))
        .map(|t| t.timestamp_micros())
        .map_err(|source| ApiError::BadTime {
            field: "startedAfter",
            source,
        })
}

/// The pool a `template` filter names (`ns/name` is `name`, as on create);
/// a tag is refused, as upstream (sandboxes are not tag-scoped).
fn template_name(v: &str) -> std::result::Result<String, ApiError> {
    if v.contains(':') {
        return Err(ApiError::Invalid(format!(
            "Invalid template {v:?}: tags are not supported here because sandboxes are not tag-scoped"
        )));
    }
    match v.rsplit('/').next().map(str::trim) {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        _ => Err(ApiError::Invalid(format!(
            "Invalid template {v:?}: names no template"
        ))),
    }
}

/// The claims `f` asks for, in its order, and how many of them run.
async fn filtered(gw: &Gateway, f: &Filter) -> Result<(Vec<pb::Claim>, usize)> {
    let mut claims: Vec<pb::Claim> = gw
        .claims_with_metadata(f.metadata.clone())
        .await?
        .into_iter()
        .filter(|c| f.admits(c))
        .collect();
    let running = claims.iter().filter(|c| state(c) == "running").count();
    claims.retain(|c| f.wants(state(c)));
    claims.sort_by(|a, b| f.order(a, b));
    Ok((claims, running))
}

pub(super) async fn list_v1(
    State(gw): State<Gateway>,
    extract::Query(q, _): extract::Query<E2bError>,
) -> Result<Json<Value>> {
    let (claims, _) = filtered(&gw, &Filter::parse(&q)?).await?;
    // a listed sandbox has no network (upstream's ListedSandbox)
    let listed = claims.iter().map(|c| detail_json(c, &Default::default()));
    Ok(Json(Value::Array(listed.collect())))
}

/// The next page's token: where the page ended (start time and id).
fn cursor(c: &pb::Claim) -> String {
    format!("{}-{}", c.created_unix_ms, c.claim_id)
}

/// Whether `c` comes after the page that ended at `token`, in `f`'s order.
fn after(f: &Filter, c: &pb::Claim, token: &(i64, String)) -> bool {
    let o = (c.created_unix_ms, &c.claim_id).cmp(&(token.0, &token.1));
    if f.ascending {
        o == Ordering::Greater
    } else {
        o == Ordering::Less
    }
}

fn parse_cursor(v: &str) -> std::result::Result<(i64, String), ApiError> {
    v.split_once('-')
        .and_then(|(ms, id)| Some((ms.parse().ok()?, id.to_string())))
        .filter(|(_, id)| !id.is_empty())
        .ok_or_else(|| ApiError::Invalid(format!("Invalid next token {v:?}")))
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
    let token = match q.iter().find(|(k, _)| k == "nextToken") {
        Some((_, v)) if !v.is_empty() => Some(parse_cursor(v)?),
        _ => None,
    };
    let f = Filter::parse(&q)?;
    let (claims, running) = filtered(&gw, &f).await?;
    let mut rest = claims
        .iter()
        .filter(|c| token.as_ref().is_none_or(|t| after(&f, c, t)))
        .peekable();
    let mut page = Vec::new();
    let mut last = None;
    while page.len() < limit
        && let Some(c) = rest.next()
    {
        page.push(detail_json(c, &Default::default()));
        last = Some(c);
    }
    let more = rest.peek().is_some();
    let mut r = Json(Value::Array(page)).into_response();
    if f.wants("running")
        && let Ok(v) = HeaderValue::from_str(&running.to_string())
    {
        r.headers_mut().insert("x-total-running", v);
    }
    if more
        && let Some(c) = last
        && let Ok(v) = HeaderValue::from_str(&cursor(c))
    {
        r.headers_mut().insert("x-next-token", v);
    }
    Ok(r)
}
