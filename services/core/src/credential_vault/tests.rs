use serde_json::json;

use super::*;
use crate::egress::EgressRule;

fn policy(default: EgressAction, allow: &[&str]) -> EgressPolicy {
    EgressPolicy {
        default_action: default,
        rules: allow
            .iter()
            .map(|t| EgressRule {
                action: EgressAction::Allow,
                cidr: (*t).into(),
                port: 0,
            })
            .collect(),
    }
}

fn allow_target() -> EgressPolicy {
    policy(EgressAction::Allow, &["target.test"])
}

fn create(body: serde_json::Value) -> CreateRequest {
    serde_json::from_value(body).expect("create request")
}

fn patch(body: serde_json::Value) -> MutationRequest {
    serde_json::from_value(body).expect("patch request")
}

fn binding(name: &str, path: &str, auth: serde_json::Value) -> serde_json::Value {
    json!({"name": name, "match": {"schemes": ["http"], "ports": [80],
        "hosts": ["target.test"], "methods": ["GET"], "paths": [path]}, "auth": auth})
}

fn facts<'a>(path: &'a str, host: &'a str) -> RequestFacts<'a> {
    RequestFacts {
        scheme: "http",
        host,
        port: 80,
        method: "get",
        path,
    }
}

fn injected(v: &Vault, path: &str) -> Vec<(String, String)> {
    match v.select(&facts(path, "Target.Test.")) {
        Selection::Inject { headers, .. } => headers
            .into_iter()
            .map(|h| (h.name, h.value.expose().to_owned()))
            .collect(),
        other => panic!("{path}: {other:?}"),
    }
}

fn all_auth_types() -> Vault {
    let mut v = Vault::default();
    v.create(
        create(json!({
            "credentials": [
                {"name": "bt", "source": {"value": "s-bearer"}},
                {"name": "ba", "source": {"type": "inline", "value": "dXNlcjpwYXNz"}},
                {"name": "ak", "source": {"value": "s-api"}},
                {"name": "id", "source": {"value": "s-id"}},
                {"name": "sec", "source": {"value": "s-secret"}}
            ],
            "bindings": [
                binding("b", "/bearer", json!({"type": "bearer", "credential": "bt"})),
                binding("c", "/basic", json!({"type": "basic", "credential": "ba"})),
                binding("d", "/api-key", json!({"type": "apiKey", "name": "x-api-key", "credential": "ak"})),
                binding("e", "/custom*", json!({"type": "customHeaders", "headers": [
                    {"name": "X-Client-Id", "credential": "id"},
                    {"name": "x-client-secret", "credential": "sec"}]}))
            ]
        })),
        &allow_target(),
    )
    .expect("create");
    v
}

#[test]
fn each_auth_type_renders_its_headers_and_the_state_holds_no_secret() {
    let v = all_auth_types();
    assert_eq!(
        injected(&v, "/bearer"),
        [("Authorization".into(), "Bearer s-bearer".into())]
    );
    assert_eq!(
        injected(&v, "/basic?x=1"),
        [("Authorization".into(), "Basic dXNlcjpwYXNz".into())]
    );
    assert_eq!(
        injected(&v, "/api-key"),
        [("X-Api-Key".into(), "s-api".into())]
    );
    assert_eq!(
        injected(&v, "/custom-headers"),
        [
            ("X-Client-Id".into(), "s-id".into()),
            ("X-Client-Secret".into(), "s-secret".into())
        ]
    );
    let state = serde_json::to_string(&v.sanitized().expect("state")).expect("json");
    for secret in ["s-bearer", "dXNlcjpwYXNz", "s-api", "s-id", "s-secret"] {
        assert!(!state.contains(secret), "{secret} in {state}");
        assert!(!format!("{v:?}").contains(secret), "{secret} in Debug");
    }
    assert!(
        state.contains(r#""auth":{"type":"apiKey","name":"X-Api-Key"}"#),
        "{state}"
    );
    assert!(state.contains(r#""sourceType":"inline""#), "{state}");
}

#[test]
fn requests_outside_every_binding_are_left_alone() {
    let v = all_auth_types();
    for (scheme, host, port, method, path) in [
        ("https", "target.test", 80, "GET", "/bearer"),
        ("http", "other.test", 80, "GET", "/bearer"),
        ("http", "target.test", 8080, "GET", "/bearer"),
        ("http", "target.test", 80, "POST", "/bearer"),
        ("http", "target.test", 80, "GET", "/bearer/more"),
    ] {
        let r = RequestFacts {
            scheme,
            host,
            port,
            method,
            path,
        };
        assert_eq!(v.select(&r), Selection::None, "{r:?}");
    }
    assert_eq!(
        Vault::default().select(&facts("/bearer", "target.test")),
        Selection::None
    );
}

#[test]
fn defaults_fill_an_omitted_match_as_upstream() {
    let mut v = Vault::default();
    let s = v
        .create(
            create(json!({
                "credentials": [{"name": "k", "source": {"value": "v"}}],
                "bindings": [{"name": "b", "match": {"hosts": ["Target.test."]},
                    "auth": {"type": "bearer", "credential": "k"}}]
            })),
            &allow_target(),
        )
        .expect("create");
    let m = &s.bindings[0].matcher;
    assert_eq!(m.schemes, ["https"]);
    assert_eq!(m.ports, [443]);
    assert_eq!(m.methods, ["GET", "POST", "PUT", "PATCH", "DELETE"]);
    assert_eq!(m.paths, ["/*"]);
    assert_eq!(m.hosts, ["target.test"]);
}

#[test]
fn patches_add_replace_and_delete_with_revisions() {
    let mut v = Vault::default();
    let p = allow_target();
    assert_eq!(v.sanitized(), Err(VaultError::NotFound));
    assert_eq!(
        v.create(CreateRequest::default(), &p).expect("c").revision,
        1
    );
    assert_eq!(
        v.create(CreateRequest::default(), &p),
        Err(VaultError::Exists)
    );
    let s = v
        .patch(
            patch(json!({"expectedRevision": 1,
                "credentials": {"add": [{"name": "t", "source": {"value": "one"}}]},
                "bindings": {"add": [binding("x", "/x", json!({"type": "apiKey", "name": "X-T", "credential": "t"}))]}})),
            &p,
        )
        .expect("add");
    assert_eq!((s.revision, s.credentials[0].revision), (2, 2));
    assert_eq!(injected(&v, "/x"), [("X-T".into(), "one".into())]);
    assert_eq!(
        v.patch(patch(json!({"expectedRevision": 1})), &p),
        Err(VaultError::RevisionMismatch {
            expected: 1,
            current: 2
        })
    );
    let s = v
        .patch(
            patch(json!({"credentials": {"replace": [{"name": "t", "source": {"value": "two"}}]}})),
            &p,
        )
        .expect("replace");
    assert_eq!(s.revision, 3);
    assert_eq!(injected(&v, "/x"), [("X-T".into(), "two".into())]);
    // a credential still referenced cannot go
    let err = v
        .patch(patch(json!({"credentials": {"delete": ["t"]}})), &p)
        .expect_err("referenced");
    assert!(
        err.to_string().contains("unknown credential \"t\""),
        "{err}"
    );
    let s = v
        .patch(patch(json!({"bindings": {"delete": ["x"]}})), &p)
        .expect("delete binding");
    assert!(s.bindings.is_empty());
    assert_eq!(v.select(&facts("/x", "target.test")), Selection::None);
    v.delete().expect("delete");
    assert_eq!(v.delete(), Err(VaultError::NotFound));
}

fn create_err(body: serde_json::Value, p: &EgressPolicy) -> String {
    Vault::default()
        .create(create(body), p)
        .expect_err("refused")
        .to_string()
}

#[test]
fn bad_vaults_are_refused_naming_the_reason() {
    let p = allow_target();
    let cred = json!([{"name": "k", "source": {"value": "v"}}]);
    let with = |b: serde_json::Value| json!({"credentials": cred, "bindings": [b]});
    let bearer = json!({"type": "bearer", "credential": "k"});
    for (body, want) in [
        (
            json!({"credentials": [{"name": "k", "source": {"value": ""}}]}),
            "inline value cannot be empty",
        ),
        (
            json!({"credentials": [{"name": "k", "source": {"type": "env", "value": "x"}}]}),
            "unsupported credential source type",
        ),
        (
            json!({"credentials": [{"name": " ", "source": {"value": "x"}}]}),
            "credential name cannot be blank",
        ),
        (
            with(json!({"name": "b", "match": {"hosts": ["10.0.0.1"]}, "auth": bearer})),
            "not an IP address",
        ),
        (
            with(json!({"name": "b", "match": {"hosts": ["localhost"]}, "auth": bearer})),
            "must be an FQDN",
        ),
        (
            with(json!({"name": "b", "match": {"hosts": []}, "auth": bearer})),
            "match.hosts cannot be empty",
        ),
        (
            with(
                json!({"name": "b", "match": {"hosts": ["target.test"], "schemes": ["ftp"]}, "auth": bearer}),
            ),
            "unsupported scheme",
        ),
        (
            with(
                json!({"name": "b", "match": {"hosts": ["target.test"], "paths": ["x"]}, "auth": bearer}),
            ),
            "path pattern must start with /",
        ),
        (
            with(
                json!({"name": "b", "match": {"hosts": ["target.test"]}, "auth": {"type": "apiKey", "name": "Host", "credential": "k"}}),
            ),
            "reserved credential header name",
        ),
        (
            with(
                json!({"name": "b", "match": {"hosts": ["target.test"]}, "auth": {"type": "apiKey", "name": "a b", "credential": "k"}}),
            ),
            "invalid credential header name",
        ),
        (
            with(
                json!({"name": "b", "match": {"hosts": ["target.test"]}, "auth": {"type": "oauth", "credential": "k"}}),
            ),
            "unsupported auth type",
        ),
        (
            with(
                json!({"name": "b", "match": {"hosts": ["target.test"]}, "auth": {"type": "bearer", "credential": "nope"}}),
            ),
            "unknown credential \"nope\"",
        ),
        (
            with(json!({"name": "b", "match": {"hosts": ["other.test"]}, "auth": bearer})),
            "not covered by an explicit allow egress rule",
        ),
    ] {
        let err = create_err(body.clone(), &p);
        assert!(err.contains(want), "{body}: {err}");
    }
    let two = json!({"credentials": cred, "bindings": [
        {"name": "a", "match": {"hosts": ["target.test"], "paths": ["/v1/*"]}, "auth": bearer},
        {"name": "b", "match": {"hosts": ["target.test"], "paths": ["/v1/x"]}, "auth": bearer}]});
    assert!(create_err(two, &p).contains("can match the same request"));
    // bindings need an explicit allow rule even when the default allows
    let body = with(json!({"name": "b", "match": {"hosts": ["target.test"]}, "auth": bearer}));
    assert!(
        create_err(body.clone(), &policy(EgressAction::Allow, &[]))
            .contains("require explicit networkPolicy.egress allow rules")
    );
    // a wildcard allow covers its subdomains
    Vault::default()
        .create(create(body), &policy(EgressAction::Deny, &["*.test"]))
        .expect("wildcard allow covers target.test");
    assert!(serde_json::from_value::<CreateRequest>(json!({"extra": 1})).is_err());
}

#[test]
fn an_exact_host_beats_a_wildcard_and_equal_matches_are_ambiguous() {
    let mut v = Vault::default();
    let bearer = json!({"type": "bearer", "credential": "k"});
    let m = |hosts: serde_json::Value| json!({"schemes": ["http"], "ports": [80], "hosts": hosts});
    v.create(
        create(
            json!({"credentials": [{"name": "k", "source": {"value": "v"}}], "bindings": [
            {"name": "wild", "match": m(json!(["*.ex.test"])), "auth": bearer},
            {"name": "exact", "match": m(json!(["target.ex.test"])), "auth": bearer}]}),
        ),
        &policy(EgressAction::Deny, &["*.ex.test"]),
    )
    .expect("create");
    let pick = |host| match v.select(&facts("/", host)) {
        Selection::Inject { binding, .. } => binding,
        other => format!("{other:?}"),
    };
    assert_eq!(pick("target.ex.test"), "exact");
    assert_eq!(pick("a.ex.test"), "wild");
    assert_eq!(pick("ex.test"), "None");
}

#[test]
fn a_policy_change_that_uncovers_a_binding_host_is_refused() {
    let v = all_auth_types();
    assert!(v.check_policy(&allow_target()).is_ok());
    let err = v
        .check_policy(&policy(EgressAction::Allow, &["else.test"]))
        .expect_err("uncovered");
    assert!(err.to_string().contains("target.test"), "{err}");
}

#[test]
fn only_plain_http_on_the_intercepted_port_is_interceptable() {
    let v = all_auth_types();
    assert_eq!(v.check_interceptable(80), Ok(()));
    let err = v.check_interceptable(8080).expect_err("port");
    assert!(
        err.to_string()
            .contains("port 80 is not a configured transparent intercept port"),
        "{err}"
    );
    let mut tls = Vault::default();
    tls.create(
        create(
            json!({"credentials": [{"name": "k", "source": {"value": "v"}}],
            "bindings": [{"name": "t", "match": {"hosts": ["target.test"]},
                "auth": {"type": "bearer", "credential": "k"}}]}),
        ),
        &allow_target(),
    )
    .expect("create");
    let err = tls.check_interceptable(80).expect_err("https by default");
    assert!(matches!(err, VaultError::Unsupported(_)), "{err:?}");
    assert!(err.to_string().contains("scheme https"), "{err}");
}
