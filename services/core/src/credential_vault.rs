//! OpenSandbox's Credential Vault (pure): named secrets and bindings that
//! say which outbound requests (scheme, host, port, method, path) get which
//! authentication headers. A vault is created once, changed by revisioned
//! patches and read back without its secrets.
//!
//! The rules follow upstream's egress sidecar (`pkg/credentialvault`):
//! defaults (`https`, port 443, the five usual methods, `/*`), FQDN-only
//! hosts (`*.domain` wildcards), reserved header names, unknown credential
//! references, ambiguous bindings and hosts not covered by an explicit
//! allow rule of the sandbox's egress policy are all refused.

use std::collections::BTreeMap;
use std::fmt;

use crate::egress::{EgressAction, EgressPolicy};

mod matching;
mod normalize;

pub use matching::{InjectionHeader, RequestFacts, Selection};

/// Most credentials, and most bindings, one vault may hold.
pub const MAX_ENTRIES: usize = 256;

/// A secret value: never shown by `Debug`, never in a sanitized state.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Why a vault call failed; the HTTP status it maps to is in the name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    #[error("credential vault not found")]
    NotFound,
    #[error("credential vault already exists")]
    Exists,
    #[error("expectedRevision {expected} does not match current revision {current}")]
    RevisionMismatch { expected: i64, current: i64 },
    #[error("{0}")]
    Invalid(String),
    /// Asks for something this platform does not do (HTTP 501).
    #[error("{0} is not supported by sandpool")]
    Unsupported(String),
}

fn invalid(msg: impl Into<String>) -> VaultError {
    VaultError::Invalid(msg.into())
}

/// `source` of a credential (only `inline`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSource {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub value: Option<Secret>,
}

/// A credential as written by a client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub name: String,
    #[serde(default)]
    pub source: CredentialSource,
}

/// What requests a binding applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(default)]
    pub schemes: Vec<String>,
    #[serde(default)]
    pub ports: Vec<i64>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
}

/// One header of a `customHeaders` auth.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomHeader {
    pub name: String,
    pub credential: String,
}

/// How a binding's credential is rendered into the request.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<CustomHeader>,
}

/// A binding as written by a client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: Match,
    #[serde(default)]
    pub auth: Auth,
}

/// `POST /credential-vault`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    #[serde(default)]
    pub credentials: Vec<Credential>,
    #[serde(default)]
    pub bindings: Vec<Binding>,
}

/// add / replace / delete of one kind.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MutationSet<T> {
    #[serde(default = "Vec::new")]
    pub add: Vec<T>,
    #[serde(default = "Vec::new")]
    pub replace: Vec<T>,
    #[serde(default)]
    pub delete: Vec<String>,
}

/// `PATCH /credential-vault`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MutationRequest {
    #[serde(default)]
    pub expected_revision: Option<i64>,
    #[serde(default)]
    pub credentials: Option<MutationSet<Credential>>,
    #[serde(default)]
    pub bindings: Option<MutationSet<Binding>>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Record {
    value: Secret,
    source_type: String,
    revision: i64,
}

/// A credential without its value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialMetadata {
    pub name: String,
    pub source_type: String,
    pub revision: i64,
}

/// A binding's auth without credential references.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuthMetadata {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// A binding as read back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BindingMetadata {
    pub name: String,
    pub revision: i64,
    #[serde(rename = "match")]
    pub matcher: Match,
    pub auth: AuthMetadata,
}

/// The vault as read back: no secret in it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SanitizedState {
    pub revision: i64,
    pub credentials: Vec<CredentialMetadata>,
    pub bindings: Vec<BindingMetadata>,
}

/// A sandbox's vault: absent until created.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Vault {
    exists: bool,
    revision: i64,
    credentials: BTreeMap<String, Record>,
    bindings: BTreeMap<String, Binding>,
}

impl Vault {
    /// Whether a vault has been created (and not deleted).
    pub fn exists(&self) -> bool {
        self.exists
    }

    /// Whether the vault has a binding (only then is traffic redirected).
    pub fn has_bindings(&self) -> bool {
        self.exists && !self.bindings.is_empty()
    }

    /// Create the vault; `policy` is the sandbox's egress policy.
    pub fn create(
        &mut self,
        req: CreateRequest,
        policy: &EgressPolicy,
    ) -> Result<SanitizedState, VaultError> {
        if self.exists {
            return Err(VaultError::Exists);
        }
        let mut credentials = BTreeMap::new();
        for c in req.credentials {
            let (name, rec) = normalize::credential(c, 1)?;
            if credentials.insert(name.clone(), rec).is_some() {
                return Err(invalid(format!("duplicate credential name {name:?}")));
            }
        }
        let mut bindings = BTreeMap::new();
        for b in req.bindings {
            let b = normalize::binding(b)?;
            if let Some(dup) = bindings.insert(b.name.clone(), b) {
                return Err(invalid(format!("duplicate binding name {:?}", dup.name)));
            }
        }
        validate(&credentials, &bindings, policy)?;
        *self = Vault {
            exists: true,
            revision: 1,
            credentials,
            bindings,
        };
        Ok(self.sanitized_state())
    }

    /// Apply a patch: deletes, then replaces, then adds, each kind at once;
    /// the revision goes up by one.
    pub fn patch(
        &mut self,
        req: MutationRequest,
        policy: &EgressPolicy,
    ) -> Result<SanitizedState, VaultError> {
        if !self.exists {
            return Err(VaultError::NotFound);
        }
        if let Some(expected) = req.expected_revision
            && expected != self.revision
        {
            return Err(VaultError::RevisionMismatch {
                expected,
                current: self.revision,
            });
        }
        let next = self.revision + 1;
        let mut credentials = self.credentials.clone();
        let mut bindings = self.bindings.clone();
        if let Some(m) = req.credentials {
            normalize::apply(&mut credentials, m, "credential", |c| {
                normalize::credential(c, next)
            })?;
        }
        if let Some(m) = req.bindings {
            normalize::apply(&mut bindings, m, "binding", |b| {
                normalize::binding(b).map(|b| (b.name.clone(), b))
            })?;
        }
        validate(&credentials, &bindings, policy)?;
        self.revision = next;
        self.credentials = credentials;
        self.bindings = bindings;
        Ok(self.sanitized_state())
    }

    /// Remove the vault.
    pub fn delete(&mut self) -> Result<(), VaultError> {
        if !self.exists {
            return Err(VaultError::NotFound);
        }
        *self = Vault::default();
        Ok(())
    }

    /// The vault without secrets (404 when none was created).
    pub fn sanitized(&self) -> Result<SanitizedState, VaultError> {
        if !self.exists {
            return Err(VaultError::NotFound);
        }
        Ok(self.sanitized_state())
    }

    fn sanitized_state(&self) -> SanitizedState {
        SanitizedState {
            revision: self.revision,
            credentials: self
                .credentials
                .iter()
                .map(|(name, r)| CredentialMetadata {
                    name: name.clone(),
                    source_type: r.source_type.clone(),
                    revision: r.revision,
                })
                .collect(),
            bindings: self
                .bindings
                .values()
                .map(|b| BindingMetadata {
                    name: b.name.clone(),
                    revision: self.revision,
                    matcher: b.matcher.clone(),
                    auth: AuthMetadata {
                        kind: b.auth.kind.clone(),
                        name: if b.auth.kind == "apiKey" {
                            b.auth.name.clone()
                        } else {
                            String::new()
                        },
                    },
                })
                .collect(),
        }
    }

    /// Whether every binding is one the node's proxy can serve: plain
    /// `http` (no TLS interception: `https` is [`VaultError::Unsupported`])
    /// on the intercepted port `http_port` only.
    pub fn check_interceptable(&self, http_port: u16) -> Result<(), VaultError> {
        for b in self.bindings.values() {
            if b.matcher.schemes.iter().any(|s| s != "http") {
                return Err(VaultError::Unsupported(format!(
                    "binding {:?}: scheme https (TLS interception; give match.schemes [\"http\"])",
                    b.name
                )));
            }
            if let Some(p) = b.matcher.ports.iter().find(|p| **p != i64::from(http_port)) {
                return Err(invalid(format!(
                    "binding {:?} port {p} is not a configured transparent intercept port (sandpool intercepts port {http_port})",
                    b.name
                )));
            }
        }
        Ok(())
    }

    /// Re-check the bindings against a new egress policy (a policy change
    /// must not leave a binding whose host is no longer explicitly allowed).
    pub fn check_policy(&self, policy: &EgressPolicy) -> Result<(), VaultError> {
        if !self.exists || self.bindings.is_empty() {
            return Ok(());
        }
        validate(&self.credentials, &self.bindings, policy)
    }

    /// Every secret value and rendered header value, to redact from
    /// responses.
    pub fn redactions(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self.credentials.values() {
            out.push(r.value.expose().to_owned());
            out.push(format!("Bearer {}", r.value.expose()));
            out.push(format!("Basic {}", r.value.expose()));
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.len()));
        out.dedup();
        out
    }
}

fn validate(
    credentials: &BTreeMap<String, Record>,
    bindings: &BTreeMap<String, Binding>,
    policy: &EgressPolicy,
) -> Result<(), VaultError> {
    if credentials.len() > MAX_ENTRIES || bindings.len() > MAX_ENTRIES {
        return Err(invalid(format!(
            "a credential vault holds at most {MAX_ENTRIES} credentials and {MAX_ENTRIES} bindings"
        )));
    }
    if !bindings.is_empty() && !policy.rules.iter().any(|r| r.action == EgressAction::Allow) {
        return Err(invalid(
            "credential bindings require explicit networkPolicy.egress allow rules",
        ));
    }
    for b in bindings.values() {
        for name in normalize::credential_refs(&b.auth) {
            if !credentials.contains_key(name) {
                return Err(invalid(format!(
                    "binding {:?} references unknown credential {name:?}",
                    b.name
                )));
            }
        }
        for host in &b.matcher.hosts {
            if !normalize::explicitly_allowed(policy, host) {
                return Err(invalid(format!(
                    "binding {:?} host {host:?} is not covered by an explicit allow egress rule",
                    b.name
                )));
            }
        }
    }
    let list: Vec<&Binding> = bindings.values().collect();
    for (i, a) in list.iter().enumerate() {
        for b in &list[i + 1..] {
            if matching::ambiguous(a, b) {
                return Err(invalid(format!(
                    "bindings {:?} and {:?} can match the same request",
                    a.name, b.name
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
