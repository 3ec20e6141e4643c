//! E2B template tags (`Template.assign_tags`, `remove_tags`, `get_tags`):
//! `POST /templates/tags` points more tags at the build a `name:tag` names,
//! `DELETE /templates/tags` takes tags away, `GET /templates/{id}/tags`
//! lists them. A template is one pool running its newest ready build, so
//! the tags are those of that build (kept in its record); a tag left on an
//! older build, or a pool no template build made, answers 501 naming why.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{BuildRecord, JsonBody, admin_only};
use crate::{
    Gateway,
    e2b::{Result, templates},
    error::ApiError,
    rfc3339_ms,
};

const DEFAULT_TAG: &str = "default";

/// A tag E2B accepts: letters, digits, `.`, `_`, `-`, at most 128.
fn check_tags(tags: &[String]) -> std::result::Result<(), ApiError> {
    if tags.is_empty() {
        return Err(ApiError::Invalid("tags: at least one tag is needed".into()));
    }
    for t in tags {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(ApiError::Invalid(format!(
                "tag {t:?}: use letters, digits, '.', '_' and '-' (at most 128)"
            )));
        }
    }
    Ok(())
}

/// `name[:tag]` (a namespace before `/` dropped): the pool and the tag,
/// `default` when none is given.
fn split_target(target: &str) -> (String, String) {
    let bare = target.rsplit('/').next().unwrap_or_default();
    match bare.split_once(':') {
        Some((n, t)) if !t.is_empty() => (n.to_string(), t.to_string()),
        _ => (templates::pool_name(bare).to_string(), DEFAULT_TAG.into()),
    }
}

/// A build's tags (`default` for records from before tags were kept).
fn tags_of(b: &BuildRecord) -> Vec<String> {
    if b.tags.is_empty() {
        vec![DEFAULT_TAG.into()]
    } else {
        b.tags.clone()
    }
}

/// The template's current build (the pool's), 404 without the pool, 501
/// for a pool no template build made.
async fn current_build(gw: &Gateway, name: &str, what: &str) -> Result<BuildRecord> {
    gw.get_pool(name).await?;
    Ok(gw.builds.ready_build(name).ok_or_else(|| {
        ApiError::NotImplemented(format!(
            "{what} on template {name}: its pool was not made by a template build, and \
             sandpool keeps tags only with template builds"
        ))
    })?)
}

/// A create of `name:tag` where `name` is a template build's: the tag must
/// be on the build the template runs (404 when no build has it, 501 when an
/// older one does). Templates no build made, and no tag, are not checked.
pub(in crate::e2b) fn check_create_tag(
    gw: &Gateway,
    template: &str,
) -> std::result::Result<(), ApiError> {
    if !template
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .contains(':')
    {
        return Ok(());
    }
    let (name, tag) = split_target(template);
    let Some(current) = gw.builds.ready_build(&name) else {
        return Ok(());
    };
    if tag.is_empty() || tags_of(&current).contains(&tag) {
        return Ok(());
    }
    Err(not_current(gw, &name, &tag, &current))
}

/// Why tag `tag` of template `name` is not the build `current` it runs.
fn not_current(gw: &Gateway, name: &str, tag: &str, current: &BuildRecord) -> ApiError {
    let older = gw
        .builds
        .builds
        .lock()
        .values()
        .find(|o| {
            o.template == name && o.build_id != current.build_id && o.tags.iter().any(|t| t == tag)
        })
        .map(|o| o.build_id.clone());
    match older {
        Some(id) => ApiError::NotImplemented(format!(
            "tag {tag} of template {name} names build {id}, which is no longer the \
             template's image: sandpool runs only a template's newest build"
        )),
        None => ApiError::PoolNotFound(format!("tag {tag} of template {name}")),
    }
}

/// `GET /templates/{templateID}/tags`: the tags of the build the template runs.
pub(in crate::e2b) async fn list(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
) -> Result<Response> {
    let name = templates::pool_name(&id).to_string();
    let pool = gw.get_pool(&name).await?;
    let items: Vec<Value> = match gw.builds.ready_build(&name) {
        Some(b) => tags_of(&b)
            .into_iter()
            .map(
                |t| json!({"tag": t, "buildID": b.build_id, "createdAt": rfc3339_ms(b.updated_ms)}),
            )
            .collect(),
        None => vec![json!({
            "tag": DEFAULT_TAG,
            "buildID": templates::pool_build_id(&pool),
            "createdAt": rfc3339_ms(gw.builds.started_ms),
        })],
    };
    Ok(Json(items).into_response())
}

#[derive(Deserialize, Default)]
pub(in crate::e2b) struct Assign {
    #[serde(default)]
    target: String,
    #[serde(default)]
    tags: Vec<String>,
}

/// `POST /templates/tags`: `tags` also name the build `target` (`name:tag`) names.
pub(in crate::e2b) async fn assign(
    State(gw): State<Gateway>,
    crate::extract::JsonOrEmpty(req, _): JsonBody<Assign>,
) -> Result<Response> {
    admin_only()?;
    check_tags(&req.tags)?;
    let (name, tag) = split_target(&req.target);
    if name.is_empty() {
        return Err(ApiError::Invalid("target: give the template as name:tag".into()).into());
    }
    let b = current_build(&gw, &name, "tags").await?;
    if !tags_of(&b).contains(&tag) {
        return Err(not_current(&gw, &name, &tag, &b).into());
    }
    gw.builds.update(&b.build_id, |r| {
        let mut all = tags_of(r);
        for t in &req.tags {
            if !all.contains(t) {
                all.push(t.clone());
            }
        }
        r.tags = all;
    });
    let body = json!({"tags": req.tags, "buildID": b.build_id});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Deserialize, Default)]
pub(in crate::e2b) struct Remove {
    #[serde(default)]
    name: String,
    #[serde(default)]
    tags: Vec<String>,
}

/// `DELETE /templates/tags`: the template's builds lose `tags` (absent
/// ones are no error, as upstream).
pub(in crate::e2b) async fn remove(
    State(gw): State<Gateway>,
    crate::extract::JsonOrEmpty(req, _): JsonBody<Remove>,
) -> Result<Response> {
    admin_only()?;
    check_tags(&req.tags)?;
    let name = templates::pool_name(&req.name).to_string();
    current_build(&gw, &name, "removing tags").await?;
    let ids: Vec<String> = gw
        .builds
        .builds
        .lock()
        .values()
        .filter(|b| b.template == name && b.tags.iter().any(|t| req.tags.contains(t)))
        .map(|b| b.build_id.clone())
        .collect();
    for id in ids {
        gw.builds
            .update(&id, |r| r.tags.retain(|t| !req.tags.contains(t)));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_tags() {
        assert_eq!(split_target("app:v1"), ("app".into(), "v1".into()));
        assert_eq!(split_target("team/app:v1"), ("app".into(), "v1".into()));
        assert_eq!(split_target("app"), ("app".into(), "default".into()));
        assert!(check_tags(&["v1.0-rc_1".into()]).is_ok());
        for bad in [
            vec![],
            vec!["a b".to_string()],
            vec![String::new()],
            vec!["x:y".into()],
        ] {
            assert!(check_tags(&bad).is_err(), "{bad:?}");
        }
    }
}
