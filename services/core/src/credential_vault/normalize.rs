//! Checking and normalizing what a client writes into a vault.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{Auth, Binding, Credential, Match, MutationSet, Record, VaultError, invalid};
use crate::egress::domain::NamePattern;
use crate::egress::{EgressAction, EgressPolicy};

/// Header names a binding may not set (framing, hop-by-hop, proxy and
/// forwarding headers), compared case-insensitively.
const RESERVED_HEADERS: [&str; 14] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

const DEFAULT_METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

pub(super) fn credential(c: Credential, revision: i64) -> Result<(String, Record), VaultError> {
    let name = c.name.trim().to_owned();
    if name.is_empty() {
        return Err(invalid("credential name cannot be blank"));
    }
    let kind = match c.source.kind.trim() {
        "" => "inline",
        other => other,
    };
    if kind != "inline" {
        return Err(invalid(format!(
            "unsupported credential source type {kind:?}"
        )));
    }
    let value = c
        .source
        .value
        .filter(|v| !v.expose().is_empty())
        .ok_or_else(|| invalid(format!("credential {name:?} inline value cannot be empty")))?;
    Ok((
        name,
        Record {
            value,
            source_type: "inline".into(),
            revision,
        },
    ))
}

pub(super) fn binding(mut b: Binding) -> Result<Binding, VaultError> {
    b.name = b.name.trim().to_owned();
    if b.name.is_empty() {
        return Err(invalid("binding name cannot be blank"));
    }
    let name = b.name.clone();
    let ctx = |e: VaultError| match e {
        VaultError::Invalid(m) => invalid(format!("binding {name:?}: {m}")),
        other => other,
    };
    normalize_match(&mut b.matcher).map_err(ctx)?;
    normalize_auth(&mut b.auth).map_err(ctx)?;
    Ok(b)
}

fn normalize_match(m: &mut Match) -> Result<(), VaultError> {
    if m.hosts.is_empty() {
        return Err(invalid("match.hosts cannot be empty"));
    }
    if m.schemes.is_empty() {
        m.schemes = vec!["https".into()];
    }
    if m.ports.is_empty() {
        m.ports = vec![443];
    }
    if m.methods.is_empty() {
        m.methods = DEFAULT_METHODS.iter().map(|s| (*s).to_owned()).collect();
    }
    if m.paths.is_empty() {
        m.paths = vec!["/*".into()];
    }
    for s in &mut m.schemes {
        *s = s.trim().to_ascii_lowercase();
        if s != "http" && s != "https" {
            return Err(invalid(format!("unsupported scheme {s:?}")));
        }
    }
    if let Some(p) = m.ports.iter().find(|p| !(1..=65535).contains(*p)) {
        return Err(invalid(format!("invalid port {p}")));
    }
    for h in &mut m.hosts {
        *h = host(h)?;
    }
    for meth in &mut m.methods {
        *meth = meth.trim().to_ascii_uppercase();
        if meth.is_empty() {
            return Err(invalid("method cannot be blank"));
        }
    }
    for p in &mut m.paths {
        *p = p.trim().to_owned();
        if !p.starts_with('/') {
            return Err(invalid("path pattern must start with /"));
        }
    }
    dedup(&mut m.schemes);
    dedup(&mut m.ports);
    dedup(&mut m.hosts);
    dedup(&mut m.methods);
    dedup(&mut m.paths);
    Ok(())
}

fn dedup<T: Ord + Clone>(v: &mut Vec<T>) {
    let mut seen = BTreeSet::new();
    v.retain(|x| seen.insert(x.clone()));
}

fn host(raw: &str) -> Result<String, VaultError> {
    let h = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    if h.is_empty() {
        return Err(invalid("host cannot be blank"));
    }
    if h.contains("://") || h.contains('/') {
        return Err(invalid(format!(
            "host {h:?} must not include scheme or path"
        )));
    }
    let (wild, bare) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h.as_str()),
    };
    if bare.parse::<IpAddr>().is_ok() {
        return Err(invalid(format!(
            "credential binding host {h:?} must be an FQDN, not an IP address"
        )));
    }
    if bare.contains('*') || !fqdn(bare) {
        return Err(invalid(if wild {
            format!("invalid wildcard host {h:?}")
        } else {
            format!("credential binding host {h:?} must be an FQDN")
        }));
    }
    Ok(h)
}

fn fqdn(h: &str) -> bool {
    h.len() <= 253
        && h.contains('.')
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn canonical_header(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

fn header_name(raw: &str) -> Result<String, VaultError> {
    let name = canonical_header(raw.trim());
    let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(invalid(format!("invalid credential header name {name:?}")));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(invalid(format!("reserved credential header name {name:?}")));
    }
    Ok(name)
}

fn needs_credential(kind: &str, credential: &mut String) -> Result<(), VaultError> {
    *credential = credential.trim().to_owned();
    if credential.is_empty() {
        return Err(invalid(format!("{kind} auth requires credential")));
    }
    Ok(())
}

fn normalize_auth(a: &mut Auth) -> Result<(), VaultError> {
    a.kind = a.kind.trim().to_owned();
    match a.kind.as_str() {
        "bearer" | "basic" => needs_credential(&a.kind, &mut a.credential),
        "apiKey" => {
            a.name = header_name(&a.name)?;
            needs_credential("apiKey", &mut a.credential)
        }
        "customHeaders" => {
            if a.headers.is_empty() {
                return Err(invalid("customHeaders auth requires headers"));
            }
            let mut seen = BTreeSet::new();
            for h in &mut a.headers {
                h.name = header_name(&h.name)?;
                if !seen.insert(h.name.to_ascii_lowercase()) {
                    return Err(invalid(format!(
                        "duplicate custom header name {:?}",
                        h.name
                    )));
                }
                h.credential = h.credential.trim().to_owned();
                if h.credential.is_empty() {
                    return Err(invalid(format!(
                        "customHeaders entry {:?} requires credential",
                        h.name
                    )));
                }
            }
            Ok(())
        }
        other => Err(invalid(format!("unsupported auth type {other:?}"))),
    }
}

/// The credentials an auth refers to.
pub(super) fn credential_refs(a: &Auth) -> Vec<&str> {
    if a.kind == "customHeaders" {
        a.headers.iter().map(|h| h.credential.as_str()).collect()
    } else {
        vec![a.credential.as_str()]
    }
}

/// Whether an allow rule of `policy` names `host` (or a wildcard covering
/// it) and the policy as a whole allows it.
pub(super) fn explicitly_allowed(policy: &EgressPolicy, host: &str) -> bool {
    let probe = match host.strip_prefix("*.") {
        Some(apex) => format!("probe.{apex}"),
        None => host.to_owned(),
    };
    let named = policy.rules.iter().any(|r| {
        if r.action != EgressAction::Allow {
            return false;
        }
        let target = r.cidr.trim().trim_end_matches('.').to_ascii_lowercase();
        target == host
            || (target.starts_with("*.")
                && NamePattern::parse(&target).is_ok_and(|p| p.matches(&probe)))
    });
    named && policy.decide_name(&probe) == EgressAction::Allow
}

/// Apply one kind's mutations to `items`: deletes, replaces, then adds; a
/// name may appear in one operation only.
pub(super) fn apply<T, V>(
    items: &mut BTreeMap<String, V>,
    m: MutationSet<T>,
    what: &str,
    mut parse: impl FnMut(T) -> Result<(String, V), VaultError>,
) -> Result<(), VaultError> {
    let mut mentioned = BTreeSet::new();
    for name in m.delete {
        let name = name.trim().to_owned();
        if name.is_empty() {
            return Err(invalid(format!("{what} delete name cannot be blank")));
        }
        if !mentioned.insert(name.clone()) {
            return Err(invalid(format!(
                "{what} {name:?} mentioned by multiple operations"
            )));
        }
        if items.remove(&name).is_none() {
            return Err(invalid(format!("{what} {name:?} does not exist")));
        }
    }
    for raw in m.replace {
        let (name, v) = parse(raw)?;
        if !mentioned.insert(name.clone()) {
            return Err(invalid(format!(
                "{what} {name:?} mentioned by multiple operations"
            )));
        }
        match items.get_mut(&name) {
            Some(slot) => *slot = v,
            None => return Err(invalid(format!("{what} {name:?} does not exist"))),
        }
    }
    for raw in m.add {
        let (name, v) = parse(raw)?;
        if !mentioned.insert(name.clone()) {
            return Err(invalid(format!(
                "{what} {name:?} mentioned by multiple operations (or added twice)"
            )));
        }
        if items.contains_key(&name) {
            return Err(invalid(format!("{what} {name:?} already exists")));
        }
        items.insert(name, v);
    }
    Ok(())
}
