//! E2B `network.rules`: per-domain transforms that set HTTP headers on the
//! sandbox's outbound requests to that domain (an existing header of the
//! same name is replaced), checked with upstream's limits and messages.
//!
//! They become a credential vault ([`sandpool_core::credential_vault`]),
//! one binding per domain, which the node's credential proxy applies to
//! the sandbox's **plain HTTP** requests (TCP port 80) whose `Host` is the
//! domain, as it does for OpenSandbox's Credential Vault; the values never
//! enter the sandbox. Differences from E2B, for security (see
//! docs/compatibility.md): no TLS interception, so the domain's port 443
//! is closed to the sandbox rather than reached without the headers; and
//! the domain must be allowed explicitly in `allowOut` (E2B: any domain
//! the policy lets through), since the proxy trusts the `Host` header only
//! where the egress policy binds the name to what it resolved to.

use std::collections::BTreeSet;

use sandpool_core::credential_vault::{
    Auth, Binding, CreateRequest, Credential, CredentialSource, CustomHeader, Match, Secret, Vault,
};
use sandpool_proto::v1 as pb;
use serde_json::Value;

use crate::{Gateway, error::ApiError};

type Result<T> = std::result::Result<T, ApiError>;

// upstream's limits
const MAX_DOMAINS: usize = 10;
const MAX_DOMAIN_LEN: usize = 128;
const MAX_RULES_PER_DOMAIN: usize = 1;
const MAX_HEADERS_PER_RULE: usize = 20;
const MAX_HEADER_NAME_LEN: usize = 64;
const MAX_HEADER_VALUE_LEN: usize = 2048;
/// What upstream's egress proxy resolves in a header value (E2B secrets and
/// workload identity tokens), which sandpool has neither of.
const PLACEHOLDERS: [&str; 2] = ["${e2b.identity.tokens.", "${e2b.secrets."];

fn bad(msg: String) -> ApiError {
    ApiError::Invalid(msg)
}

/// The transforms of a create's `network.rules` as a credential vault
/// (`None`: no rules, or none with headers).
pub fn parse(network: Option<&Value>) -> Result<Option<CreateRequest>> {
    let rules = match network.and_then(|n| n.get("rules")) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(other) => return Err(bad(format!("network.rules must be an object, got {other}"))),
    };
    if rules.len() > MAX_DOMAINS {
        return Err(bad(format!(
            "Network rules can have at most {MAX_DOMAINS} domains."
        )));
    }
    let mut vault = CreateRequest::default();
    for (domain, domain_rules) in rules {
        check_domain(domain)?;
        let list = match domain_rules {
            Value::Array(a) => a,
            other => {
                return Err(bad(format!(
                    "network.rules.{domain} must be a list of rules, got {other}"
                )));
            }
        };
        if list.len() > MAX_RULES_PER_DOMAIN {
            return Err(bad(format!(
                "Domain {domain:?} can have at most {MAX_RULES_PER_DOMAIN} transform rule."
            )));
        }
        let mut headers = Vec::new();
        for rule in list {
            headers.extend(rule_headers(domain, rule)?);
        }
        if headers.is_empty() {
            continue;
        }
        let n = vault.bindings.len();
        let mut custom = Vec::with_capacity(headers.len());
        for (i, (name, value)) in headers.into_iter().enumerate() {
            let credential = format!("rule-{n}-header-{i}");
            vault.credentials.push(Credential {
                name: credential.clone(),
                source: CredentialSource {
                    kind: "inline".into(),
                    value: Some(Secret::new(value)),
                },
            });
            custom.push(CustomHeader { name, credential });
        }
        vault.bindings.push(Binding {
            name: format!("rule-{n}"),
            matcher: Match {
                schemes: vec!["http".into()],
                ports: vec![80],
                hosts: vec![domain.to_ascii_lowercase()],
                // every method and path: E2B matches by domain only
                methods: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
                    .map(String::from)
                    .to_vec(),
                paths: vec!["/*".into()],
            },
            auth: Auth {
                kind: "customHeaders".into(),
                headers: custom,
                ..Default::default()
            },
        });
    }
    Ok((!vault.bindings.is_empty()).then_some(vault))
}

/// Upstream's checks of a rule domain: not empty, at most 128 characters,
/// a DNS name.
fn check_domain(domain: &str) -> Result<()> {
    if domain.is_empty() {
        return Err(bad("Rule domain must not be empty.".into()));
    }
    if domain.len() > MAX_DOMAIN_LEN {
        return Err(bad(format!(
            "Rule domain {domain:?} exceeds maximum length of {MAX_DOMAIN_LEN} characters."
        )));
    }
    if domain.starts_with('*') || sandpool_core::egress::domain::NamePattern::parse(domain).is_err()
    {
        return Err(bad(format!(
            "Rule domain {domain:?} is not a valid domain name."
        )));
    }
    Ok(())
}

/// The headers of one rule (`{"transform": {"headers": {name: value}}}`),
/// checked with upstream's limits and messages.
fn rule_headers(domain: &str, rule: &Value) -> Result<Vec<(String, String)>> {
    let Some(rule) = rule.as_object() else {
        return Err(bad(format!(
            "network.rules.{domain}: a rule must be an object, got {rule}"
        )));
    };
    if let Some(k) = rule.keys().find(|k| *k != "transform") {
        return Err(ApiError::Unsupported(format!(
            "network.rules.{domain}: the rule field {k}"
        )));
    }
    let transform = match rule.get("transform") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(t)) => t,
        Some(other) => {
            return Err(bad(format!(
                "network.rules.{domain}: transform must be an object, got {other}"
            )));
        }
    };
    if let Some(k) = transform.keys().find(|k| *k != "headers") {
        return Err(ApiError::Unsupported(format!(
            "network.rules.{domain}: the transform field {k}"
        )));
    }
    let headers = match transform.get("headers") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(h)) => h,
        Some(other) => {
            return Err(bad(format!(
                "network.rules.{domain}: transform.headers must be an object, got {other}"
            )));
        }
    };
    if headers.len() > MAX_HEADERS_PER_RULE {
        return Err(bad(format!(
            "Domain {domain:?} can have at most {MAX_HEADERS_PER_RULE} headers per rule."
        )));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        check_header(domain, name, value)?;
        let value = value.as_str().unwrap_or_default();
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(bad(format!(
                "Header {name:?} in rule for domain {domain:?} is given twice."
            )));
        }
        out.push((name.clone(), value.to_string()));
    }
    Ok(out)
}

fn check_header(domain: &str, name: &str, value: &Value) -> Result<()> {
    if name.is_empty() {
        return Err(bad(format!(
            "Header name in rule for domain {domain:?} must not be empty."
        )));
    }
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(bad(format!(
            "Header name {name:?} in rule for domain {domain:?} must contain only valid HTTP token characters."
        )));
    }
    if name.len() > MAX_HEADER_NAME_LEN {
        return Err(bad(format!(
            "Header name {name:?} in rule for domain {domain:?} exceeds maximum length of {MAX_HEADER_NAME_LEN} characters."
        )));
    }
    let Some(value) = value.as_str() else {
        return Err(bad(format!(
            "Value for header {name:?} in rule for domain {domain:?} must be a string, got {value}"
        )));
    };
    if http::HeaderValue::from_str(value).is_err() {
        return Err(bad(format!(
            "Value for header {name:?} in rule for domain {domain:?} contains invalid characters."
        )));
    }
    if value.len() > MAX_HEADER_VALUE_LEN {
        return Err(bad(format!(
            "Value for header {name:?} in rule for domain {domain:?} exceeds maximum length of {MAX_HEADER_VALUE_LEN} characters."
        )));
    }
    if let Some(p) = PLACEHOLDERS.iter().find(|p| value.contains(**p)) {
        return Err(ApiError::Unsupported(format!(
            "network.rules.{domain}: the placeholder {p}…}} in header {name:?} (E2B secrets and identity tokens)"
        )));
    }
    Ok(())
}

/// The domains a transforms vault (`bindings` as read back or as
/// written) applies to.
pub fn domains<'a>(hosts: impl IntoIterator<Item = &'a Match>) -> BTreeSet<String> {
    hosts
        .into_iter()
        .flat_map(|m| m.hosts.iter().map(|h| h.to_ascii_lowercase()))
        .collect()
}

/// Close port 443 of each transformed domain in `policy` (the rules an
/// E2B hostname became): without TLS interception a request there would
/// leave without its headers, so it is refused instead.
pub fn close_https(policy: &mut pb::EgressPolicy, domains: &BTreeSet<String>) {
    policy.rules.retain(|r| {
        !(r.action == pb::EgressAction::Allow as i32
            && r.port == 443
            && domains.contains(&r.cidr.trim().to_ascii_lowercase()))
    });
}

/// Fit transforms `vault` to the create's egress `policy`: each domain
/// must be allowed by name in it (`allowOut`), and its port 443 is closed.
pub fn fit(policy: Option<&mut pb::EgressPolicy>, vault: &CreateRequest) -> Result<()> {
    let domains = domains(vault.bindings.iter().map(|b| &b.matcher));
    let named = |p: &pb::EgressPolicy, d: &str| {
        p.rules.iter().any(|r| {
            r.action == pb::EgressAction::Allow as i32 && r.cidr.trim().eq_ignore_ascii_case(d)
        })
    };
    let Some(policy) = policy.filter(|p| domains.iter().all(|d| named(p, d))) else {
        let d = domains
            .iter()
            .next()
            .map(String::as_str)
            .unwrap_or_default();
        return Err(bad(format!(
            "network.rules: domain {d:?} must also be in network.allowOut (with ALL_TRAFFIC in denyOut): sandpool sets a rule's headers only on requests to a domain the egress policy allows by name"
        )));
    };
    close_https(policy, &domains);
    vault_for(policy, vault.clone()).map(|_| ())
}

/// The vault `req` makes under the sandbox's `policy` (the core's checks:
/// reserved header names, ambiguity).
fn vault_for(policy: &pb::EgressPolicy, req: CreateRequest) -> Result<Vault> {
    let core = sandpool_proto::template::egress_from_pb_with_names(policy).map_err(bad)?;
    let mut vault = Vault::default();
    vault
        .create(req, &core)
        .map_err(|e| bad(format!("network.rules: {e}")))?;
    vault
        .check_interceptable(80)
        .map_err(|e| bad(format!("network.rules: {e}")))?;
    Ok(vault)
}

/// Give claim `id`'s sandbox, created with egress `policy`, the transforms
/// `req` (its node's credential proxy applies them); kept in the gateway's
/// memory as vaults are.
pub async fn apply(
    gw: &Gateway,
    id: &str,
    policy: Option<&pb::EgressPolicy>,
    req: CreateRequest,
) -> Result<()> {
    let vault = vault_for(&policy.cloned().unwrap_or_default(), req)?;
    let wire = serde_json::to_vec(&vault)
        .map_err(|e| ApiError::Internal(format!("encoding the network rules: {e}")))?;
    gw.set_claim_credential_vault(id, wire).await?;
    gw.vaults.lock().insert(id.to_string(), vault);
    Ok(())
}

/// The transformed domains of claim `id` (its vault's hosts), whose port
/// 443 a new egress policy keeps closed.
pub fn claim_domains(gw: &Gateway, id: &str) -> BTreeSet<String> {
    let vaults = gw.vaults.lock();
    let state = vaults.get(id).and_then(|v| v.sanitized().ok());
    domains(
        state
            .iter()
            .flat_map(|s| s.bindings.iter().map(|b| &b.matcher)),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parsed(rules: Value) -> Result<Option<CreateRequest>> {
        parse(Some(&json!({ "rules": rules })))
    }

    fn message(rules: Value) -> String {
        parsed(rules).expect_err("refused").to_string()
    }

    #[test]
    fn each_domains_headers_become_one_plain_http_binding() {
        let v = parsed(json!({
            "api.example.com": [{"transform": {"headers": {"X-Test-Token": "v1", "Authorization": "Bearer t"}}}],
            "other.example": [{}],
        }))
        .expect("ok")
        .expect("some");
        assert_eq!(
            v.bindings.len(),
            1,
            "a rule without headers asks for nothing"
        );
        let b = &v.bindings[0];
        assert_eq!(b.matcher.hosts, ["api.example.com"]);
        assert_eq!(
            (b.matcher.schemes.as_slice(), b.matcher.ports.as_slice()),
            (&["http".to_string()][..], &[80][..])
        );
        assert_eq!(b.auth.kind, "customHeaders");
        let names: Vec<&str> = b.auth.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["Authorization", "X-Test-Token"]);
        let values: Vec<&str> = v
            .credentials
            .iter()
            .map(|c| {
                c.source
                    .value
                    .as_ref()
                    .map(Secret::expose)
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(values, ["Bearer t", "v1"]);
        assert!(parse(None).expect("ok").is_none());
        assert!(parsed(json!({})).expect("ok").is_none());
    }

    #[test]
    fn rules_are_checked_with_upstreams_limits_and_messages() {
        let many: serde_json::Map<String, Value> = (0..11)
            .map(|i| (format!("d{i}.example"), json!([])))
            .collect();
        assert_eq!(
            message(Value::Object(many)),
            "Network rules can have at most 10 domains."
        );
        assert_eq!(message(json!({"": []})), "Rule domain must not be empty.");
        assert_eq!(
            message(json!({"not a domain": []})),
            "Rule domain \"not a domain\" is not a valid domain name."
        );
        assert_eq!(
            message(json!({"a.example": [{}, {}]})),
            "Domain \"a.example\" can have at most 1 transform rule."
        );
        assert_eq!(
            message(json!({"a.example": [{"transform": {"headers": {"bad name": "v"}}}]})),
            "Header name \"bad name\" in rule for domain \"a.example\" must contain only valid HTTP token characters."
        );
        assert_eq!(
            message(json!({"a.example": [{"transform": {"headers": {"X": "a\nb"}}}]})),
            "Value for header \"X\" in rule for domain \"a.example\" contains invalid characters."
        );
        let secret =
            parsed(json!({"a.example": [{"transform": {"headers": {"X": "${e2b.secrets.k}"}}}]}))
                .expect_err("placeholder");
        assert_eq!(
            secret.status(),
            http::StatusCode::NOT_IMPLEMENTED,
            "{secret}"
        );
    }

    #[test]
    fn a_domain_must_be_allowed_by_name_and_not_set_the_host() {
        let vault = |h: &str| {
            parsed(json!({"a.example": [{"transform": {"headers": {h: "v"}}}]}))
                .expect("ok")
                .expect("some")
        };
        let e2b = |allow: Value| {
            crate::egress::from_e2b(
                None,
                Some(&json!({"allowOut": allow, "denyOut": ["0.0.0.0/0"]})),
            )
            .expect("policy")
        };
        let e = fit(None, &vault("X")).expect_err("no policy");
        assert!(
            e.to_string().contains("must also be in network.allowOut"),
            "{e}"
        );
        let mut other = e2b(json!(["b.example"]));
        assert!(fit(other.as_mut(), &vault("X")).is_err());
        let mut p = e2b(json!(["a.example", "10.0.0.1"]));
        fit(p.as_mut(), &vault("X")).expect("fits");
        let ports: Vec<u32> = p
            .expect("policy")
            .rules
            .iter()
            .filter(|r| r.cidr == "a.example")
            .map(|r| r.port)
            .collect();
        assert_eq!(ports, [80], "443 closed");
        let mut p = e2b(json!(["a.example"]));
        let e = fit(p.as_mut(), &vault("Host")).expect_err("reserved");
        assert!(
            e.to_string().contains("reserved credential header name"),
            "{e}"
        );
    }

    #[test]
    fn a_transformed_domains_https_is_closed() {
        let vault = parsed(json!({"a.example": [{"transform": {"headers": {"X": "v"}}}]}))
            .expect("ok")
            .expect("some");
        let rule = |cidr: &str, port| pb::EgressRule {
            action: pb::EgressAction::Allow as i32,
            cidr: cidr.into(),
            port,
        };
        let mut p = pb::EgressPolicy {
            default_action: pb::EgressAction::Deny as i32,
            rules: vec![
                rule("a.example", 80),
                rule("a.example", 443),
                rule("b.example", 443),
            ],
        };
        close_https(&mut p, &domains(vault.bindings.iter().map(|b| &b.matcher)));
        assert_eq!(p.rules, [rule("a.example", 80), rule("b.example", 443)]);
    }
}
