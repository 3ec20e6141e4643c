//! Which binding an outbound request matches, and the headers it gets.

use super::{Binding, Secret, Vault};

/// What the proxy knows of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFacts<'a> {
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The request's host name (the `Host` header, without its port).
    pub host: &'a str,
    pub port: u16,
    pub method: &'a str,
    /// The request target's path (a query is ignored).
    pub path: &'a str,
}

/// One header to set on the request (any header of that name is dropped
/// first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectionHeader {
    pub name: String,
    pub value: Secret,
}

/// The outcome of matching a request against a vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// No binding matches: the request goes out unchanged.
    None,
    /// Exactly one binding matches at the best host precedence.
    Inject {
        binding: String,
        headers: Vec<InjectionHeader>,
    },
    /// Several match at the same precedence: upstream answers 403.
    Ambiguous,
}

/// 2 for an exact host, 1 for a `*.domain` wildcard (never its apex), 0 no.
fn host_precedence(host: &str, pattern: &str) -> u8 {
    match pattern.strip_prefix('*') {
        Some(suffix) => u8::from(host.ends_with(suffix) && host != &suffix[1..]),
        None => 2 * u8::from(host == pattern),
    }
}

fn path_matches(path: &str, pattern: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == pattern,
    }
}

fn precedence(b: &Binding, r: &RequestFacts<'_>, host: &str, path: &str) -> u8 {
    let m = &b.matcher;
    let method = r.method.to_ascii_uppercase();
    if !m.schemes.iter().any(|s| s.eq_ignore_ascii_case(r.scheme))
        || !m.ports.contains(&i64::from(r.port))
        || !m.methods.contains(&method)
        || !m.paths.iter().any(|p| path_matches(path, p))
    {
        return 0;
    }
    m.hosts
        .iter()
        .map(|p| host_precedence(host, p))
        .max()
        .unwrap_or(0)
}

impl Vault {
    /// The binding a request matches and the headers to inject.
    pub fn select(&self, r: &RequestFacts<'_>) -> Selection {
        if !self.exists {
            return Selection::None;
        }
        let host = r.host.trim_end_matches('.').to_ascii_lowercase();
        let path = match r.path.split_once('?') {
            Some((p, _)) => p,
            None => r.path,
        };
        let path = if path.is_empty() { "/" } else { path };
        let scored: Vec<(u8, &Binding)> = self
            .bindings
            .values()
            .map(|b| (precedence(b, r, &host, path), b))
            .filter(|(p, _)| *p > 0)
            .collect();
        let Some(best) = scored.iter().map(|(p, _)| *p).max() else {
            return Selection::None;
        };
        let mut top = scored.iter().filter(|(p, _)| *p == best);
        let (Some((_, b)), None) = (top.next(), top.next()) else {
            return Selection::Ambiguous;
        };
        Selection::Inject {
            binding: b.name.clone(),
            headers: self.render(b),
        }
    }

    fn render(&self, b: &Binding) -> Vec<InjectionHeader> {
        let value = |name: &str| {
            self.credentials
                .get(name)
                .map(|r| r.value.expose().to_owned())
                .unwrap_or_default()
        };
        let one = |name: &str, v: String| {
            vec![InjectionHeader {
                name: name.to_owned(),
                value: Secret::new(v),
            }]
        };
        match b.auth.kind.as_str() {
            "bearer" => one(
                "Authorization",
                format!("Bearer {}", value(&b.auth.credential)),
            ),
            "basic" => one(
                "Authorization",
                format!("Basic {}", value(&b.auth.credential)),
            ),
            "apiKey" => one(&b.auth.name, value(&b.auth.credential)),
            _ => b
                .auth
                .headers
                .iter()
                .map(|h| InjectionHeader {
                    name: h.name.clone(),
                    value: Secret::new(value(&h.credential)),
                })
                .collect(),
        }
    }
}

fn overlap<T: PartialEq>(a: &[T], b: &[T]) -> bool {
    a.iter().any(|x| b.contains(x))
}

fn paths_overlap(a: &str, b: &str) -> bool {
    match (a.strip_suffix('*'), b.strip_suffix('*')) {
        (Some(pa), Some(pb)) => pa.starts_with(pb) || pb.starts_with(pa),
        (Some(pa), None) => b.starts_with(pa),
        (None, Some(pb)) => a.starts_with(pb),
        (None, None) => a == b,
    }
}

fn hosts_ambiguous(a: &str, b: &str) -> bool {
    match (a.strip_prefix("*."), b.strip_prefix("*.")) {
        (Some(x), Some(y)) => {
            x == y || x.ends_with(&format!(".{y}")) || y.ends_with(&format!(".{x}"))
        }
        (None, None) => a == b,
        _ => false,
    }
}

/// Whether two bindings could match one request at the same precedence.
pub(super) fn ambiguous(a: &Binding, b: &Binding) -> bool {
    let (x, y) = (&a.matcher, &b.matcher);
    overlap(&x.schemes, &y.schemes)
        && overlap(&x.ports, &y.ports)
        && overlap(&x.methods, &y.methods)
        && x.paths
            .iter()
            .any(|p| y.paths.iter().any(|q| paths_overlap(p, q)))
        && x.hosts
            .iter()
            .any(|h| y.hosts.iter().any(|g| hosts_ambiguous(h, g)))
}
