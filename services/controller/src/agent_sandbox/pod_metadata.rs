//! A claim's `additionalPodMetadata`: labels and annotations for its
//! sandbox's pod, checked as upstream checks them — label keys carry a
//! domain prefix from the allowed label domains, annotations stay out of
//! the system domains, nothing overrides a template value with another one.

use std::collections::BTreeMap;

use crate::crd::PodMetadata;

/// Domains (and their subdomains) a claim's pod labels may use unless
/// [`LABEL_DOMAINS_FILE`] lists others: upstream's default allowlist.
pub const ALLOWED_LABEL_DOMAINS: &[&str] = &["sandbox.users.io"];
/// Where upstream's controller reads its allowed label domains (a mounted
/// ConfigMap key): separated by commas or newlines.
pub const LABEL_DOMAINS_FILE: &str = "/etc/sandbox-config/allowed-label-domains";

/// The allowed label domains in `text` (commas or newlines between them),
/// lowercased; `None` when it lists none.
pub fn parse_label_domains(text: &str) -> Option<Vec<String>> {
    let out: Vec<String> = text
        .split([',', '\n', '\r'])
        .map(|d| d.trim().to_lowercase())
        .filter(|d| !d.is_empty())
        .collect();
    (!out.is_empty()).then_some(out)
}

/// The allowed label domains: [`LABEL_DOMAINS_FILE`]'s when it lists any,
/// else [`ALLOWED_LABEL_DOMAINS`]. An unreadable file is logged and the
/// default used.
pub fn label_domains() -> Vec<String> {
    let listed = match std::fs::read_to_string(LABEL_DOMAINS_FILE) {
        Ok(text) => parse_label_domains(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::error!(error = %e, path = LABEL_DOMAINS_FILE, "reading the allowed label domains; using the default");
            None
        }
    };
    listed.unwrap_or_else(|| {
        ALLOWED_LABEL_DOMAINS
            .iter()
            .map(|d| d.to_string())
            .collect()
    })
}
/// Annotation domains (and subdomains) a claim may not set.
const RESTRICTED_DOMAINS: &[&str] = &["kubernetes.io", "k8s.io", "agents.x-k8s.io"];
/// The one annotation of a restricted domain a claim may set.
const EXEMPT_ANNOTATION: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";

fn in_domains<D: AsRef<str>>(domain: &str, domains: &[D]) -> bool {
    domains.iter().map(AsRef::as_ref).any(|d| {
        domain == d
            || domain
                .strip_suffix(d)
                .is_some_and(|rest| rest.ends_with('.'))
    })
}

/// A label-style name: 1-63 alphanumerics, `-`, `_`, `.`, alphanumeric at
/// both ends.
fn is_name(s: &str) -> bool {
    let ok_end = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    (1..=63).contains(&s.len())
        && ok_end(s.chars().next())
        && ok_end(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A DNS subdomain: lowercase labels joined by dots, at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && l.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// `(domain, name)` of a qualified key, or why it is not one.
fn split_key(key: &str) -> Result<(Option<&str>, &str), String> {
    let (domain, name) = match key.split_once('/') {
        Some((d, n)) => (Some(d), n),
        None => (None, key),
    };
    if domain.is_some_and(|d| !is_dns_subdomain(d)) || !is_name(name) {
        return Err(format!("invalid key {key:?}: not a qualified name"));
    }
    Ok((domain, name))
}

fn check_label(key: &str, value: &str, allowed: &[String]) -> Result<(), String> {
    let (domain, _) = split_key(key)?;
    if key.eq_ignore_ascii_case("app") && value.eq_ignore_ascii_case("sandbox-router") {
        return Err(format!(
            "label {key}={value} is reserved for the sandbox router"
        ));
    }
    let Some(domain) = domain else {
        return Err(format!(
            "label {key:?} needs a domain prefix (e.g. sandbox.users.io/{key})"
        ));
    };
    if !in_domains(&domain.to_lowercase(), allowed) {
        return Err(format!(
            "label {key:?}: domain {domain:?} is not allowed (allowed: {})",
            allowed.join(", ")
        ));
    }
    if !value.is_empty() && !is_name(value) {
        return Err(format!("label {key:?}: invalid value {value:?}"));
    }
    Ok(())
}

fn check_annotation(key: &str) -> Result<(), String> {
    let (domain, _) = split_key(key)?;
    if domain.is_some_and(|d| in_domains(&d.to_lowercase(), RESTRICTED_DOMAINS))
        && key != EXEMPT_ANNOTATION
    {
        return Err(format!(
            "annotation {key:?} is in a restricted system domain"
        ));
    }
    Ok(())
}

/// Merge `extra` into `labels` and `annotations` (the template's): every
/// key checked (labels against the `allowed` domains), and no template
/// value overridden with another one.
pub fn merge(
    labels: &mut BTreeMap<String, String>,
    annotations: &mut BTreeMap<String, String>,
    extra: &PodMetadata,
    allowed: &[String],
) -> Result<(), String> {
    for (k, v) in &extra.labels {
        check_label(k, v, allowed)?;
    }
    for k in extra.annotations.keys() {
        check_annotation(k)?;
    }
    for (kind, have, want) in [
        ("label", &*labels, &extra.labels),
        ("annotation", &*annotations, &extra.annotations),
    ] {
        for (k, v) in want {
            if let Some(t) = have.get(k).filter(|t| *t != v) {
                return Err(format!(
                    "{kind} {k:?} is {t:?} in the template; the claim asks for {v:?}"
                ));
            }
        }
    }
    labels.extend(extra.labels.clone());
    annotations.extend(extra.annotations.clone());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> PodMetadata {
        let m = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        PodMetadata {
            labels: m(labels),
            annotations: m(annotations),
        }
    }

    fn try_merge(extra: &PodMetadata) -> Result<(), String> {
        let mut l = BTreeMap::from([("sandbox.users.io/team".to_string(), "a".to_string())]);
        let mut a = BTreeMap::new();
        merge(&mut l, &mut a, extra, &default_domains())
    }

    fn default_domains() -> Vec<String> {
        ALLOWED_LABEL_DOMAINS
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    #[test]
    fn allowed_labels_and_annotations_merge() {
        let mut l = BTreeMap::new();
        let mut a = BTreeMap::new();
        let extra = meta(
            &[
                ("sandbox.users.io/user", "u1"),
                ("x.sandbox.users.io/k", ""),
            ],
            &[("note", "free text"), (EXEMPT_ANNOTATION, "false")],
        );
        merge(&mut l, &mut a, &extra, &default_domains()).expect("allowed");
        assert_eq!(l, extra.labels);
        assert_eq!(a, extra.annotations);
        // the same value as the template's is no override
        try_merge(&meta(&[("sandbox.users.io/team", "a")], &[])).expect("same value");
    }

    #[test]
    fn restricted_keys_values_and_overrides_are_refused() {
        for (bad, says) in [
            (meta(&[("team", "a")], &[]), "domain prefix"),
            (meta(&[("example.com/team", "a")], &[]), "not allowed"),
            (meta(&[("sandbox.users.io/t", "a b")], &[]), "invalid value"),
            (
                meta(&[("sandbox.users.io/team", "b")], &[]),
                "in the template",
            ),
            (meta(&[("Bad_Domain/x", "a")], &[]), "qualified name"),
            (
                meta(&[], &[("agents.x-k8s.io/pod-name", "x")]),
                "restricted",
            ),
            (meta(&[], &[("node.kubernetes.io/x", "x")]), "restricted"),
        ] {
            let err = try_merge(&bad).expect_err("refused");
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn configured_label_domains_replace_the_default() {
        let domains = parse_label_domains("example.com,\n Team.IO \n\n").expect("listed");
        assert_eq!(domains, ["example.com", "team.io"]);
        assert_eq!(parse_label_domains(" \n,"), None);
        let mut l = BTreeMap::new();
        let mut a = BTreeMap::new();
        let ok = meta(&[("a.team.io/x", "1"), ("example.com/y", "2")], &[]);
        merge(&mut l, &mut a, &ok, &domains).expect("configured domains");
        let bad = meta(&[("sandbox.users.io/x", "1")], &[]);
        let err = merge(&mut l, &mut a, &bad, &domains).expect_err("not listed");
        assert!(err.contains("example.com, team.io"), "{err}");
        // a suffix is not a subdomain
        let bad = meta(&[("evilteam.io/x", "1")], &[]);
        merge(&mut l, &mut a, &bad, &domains).expect_err("not a subdomain");
    }
}
