//! The body of E2B's build start (`TemplateBuildStartV2`) as steps a
//! builder can run: `COPY`, `ENV`, `RUN`, `WORKDIR`, `USER` from a
//! registry image or another template. Anything else is refused before the
//! build starts, naming the step (400 when it is malformed, 501 when it is
//! well-formed but sandpool has no way to honour it).

use serde_json::Value;

use super::BuildRequest;
use crate::error::ApiError;

/// One build step; `index` is E2B's step number (1 = the first after the base).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildStep {
    pub index: usize,
    pub kind: StepKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepKind {
    /// The uploaded files `hash` (a tar of paths relative to the build
    /// context), of which `src` (a path or glob) goes to `dest`.
    Copy {
        src: String,
        dest: String,
        user: Option<String>,
        mode: Option<String>,
        hash: String,
    },
    Env(Vec<(String, String)>),
    /// A shell line, run as `user` when given.
    Run {
        cmd: String,
        user: Option<String>,
    },
    Workdir(String),
    User(String),
}

/// What a build start asks for.
#[derive(Debug, Clone, Default)]
pub(crate) struct StartSpec {
    pub from_image: String,
    pub from_template: Option<String>,
    pub credentials: Option<(String, String)>,
    pub steps: Vec<BuildStep>,
    pub start_cmd: Option<String>,
    pub ready_cmd: Option<String>,
}

fn opt_str(body: &Value, key: &str) -> Result<Option<String>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(ApiError::Invalid(format!(
            "{key} must be a string, got {v}"
        ))),
    }
}

/// `fromImageRegistry`: credentials of a plain registry; the cloud ones
/// (`aws`, `gcp`) need their providers' APIs, which sandpool does not call.
fn registry_credentials(body: &Value) -> Result<Option<(String, String)>, ApiError> {
    let Some(r) = body.get("fromImageRegistry").filter(|r| !r.is_null()) else {
        return Ok(None);
    };
    let kind = r.get("type").and_then(Value::as_str).unwrap_or_default();
    if kind != "registry" {
        return Err(ApiError::Unsupported(format!(
            "fromImageRegistry of type {kind:?} (only \"registry\" with username and password)"
        )));
    }
    let field = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
    match (field("username"), field("password")) {
        (Some(u), Some(p)) => Ok(Some((u, p))),
        _ => Err(ApiError::Invalid(
            "fromImageRegistry needs a username and a password".into(),
        )),
    }
}

/// A build start body as the build it asks for.
pub(crate) fn parse_start(body: &Value) -> Result<StartSpec, ApiError> {
    if !body.is_object() {
        return Err(ApiError::Invalid(
            "the build start body must be an object".into(),
        ));
    }
    let from_image = opt_str(body, "fromImage")?;
    let from_template = opt_str(body, "fromTemplate")?;
    let from_image = match (from_image, &from_template) {
        (Some(_), Some(_)) => {
            return Err(ApiError::Invalid(
                "give fromImage or fromTemplate, not both".into(),
            ));
        }
        (None, None) => {
            return Err(ApiError::Invalid(
                "the build needs a base: fromImage or fromTemplate".into(),
            ));
        }
        (i, _) => i.unwrap_or_default(),
    };
    let raw = match body.get("steps") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(v) => return Err(ApiError::Invalid(format!("steps must be a list, got {v}"))),
    };
    let steps = raw
        .iter()
        .enumerate()
        .map(|(i, s)| parse_step(i + 1, s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(StartSpec {
        from_image,
        from_template,
        credentials: registry_credentials(body)?,
        steps,
        start_cmd: opt_str(body, "startCmd")?,
        ready_cmd: opt_str(body, "readyCmd")?,
    })
}

/// Step `index` of a build start.
fn parse_step(index: usize, s: &Value) -> Result<BuildStep, ApiError> {
    let kind = s.get("type").and_then(Value::as_str).unwrap_or_default();
    let bad = |why: &str| ApiError::Invalid(format!("build step {index} ({kind}): {why}"));
    let args: Vec<String> = match s.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("args must be strings"))?,
        Some(_) => return Err(bad("args must be a list")),
    };
    let nonempty = |i: usize| args.get(i).filter(|a| !a.is_empty()).cloned();
    let kind = match kind {
        "RUN" => StepKind::Run {
            cmd: nonempty(0).ok_or_else(|| bad("no command"))?,
            user: nonempty(1),
        },
        "COPY" => StepKind::Copy {
            src: nonempty(0).ok_or_else(|| bad("no source"))?,
            dest: nonempty(1).ok_or_else(|| bad("no destination"))?,
            user: nonempty(2),
            mode: nonempty(3),
            hash: s
                .get("filesHash")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| bad("no filesHash (its files are uploaded by hash)"))?,
        },
        "ENV" => {
            if !args.len().is_multiple_of(2) {
                return Err(bad("args must be name, value pairs"));
            }
            StepKind::Env(
                args.chunks(2)
                    .map(|p| (p[0].clone(), p[1].clone()))
                    .collect(),
            )
        }
        "WORKDIR" => StepKind::Workdir(nonempty(0).ok_or_else(|| bad("no directory"))?),
        "USER" => StepKind::User(nonempty(0).ok_or_else(|| bad("no user"))?),
        other => {
            return Err(ApiError::Unsupported(format!(
                "the build step {index} of type {other:?} (sandpool builds COPY, ENV, RUN, WORKDIR and USER)"
            )));
        }
    };
    if let StepKind::Copy {
        hash, mode, src, ..
    } = &kind
    {
        check_hash(hash)?;
        // the source is within the uploaded files, never beside them
        if src.starts_with('/') || src.split(['/', '\\']).any(|p| p == "..") {
            return Err(bad(
                "the source must be a relative path within the build context",
            ));
        }
        if let Some(m) = mode
            && (m.len() > 4 || !m.chars().all(|c| ('0'..='7').contains(&c)))
        {
            return Err(bad("mode must be octal"));
        }
    }
    Ok(BuildStep { index, kind })
}

/// A files hash is a hex digest (it names a file on the builder's disk).
pub(crate) fn check_hash(hash: &str) -> Result<(), ApiError> {
    if (16..=128).contains(&hash.len()) && hash.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ApiError::Invalid(format!(
            "files hash {hash:?} is not a hex digest"
        )))
    }
}

/// Every `COPY` step's files were uploaded.
pub(crate) fn check_files(req: &BuildRequest) -> Result<(), ApiError> {
    for s in &req.steps {
        if let StepKind::Copy { hash, src, .. } = &s.kind
            && !req.files_dir.join(format!("{hash}.tar")).is_file()
        {
            return Err(ApiError::Invalid(format!(
                "build step {} (COPY {src}): its files ({hash}) were not uploaded",
                s.index
            )));
        }
    }
    Ok(())
}

/// E2B's `reason.step` of a builder's error: `"step N ..."` → `N`,
/// `"base ..."` → `base`.
pub(crate) fn failed_step(e: &str) -> Option<String> {
    if e.starts_with("base") {
        return Some("base".into());
    }
    let n = e.strip_prefix("step ")?;
    let digits: String = n.chars().take_while(char::is_ascii_digit).collect();
    (!digits.is_empty()).then_some(digits)
}
