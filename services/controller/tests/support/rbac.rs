//! RBAC as the apiserver's authorizer applies it, with the rules of the Helm
//! chart (deploy/helm/sandpool rendered by `helm template`, as
//! scripts/k8s-check.sh renders it). [`super::FakeApi::client`] is the
//! controller's client: every request it serves is checked against the rules
//! bound to the controller Deployment's service account, and a request the
//! chart does not grant ends the test process (a controller could swallow a
//! 403, so an answer alone would not fail the test).
//!
//! `SANDPOOL_FAKE_API_RECORD=<file>` appends every checked request to the
//! file (to see which grants the suite never uses).
//!
//! helm: `SANDPOOL_HELM`, else `.tools/bin/helm` (installed by
//! scripts/k8s-check.sh), else `helm` on PATH. Without helm the check is
//! skipped with a warning, except under `CI=true`, where it fails.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

/// One PolicyRule: `*` matches everything in its list.
#[derive(Debug, Clone)]
pub struct Rule {
    pub groups: Vec<String>,
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
    /// `resourceNames`: empty, any object; else only these.
    pub names: Vec<String>,
}

/// What the authorizer sees of a request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attrs {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    /// The object's name, when the request names one.
    pub name: Option<String>,
}

impl std::fmt::Display for Attrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let res = match &self.subresource {
            Some(s) => format!("{}/{s}", self.resource),
            None => self.resource.clone(),
        };
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(
            f,
            "{} {group} {res} in namespace {:?}",
            self.verb, self.namespace
        )
    }
}

/// The authorizer's attributes of `method path?query` (a resource request).
pub fn attrs_of(method: &http::Method, path: &str, query: &str) -> Option<Attrs> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest) = match segs.first() {
        Some(&"api") => (String::new(), segs.get(2..)?),
        Some(&"apis") => (segs.get(1)?.to_string(), segs.get(3..)?),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
        _ => (None, rest),
    };
    let resource = rest.first()?.to_string();
    let name = rest.get(1);
    let subresource = rest.get(2).map(|s| s.to_string());
    let watch = form_urlencoded::parse(query.as_bytes())
        .any(|(k, v)| k == "watch" && matches!(&*v, "true" | "True" | "1"));
    let verb = match (method.as_str(), name.is_some()) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some(Attrs {
        verb: verb.to_string(),
        group,
        resource,
        subresource,
        namespace,
        name: name.map(|n| n.to_string()),
    })
}

fn any_of(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

/// Whether `rules` (of a Role in `role_ns`, or a ClusterRole bound
/// cluster-wide when `role_ns` is None) allow `a`.
pub fn allows(rules: &[Rule], role_ns: Option<&str>, a: &Attrs) -> bool {
    if role_ns.is_some() && a.namespace.as_deref() != role_ns {
        return false;
    }
    let res = match &a.subresource {
        Some(s) => format!("{}/{s}", a.resource),
        None => a.resource.clone(),
    };
    rules.iter().any(|r| {
        any_of(&r.verbs, &a.verb)
            && any_of(&r.groups, &a.group)
            && r.resources
                .iter()
                .any(|x| x == "*" || *x == res || x.strip_suffix("/*") == Some(&a.resource))
            && (r.names.is_empty() || a.name.as_ref().is_some_and(|n| r.names.contains(n)))
    })
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The rules granted to a service account: one entry per binding, with the
/// namespace a RoleBinding limits them to.
#[derive(Debug, Clone, Default)]
pub struct Grants(pub Vec<(Option<String>, Vec<Rule>)>);

impl Grants {
    pub fn allows(&self, a: &Attrs) -> bool {
        self.0
            .iter()
            .any(|(ns, rules)| allows(rules, ns.as_deref(), a))
    }
}

/// The parsed documents of a `helm template` rendering.
pub fn parse_docs(text: &str) -> Vec<Value> {
    text.split("\n---")
        .filter_map(|d| serde_saphyr::from_str::<Value>(d).ok())
        .filter(|v| v.is_object())
        .collect()
}

/// What the chart grants service account `sa` of namespace `ns`.
pub fn grants_of(docs: &[Value], ns: &str, sa: &str) -> Grants {
    let role = |kind: &str, name: &str, in_ns: Option<&str>| -> Vec<Rule> {
        docs.iter()
            .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .filter(|d| in_ns.is_none_or(|n| d["metadata"]["namespace"] == n))
            .flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| Rule {
                groups: strings(&r["apiGroups"]),
                resources: strings(&r["resources"]),
                verbs: strings(&r["verbs"]),
                names: strings(&r["resourceNames"]),
            })
            .collect()
    };
    let mut out = Vec::new();
    for b in docs {
        let cluster = match b["kind"].as_str() {
            Some("RoleBinding") => false,
            Some("ClusterRoleBinding") => true,
            _ => continue,
        };
        let bound = b["subjects"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"] == ns)
        });
        if !bound {
            continue;
        }
        let bns = b["metadata"]["namespace"].as_str();
        let rref = &b["roleRef"];
        let name = rref["name"].as_str().unwrap_or_default();
        let rules = match rref["kind"].as_str() {
            Some("Role") => role("Role", name, bns),
            _ => role("ClusterRole", name, None),
        };
        let scope = if cluster { None } else { bns.map(String::from) };
        out.push((scope, rules));
    }
    Grants(out)
}

/// The service account a workload's pods run as, and whether they get a
/// token at all.
pub fn service_account_of(docs: &[Value], kind: &str, component: &str) -> Option<(String, bool)> {
    let d = docs.iter().find(|d| {
        d["kind"] == kind && d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    })?;
    let spec = &d["spec"]["template"]["spec"];
    let sa = spec["serviceAccountName"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let token = spec["automountServiceAccountToken"] != false;
    Some((sa, token))
}

pub fn workspace_root() -> PathBuf {
    // tests/support lives in services/controller (also when included by path)
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn helm() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("SANDPOOL_HELM") {
        return Some(h.into());
    }
    let local = workspace_root().join(".tools/bin/helm");
    if local.is_file() {
        return Some(local);
    }
    std::process::Command::new("helm")
        .arg("version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "helm".into())
}

/// The chart rendered with its defaults in namespace `sandpool`, as
/// scripts/k8s-check.sh renders it; None (with a warning) without helm,
/// except under CI=true.
pub fn rendered_chart() -> Option<&'static Vec<Value>> {
    static CHART: OnceLock<Option<Vec<Value>>> = OnceLock::new();
    CHART
        .get_or_init(|| {
            let Some(helm) = helm() else {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "helm is needed to check RBAC (run scripts/k8s-check.sh)"
                );
                eprintln!("warning: no helm, the chart's RBAC rules are not checked");
                return None;
            };
            let out = std::process::Command::new(helm)
                .args(["template", "sandpool"])
                .arg(workspace_root().join("deploy/helm/sandpool"))
                .args(["--namespace", CHART_NAMESPACE])
                .output()
                .expect("running helm template");
            assert!(
                out.status.success(),
                "helm template: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(parse_docs(&String::from_utf8_lossy(&out.stdout)))
        })
        .as_ref()
}

pub const CHART_NAMESPACE: &str = "sandpool";

/// What the chart grants the controller's service account (the controllers,
/// the gateway's KubeScheduler and `ensure_pools` all run in its pod).
pub fn controller_grants() -> Option<&'static Grants> {
    static GRANTS: OnceLock<Option<Grants>> = OnceLock::new();
    GRANTS
        .get_or_init(|| {
            let docs = rendered_chart()?;
            let (sa, token) =
                service_account_of(docs, "Deployment", "controller").expect("controller");
            assert!(token, "the controller needs its service account token");
            Some(grants_of(docs, CHART_NAMESPACE, &sa))
        })
        .as_ref()
}

/// The check [`super::FakeApi::client`] applies: requests in the tests'
/// namespace stand for requests in the chart's.
pub fn check_controller_request(method: &http::Method, path: &str, query: &str) {
    let Some(grants) = controller_grants() else {
        return;
    };
    let Some(mut a) = attrs_of(method, path, query) else {
        return;
    };
    if a.namespace.is_some() {
        a.namespace = Some(CHART_NAMESPACE.to_string());
    }
    if let Some(file) = std::env::var_os("SANDPOOL_FAKE_API_RECORD") {
        // the requests the suite made, one line each (to find unused grants)
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
        {
            // one write per line: test processes append concurrently
            let _ = f.write_all(format!("{a}\n").as_bytes());
        }
    }
    if !grants.allows(&a) {
        eprintln!(
            "RBAC: the chart does not let the controller's service account {a} \
             ({method} {path}?{query}); add the grant to deploy/helm/sandpool/templates/rbac.yaml"
        );
        std::process::abort();
    }
}
