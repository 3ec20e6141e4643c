//! A stateful fake kube-apiserver behind kube-rs's `tower-test` mock
//! service. There is no real apiserver on these machines, so the controllers
//! are tested against this: objects with uid, resourceVersion (409 on stale
//! writes), generateName, label selectors, merge and JSON patches, the status
//! subresource, the scale subresource ([`scale`]), finalizers with
//! deletionTimestamp, and owner-reference garbage collection. Every request is logged so tests can assert what was sent.
//! Collections can be watched (`?watch=true`, from a resourceVersion, with a
//! label selector): every write is recorded as a watch event, and open
//! watches stream the events after theirs as JSON lines until the client
//! drops them or a test ends them ([`FakeApi::end_watches`]). Simplified: an
//! object that stops matching a watch's selector sends nothing (a real
//! apiserver sends DELETED).

#![allow(dead_code)]

pub mod node_agent;
pub mod rbac;
pub mod rules;
pub mod scale;
pub mod schema;
pub mod webhook;

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::client::Body;
use serde_json::{Value, json};

pub type Hook = Box<dyn FnMut(&Method, &str, &mut Store) + Send>;

#[derive(Default)]
pub struct Store {
    /// collection path (e.g. `/api/v1/namespaces/ns/pods`) -> name -> object
    pub objects: BTreeMap<String, BTreeMap<String, Value>>,
    rv: u64,
    names: u64,
    /// The cluster's RuntimeClasses, when set: a pod naming another one is
    /// refused as the RuntimeClass admission plugin refuses it (403).
    pub runtime_classes: Option<Vec<String>>,
    /// Every write as a watch event: (resourceVersion, collection, type,
    /// object).
    events: Vec<(u64, String, &'static str, Value)>,
    /// CRD schemas written objects are pruned and defaulted by
    /// ([`FakeApi::enforce_schemas`]; none by default).
    pub schemas: schema::Schemas,
    /// The scale subresources of those CRDs.
    pub scales: scale::Scales,
}

/// The fake's response bodies: whole, or a watch's event stream.
pub type FakeBody = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Debug, Clone)]
pub struct Logged {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
    pub status: u16,
}

#[derive(Clone, Default)]
pub struct FakeApi {
    pub store: Arc<Mutex<Store>>,
    pub log: Arc<Mutex<Vec<Logged>>>,
    hooks: Arc<Mutex<Vec<Hook>>>,
    /// Woken after every request and every `with_store`.
    changed: Arc<tokio::sync::Notify>,
    /// Bumped by `end_watches`: open watches with an older epoch end.
    watch_epoch: Arc<AtomicU64>,
    /// CRDs converting through a webhook ([`FakeApi::install_crds`]).
    webhooks: Arc<Mutex<webhook::Webhooks>>,
}

pub fn pods_path(ns: &str) -> String {
    format!("/api/v1/namespaces/{ns}/pods")
}

pub fn cr_path(group: &str, plural: &str, ns: &str) -> String {
    format!("/apis/{group}/v1alpha1/namespaces/{ns}/{plural}")
}

/// The store collection of OpenSandbox Pools in `ns`.
pub fn pools_path(ns: &str) -> String {
    cr_path("sandbox.opensandbox.io", "pools", ns)
}

/// The store collection of OpenSandbox BatchSandboxes in `ns`.
pub fn batches_path(ns: &str) -> String {
    cr_path("sandbox.opensandbox.io", "batchsandboxes", ns)
}

/// The storage collection of `coll`: the agent-sandbox kinds are served at
/// v1alpha1 and v1beta1 from one storage (conversion strategy None: the
/// apiserver only rewrites `apiVersion`), so both versions map to v1beta1.
pub fn storage_coll(coll: &str) -> String {
    for group in [
        "/apis/agents.x-k8s.io/",
        "/apis/extensions.agents.x-k8s.io/",
    ] {
        if let Some(rest) = coll.strip_prefix(group)
            && let Some(tail) = rest.strip_prefix("v1alpha1/")
        {
            return format!("{group}v1beta1/{tail}");
        }
    }
    coll.to_string()
}

/// `apiVersion` of a request path (`/apis/<group>/<version>/...`).
fn api_version_of(path: &str) -> Option<String> {
    let mut segs = path.split('/').filter(|s| !s.is_empty());
    (segs.next() == Some("apis")).then_some(())?;
    Some(format!("{}/{}", segs.next()?, segs.next()?))
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn kind_of_plural(plural: &str) -> &'static str {
    match plural {
        "pods" => "Pod",
        "pools" => "Pool",
        "batchsandboxes" => "BatchSandbox",
        "sandboxes" => "Sandbox",
        "sandboxtemplates" => "SandboxTemplate",
        "sandboxclaims" => "SandboxClaim",
        "sandboxwarmpools" => "SandboxWarmPool",
        "services" => "Service",
        "networkpolicies" => "NetworkPolicy",
        "persistentvolumeclaims" => "PersistentVolumeClaim",
        "leases" => "Lease",
        "events" => "Event",
        _ => "Unknown",
    }
}

/// `a=b`, `a!=b`, `a`, `!a`, comma-separated.
/// Whether `obj` matches field selector `fields` (`metadata.name=` and
/// `metadata.namespace=` terms, comma-separated; empty matches all).
pub fn fields_match(fields: &str, obj: &Value) -> bool {
    fields.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (key, want) = term.split_once('=').unwrap_or((term, ""));
        match key {
            "metadata.name" | "metadata.namespace" => {
                let field = key.trim_start_matches("metadata.");
                obj["metadata"][field].as_str() == Some(want)
            }
            other => panic!("the fake apiserver has no field selector {other:?}"),
        }
    })
}

pub fn selector_matches(selector: &str, labels: &serde_json::Map<String, Value>) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        if let Some(k) = term.strip_prefix('!') {
            get(k).is_none()
        } else if let Some((k, v)) = term.split_once("!=") {
            get(k) != Some(v)
        } else if let Some((k, v)) = term.split_once('=') {
            get(k) == Some(v.trim_start_matches('='))
        } else {
            get(term).is_some()
        }
    })
}

fn pointer_parts(path: &str) -> Vec<String> {
    path.split('/')
        .skip(1)
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// RFC 6902 subset: test, add, remove, replace.
fn json_patch(target: &mut Value, ops: &[Value]) -> Result<(), String> {
    for op in ops {
        let path = op["path"].as_str().ok_or("op without path")?;
        let parts = pointer_parts(path);
        let (last, parent_parts) = parts.split_last().ok_or("empty path")?;
        let mut parent = &mut *target;
        for p in parent_parts {
            parent = match parent {
                Value::Object(m) => m.get_mut(p).ok_or(format!("missing {p}"))?,
                Value::Array(a) => a
                    .get_mut(p.parse::<usize>().map_err(|e| e.to_string())?)
                    .ok_or("bad index")?,
                _ => return Err(format!("cannot walk into {p}")),
            };
        }
        let current = match &*parent {
            Value::Object(m) => m.get(last).cloned(),
            Value::Array(a) => last.parse::<usize>().ok().and_then(|i| a.get(i).cloned()),
            _ => None,
        };
        match op["op"].as_str() {
            Some("test") => {
                if current.unwrap_or(Value::Null) != op["value"] {
                    return Err(format!("test failed at {path}"));
                }
            }
            Some("add") | Some("replace") => match parent {
                Value::Object(m) => {
                    m.insert(last.clone(), op["value"].clone());
                }
                Value::Array(a) if last == "-" => a.push(op["value"].clone()),
                Value::Array(a) => {
                    let i: usize = last.parse().map_err(|_| "bad index")?;
                    if op["op"] == "add" {
                        a.insert(i, op["value"].clone())
                    } else {
                        a[i] = op["value"].clone()
                    }
                }
                _ => return Err("bad parent".into()),
            },
            Some("remove") => match parent {
                Value::Object(m) => {
                    m.remove(last).ok_or("nothing to remove")?;
                }
                Value::Array(a) => {
                    let i: usize = last.parse().map_err(|_| "bad index")?;
                    if i >= a.len() {
                        return Err("nothing to remove".into());
                    }
                    a.remove(i);
                }
                _ => return Err("bad parent".into()),
            },
            other => return Err(format!("unsupported op {other:?}")),
        }
    }
    Ok(())
}

impl Store {
    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    /// Store `obj` as `name` in `coll` under a new resourceVersion; the
    /// stored object.
    fn write(&mut self, coll: &str, name: &str, mut obj: Value) -> Value {
        if let Some(s) = schema::schema_for(&self.schemas, &storage_coll(coll)) {
            schema::prune_and_default(s, &mut obj, true);
        }
        obj["metadata"]["resourceVersion"] = json!(self.next_rv());
        let old = self
            .objects
            .entry(storage_coll(coll))
            .or_default()
            .insert(name.to_string(), obj.clone());
        let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
        self.record(coll, kind, &obj);
        obj
    }

    /// A client's replace of `name` in `coll` (a PUT, or a patch applied):
    /// stored as [`Store::write`] does, with the generation the apiserver
    /// gives it ([`rules::next_generation`]) once pruned and defaulted.
    fn replace(&mut self, coll: &str, name: &str, mut obj: Value) -> Value {
        if rules::tracks_generation(coll) {
            if let Some(s) = schema::schema_for(&self.schemas, &storage_coll(coll)) {
                schema::prune_and_default(s, &mut obj, true);
            }
            let plural = coll.rsplit('/').next().unwrap_or_default();
            let old = self.get(coll, name);
            obj["metadata"]["generation"] = json!(rules::next_generation(plural, old, &obj));
        }
        self.write(coll, name, obj)
    }

    /// A watch event for `obj`, at the store's current resourceVersion.
    fn record(&mut self, coll: &str, kind: &'static str, obj: &Value) {
        self.events
            .push((self.rv, storage_coll(coll), kind, obj.clone()));
    }

    /// The events in `coll` after resourceVersion `after` whose object
    /// matches `selector`, as watch JSON lines; and the last one's rv.
    fn events_after(
        &self,
        coll: &str,
        (selector, fields): (&str, &str),
        after: u64,
    ) -> (Vec<Bytes>, u64) {
        let empty = serde_json::Map::new();
        let mut last = after;
        let mut out = Vec::new();
        let coll = storage_coll(coll);
        for (rv, c, kind, obj) in &self.events {
            if *rv <= after || *c != coll {
                continue;
            }
            last = *rv;
            let labels = obj["metadata"]["labels"].as_object().unwrap_or(&empty);
            if selector_matches(selector, labels) && fields_match(fields, obj) {
                let mut line =
                    serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap_or_default();
                line.push(b'\n');
                out.push(Bytes::from(line));
            }
        }
        (out, last.max(after))
    }

    pub fn get(&self, coll: &str, name: &str) -> Option<&Value> {
        self.objects.get(&storage_coll(coll))?.get(name)
    }

    pub fn list(&self, coll: &str) -> Vec<Value> {
        self.objects
            .get(&storage_coll(coll))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Insert or overwrite an object as a test fixture (fills uid/rv).
    pub fn put(&mut self, coll: &str, mut obj: Value) -> Value {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ns = coll
            .split('/')
            .skip_while(|s| *s != "namespaces")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let meta = &mut obj["metadata"];
        if meta.get("uid").is_none() {
            meta["uid"] = json!(format!("uid-{name}"));
        }
        meta["namespace"] = json!(ns);
        if meta.get("creationTimestamp").is_none() {
            meta["creationTimestamp"] = json!("2026-11-26T00:00:00Z");
        }
        if meta.get("generation").is_none() {
            meta["generation"] = json!(1);
        }
        self.write(coll, &name, obj)
    }

    /// Change an object in place (bumps its resourceVersion, and its
    /// generation by the apiserver's rule unless `f` sets one), as another
    /// client would.
    pub fn mutate(&mut self, coll: &str, name: &str, f: impl FnOnce(&mut Value)) {
        let rv = self.next_rv();
        let tracks = rules::tracks_generation(coll);
        let plural = coll.rsplit('/').next().unwrap_or_default().to_string();
        if let Some(o) = self
            .objects
            .get_mut(&storage_coll(coll))
            .and_then(|m| m.get_mut(name))
        {
            let before = o.clone();
            f(o);
            // a fixture that sets the generation itself keeps it; else the
            // apiserver's rule, as for the user's write this stands for
            if tracks && o["metadata"]["generation"] == before["metadata"]["generation"] {
                o["metadata"]["generation"] =
                    json!(rules::next_generation(&plural, Some(&before), o));
            }
            o["metadata"]["resourceVersion"] = json!(rv);
            let o = o.clone();
            self.record(coll, "MODIFIED", &o);
        }
    }

    fn remove_with_dependents(&mut self, coll: &str, name: &str) {
        let Some(obj) = self
            .objects
            .get_mut(&storage_coll(coll))
            .and_then(|m| m.remove(name))
        else {
            return;
        };
        self.next_rv();
        self.record(coll, "DELETED", &obj);
        let uid = obj["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut dependents = Vec::new();
        let exists = |u: &str| {
            self.objects
                .values()
                .flat_map(|m| m.values())
                .any(|o| o["metadata"]["uid"] == u)
        };
        for (c, m) in &self.objects {
            for (n, o) in m {
                if rules::orphaned(o, &uid, exists) {
                    dependents.push((c.clone(), n.clone()));
                }
            }
        }
        for (c, n) in dependents {
            self.delete(&c, &n);
        }
    }

    /// DELETE semantics: finalizers hold the object with a deletionTimestamp.
    pub fn delete(&mut self, coll: &str, name: &str) -> Option<Value> {
        let coll = &storage_coll(coll);
        let obj = self.objects.get_mut(coll)?.get_mut(name)?;
        let has_finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if obj["metadata"].get("deletionTimestamp").is_none() {
                obj["metadata"]["deletionTimestamp"] = json!("2026-11-26T00:00:01Z");
                let rv = self.next_rv();
                if let Some(o) = self.objects.get_mut(coll).and_then(|m| m.get_mut(name)) {
                    o["metadata"]["resourceVersion"] = json!(rv);
                    let o = o.clone();
                    self.record(coll, "MODIFIED", &o);
                }
            }
            return self.get(coll, name).cloned();
        }
        let out = obj.clone();
        self.remove_with_dependents(coll, name);
        Some(out)
    }

    /// After a write: a deleting object whose finalizers are all gone goes away.
    fn maybe_finish_deletion(&mut self, coll: &str, name: &str) {
        let done = self.get(coll, name).is_some_and(|o| {
            o["metadata"].get("deletionTimestamp").is_some()
                && o["metadata"]["finalizers"]
                    .as_array()
                    .is_none_or(|f| f.is_empty())
        });
        if done {
            self.remove_with_dependents(coll, name);
        }
    }
}

impl FakeApi {
    /// A fake that prunes and defaults custom resources by the crate's
    /// generated CRDs, as an apiserver with them installed does.
    pub fn new() -> Self {
        let api = Self::default();
        api.enforce_schemas(&sandpool_controller::crd::all_crds());
        api
    }

    /// A kube client served by this fake (the server task runs until the
    /// client and all its clones are dropped).
    pub fn client(&self) -> kube::Client {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<FakeBody>>();
        let me = self.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                rbac::check_controller_request(
                    req.method(),
                    req.uri().path(),
                    req.uri().query().unwrap_or_default(),
                );
                let resp = me.handle(req).await;
                send.send_response(resp);
            }
        });
        kube::Client::new(svc, "default")
    }

    /// Registers CRDs: those whose conversion strategy is Webhook have
    /// requests in their other versions converted by calling the webhook
    /// (HTTPS, trusting the CRD's caBundle): a create's or update's body to
    /// the storage version (a patch is applied to the stored object in the
    /// version asked for), the answer back to the version asked for. (Watch
    /// events are not converted.)
    pub fn install_crds(
        &self,
        crds: &[k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition],
    ) {
        *self.webhooks.lock().expect("webhooks") = webhook::webhooks_of(crds);
    }

    /// The method and body to serve a request with in the storage version: a
    /// create's or replace's object converted; a patch applied in the asked
    /// version to the stored object and served as the replace it amounts to
    /// (as is when there is no such object: a 404). Others unchanged.
    async fn to_storage(
        &self,
        hook: &webhook::Webhook,
        asked: &str,
        method: &Method,
        path: &str,
        content_type: &str,
        body: &Value,
    ) -> Result<(Method, Value), String> {
        let unchanged = Ok((method.clone(), body.clone()));
        match *method {
            Method::POST | Method::PUT if body.is_object() => {
                let b = webhook::body_to_storage(hook, asked, body.clone()).await?;
                Ok((method.clone(), b))
            }
            Method::PATCH => {
                let Some((coll, name)) = webhook::object_of(path) else {
                    return unchanged;
                };
                let stored = self.store.lock().expect("store").get(&coll, &name).cloned();
                match stored {
                    Some(s) => {
                        let b = webhook::patched(hook, asked, s, content_type, body).await?;
                        Ok((Method::PUT, b))
                    }
                    None => unchanged,
                }
            }
            _ => unchanged,
        }
    }

    /// Prune unknown fields and apply defaults from these CRDs' schemas to
    /// every custom resource stored from now on, as the apiserver does.
    pub fn enforce_schemas(
        &self,
        crds: &[k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition],
    ) {
        self.with_store(|s| {
            s.schemas = schema::schemas_of(crds);
            s.scales = scale::scales_of(crds);
        });
    }

    /// Run `hook` before every request (to simulate other writers).
    pub fn on_request(&self, hook: Hook) {
        self.hooks.lock().expect("hooks").push(hook);
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.log.lock().expect("log").clone()
    }

    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let out = f(&mut self.store.lock().expect("store"));
        self.changed.notify_waiters();
        out
    }

    /// End every open watch (as an apiserver does on its timeout or a
    /// restart); clients have to list and watch again.
    pub fn end_watches(&self) {
        self.watch_epoch.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// A watch on `coll` from `params`' resourceVersion (empty or "0": the
    /// current objects as ADDED first), filtered by its label and field
    /// selectors.
    fn watch(&self, coll: String, params: &BTreeMap<String, String>) -> FakeBody {
        let selector = params.get("labelSelector").cloned().unwrap_or_default();
        let fields = params.get("fieldSelector").cloned().unwrap_or_default();
        let from: u64 = params
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut queue = VecDeque::new();
        if from == 0 {
            let store = self.store.lock().expect("store");
            let empty = serde_json::Map::new();
            for o in store.list(&coll) {
                if selector_matches(
                    &selector,
                    o["metadata"]["labels"].as_object().unwrap_or(&empty),
                ) && fields_match(&fields, &o)
                {
                    let mut line = serde_json::to_vec(&json!({"type": "ADDED", "object": o}))
                        .unwrap_or_default();
                    line.push(b'\n');
                    queue.push_back(Bytes::from(line));
                }
            }
        }
        let from = if from == 0 {
            self.store.lock().expect("store").rv
        } else {
            from
        };
        let epoch = self.watch_epoch.load(Ordering::SeqCst);
        let state = (self.clone(), coll, (selector, fields), from, queue);
        let stream = futures_util::stream::unfold(state, move |mut st| async move {
            loop {
                if let Some(line) = st.4.pop_front() {
                    return Some((Ok::<_, Infallible>(Frame::data(line)), st));
                }
                let notified = st.0.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if st.0.watch_epoch.load(Ordering::SeqCst) != epoch {
                    return None;
                }
                let (lines, last) =
                    st.0.store
                        .lock()
                        .expect("store")
                        .events_after(&st.1, (&st.2.0, &st.2.1), st.3);
                st.3 = last;
                st.4.extend(lines);
                if st.4.is_empty() {
                    notified.await;
                }
            }
        });
        StreamBody::new(stream).boxed_unsync()
    }

    pub async fn handle(&self, req: Request<Body>) -> Response<FakeBody> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        let hook = webhook::hook_for(&self.webhooks.lock().expect("webhooks"), &path);
        let (serve_method, stored_body) = match &hook {
            Some((h, asked)) => {
                match self
                    .to_storage(h, asked, &method, &path, &content_type, &body)
                    .await
                {
                    Ok(x) => x,
                    Err(e) => return conversion_failed(&e),
                }
            }
            None => (method.clone(), body.clone()),
        };
        let params: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        if method == Method::GET
            && matches!(
                params.get("watch").map(String::as_str),
                Some("true" | "True" | "1")
            )
        {
            self.log.lock().expect("log").push(Logged {
                method,
                path: path.clone(),
                query,
                content_type,
                body,
                status: 200,
            });
            return Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(self.watch(path, &params))
                .unwrap_or_else(|_| Response::new(Full::default().boxed_unsync()));
        }
        let (code, mut out) = {
            let mut store = self.store.lock().expect("store");
            for h in self.hooks.lock().expect("hooks").iter_mut() {
                h(&method, &path, &mut store);
            }
            serve(
                &mut store,
                &serve_method,
                &path,
                &query,
                &content_type,
                stored_body,
            )
        };
        if let Some((h, asked)) = &hook {
            if let Err(e) = webhook::response_to(h, asked, &mut out).await {
                return conversion_failed(&e);
            }
        } else {
            rewrite_api_version(&path, &mut out);
        }
        self.changed.notify_waiters();
        self.log.lock().expect("log").push(Logged {
            method,
            path,
            query,
            content_type,
            body,
            status: code,
        });
        Response::builder()
            .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .header("content-type", "application/json")
            .body(
                Full::new(Bytes::from(serde_json::to_vec(&out).unwrap_or_default())).boxed_unsync(),
            )
            .unwrap_or_else(|_| Response::new(Full::default().boxed_unsync()))
    }
}

/// Conversion strategy None: an agent-sandbox answer is served in the
/// version asked for by rewriting its `apiVersion` only.
fn rewrite_api_version(path: &str, out: &mut Value) {
    if storage_coll(path) != path
        || path.starts_with("/apis/agents.x-k8s.io/")
        || path.starts_with("/apis/extensions.agents.x-k8s.io/")
    {
        let version = api_version_of(path).unwrap_or_default();
        let items = out.get_mut("items").and_then(Value::as_array_mut);
        for o in items.into_iter().flatten() {
            o["apiVersion"] = json!(version);
        }
        // a Status or a Scale (autoscaling/v1) keeps its own
        if out
            .get("kind")
            .is_some_and(|k| k != "Status" && k != "Scale")
            && out.get("items").is_none()
        {
            out["apiVersion"] = json!(version);
        }
    }
}

/// The apiserver's answer when the conversion webhook failed.
fn conversion_failed(message: &str) -> Response<FakeBody> {
    let out = status(500, "InternalError", message);
    Response::builder()
        .status(StatusCode::INTERNAL_SERVER_ERROR)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&out).unwrap_or_default())).boxed_unsync())
        .unwrap_or_else(|_| Response::new(Full::default().boxed_unsync()))
}

fn serve_list(
    store: &mut Store,
    coll: &str,
    plural: &str,
    params: &BTreeMap<String, String>,
) -> (u16, Value) {
    let sel = params.get("labelSelector").cloned().unwrap_or_default();
    let fields = params.get("fieldSelector").cloned().unwrap_or_default();
    let empty = serde_json::Map::new();
    let items: Vec<Value> = store
        .list(coll)
        .into_iter()
        .filter(|o| selector_matches(&sel, o["metadata"]["labels"].as_object().unwrap_or(&empty)))
        .filter(|o| fields_match(&fields, o))
        .collect();
    let rv = store.rv.to_string();
    (
        200,
        json!({"kind": format!("{}List", kind_of_plural(plural)), "apiVersion": "v1",
                 "metadata": {"resourceVersion": rv}, "items": items}),
    )
}

fn serve_create(store: &mut Store, coll: &str, plural: &str, body: Value) -> (u16, Value) {
    let mut obj = body;
    if plural == "events" {
        store.names += 1;
        obj["metadata"]["name"] = json!(format!("event-{}", store.names));
    }
    let name = match (
        obj["metadata"]["name"].as_str(),
        obj["metadata"]["generateName"].as_str(),
    ) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(g)) => {
            store.names += 1;
            format!("{g}{:05}", store.names)
        }
        _ => {
            return (
                422,
                status(422, "Invalid", "name or generateName is required"),
            );
        }
    };
    if plural == "pods"
        && let Some(known) = &store.runtime_classes
        && let Some(rc) = obj["spec"]["runtimeClassName"].as_str()
        && !known.iter().any(|k| k == rc)
    {
        let msg =
            format!("pods \"{name}\" is forbidden: pod rejected: RuntimeClass \"{rc}\" not found");
        return (403, status(403, "Forbidden", &msg));
    }
    if store.get(coll, &name).is_some() {
        return (
            409,
            status(
                409,
                "AlreadyExists",
                &format!("{plural} \"{name}\" already exists"),
            ),
        );
    }
    obj["metadata"]["name"] = json!(name);
    if obj["metadata"].get("uid").is_none() {
        // unique across kinds (a pod and its Sandbox share a name)
        obj["metadata"]["uid"] = json!(format!("uid-{plural}-{name}"));
    }
    if rules::tracks_generation(coll) {
        // the apiserver's, whatever the client sent
        obj["metadata"]["generation"] = json!(rules::next_generation(plural, None, &obj));
    }
    let obj = store.put(coll, obj);
    (201, obj)
}

fn serve_patch(
    store: &mut Store,
    coll: &str,
    plural: &str,
    n: &str,
    sub: Option<&str>,
    ct: &str,
    body: Value,
) -> (u16, Value) {
    let Some(mut obj) = store.get(coll, n).cloned() else {
        return (
            404,
            status(404, "NotFound", &format!("{plural} \"{n}\" not found")),
        );
    };
    let current_rv = obj["metadata"]["resourceVersion"].clone();
    if ct.contains("json-patch") {
        let ops = body.as_array().cloned().unwrap_or_default();
        if let Err(e) = json_patch(&mut obj, &ops) {
            return (422, status(422, "Invalid", &e));
        }
    } else {
        let mut patch = body;
        if let Some(rv) = patch["metadata"].get("resourceVersion").cloned() {
            if rv != current_rv {
                return (
                    409,
                    status(
                        409,
                        "Conflict",
                        "the object has been modified; please apply your changes to the latest version and try again",
                    ),
                );
            }
            if let Some(m) = patch["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
        }
        if sub == Some("status") {
            patch = json!({"status": patch.get("status").cloned().unwrap_or(Value::Null)});
        } else if let Some(m) = patch.as_object_mut() {
            m.remove("status");
        }
        sandpool_core::batch::merge_patch(&mut obj, &patch);
    }
    let current = store.get(coll, n).cloned().unwrap_or(Value::Null);
    if let Err(e) = rules::apply_write_rules(plural, sub, &current, &mut obj) {
        return rules::invalid(&e);
    }
    let obj = store.replace(coll, n, obj);
    store.maybe_finish_deletion(coll, n);
    (200, obj)
}

fn serve(
    store: &mut Store,
    method: &Method,
    path: &str,
    query: &str,
    ct: &str,
    body: Value,
) -> (u16, Value) {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let base = match segs.first() {
        Some(&"api") => 2,
        Some(&"apis") => 3,
        _ => return (404, status(404, "NotFound", "unknown path")),
    };
    if segs.get(base) != Some(&"namespaces") || segs.len() < base + 3 {
        return (
            404,
            status(404, "NotFound", "only namespaced resources are served"),
        );
    }
    let plural = segs[base + 2];
    let coll = format!("/{}", segs[..base + 3].join("/"));
    let name = segs.get(base + 3).map(|s| s.to_string());
    let sub = segs.get(base + 4).copied();
    let params: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    if let (Some("scale"), Some(n)) = (sub, &name) {
        return scale::serve(store, method, &coll, n, ct, body);
    }
    match (method.clone(), name) {
        (Method::GET, None) => serve_list(store, &coll, plural, &params),
        (Method::GET, Some(n)) => match store.get(&coll, &n) {
            Some(o) => (200, o.clone()),
            None => (
                404,
                status(404, "NotFound", &format!("{plural} \"{n}\" not found")),
            ),
        },
        (Method::POST, None) => serve_create(store, &coll, plural, body),
        (Method::PATCH, Some(n)) => serve_patch(store, &coll, plural, &n, sub, ct, body),
        (Method::PUT, Some(n)) => {
            let Some(cur) = store.get(&coll, &n).cloned() else {
                return (
                    404,
                    status(404, "NotFound", &format!("{plural} \"{n}\" not found")),
                );
            };
            if body["metadata"]["resourceVersion"] != cur["metadata"]["resourceVersion"] {
                return (409, status(409, "Conflict", "the object has been modified"));
            }
            let mut obj = body;
            obj["metadata"]["uid"] = cur["metadata"]["uid"].clone();
            if let Err(e) = rules::apply_write_rules(plural, sub, &cur, &mut obj) {
                return rules::invalid(&e);
            }
            let out = store.replace(&coll, &n, obj);
            store.maybe_finish_deletion(&coll, &n);
            (200, out)
        }
        (Method::DELETE, Some(n)) => match store.delete(&coll, &n) {
            Some(o) => (200, o),
            None => (
                404,
                status(404, "NotFound", &format!("{plural} \"{n}\" not found")),
            ),
        },
        _ => (
            405,
            status(405, "MethodNotAllowed", "not supported by the fake"),
        ),
    }
}

/// Make a pod Running and Ready with an IP on a node.
pub fn make_ready(store: &mut Store, ns: &str, name: &str, ip: &str, node: &str) {
    store.mutate(&pods_path(ns), name, |p| {
        p["spec"]["nodeName"] = json!(node);
        p["status"] = json!({"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]});
    });
}

/// A task runner whose every call succeeds; what `status` reports for any
/// pod is the field (`None`: no task, `Some(None)`: one running).
pub struct NoTasks(pub Option<Option<i32>>);

#[async_trait::async_trait]
impl sandpool_controller::context::TaskRunner for NoTasks {
    async fn start(
        &self,
        _: &k8s_openapi::api::core::v1::Pod,
        _: &sandpool_controller::crd::ProcessTask,
    ) -> sandpool_controller::Result<()> {
        Ok(())
    }
    async fn status(&self, _: &k8s_openapi::api::core::v1::Pod) -> Option<Option<i32>> {
        self.0
    }
    async fn stop(&self, _: &k8s_openapi::api::core::v1::Pod) -> sandpool_controller::Result<()> {
        Ok(())
    }
}

/// A controller context on `api` with the test runtime image and `tasks`.
pub fn context(api: &FakeApi, tasks: NoTasks) -> Arc<sandpool_controller::context::Context> {
    Arc::new(bare_context(api, tasks))
}

/// [`context`] whose node agents are `agents`.
pub fn context_with_agents(
    api: &FakeApi,
    tasks: NoTasks,
    agents: Arc<dyn sandpool_controller::node_agents::NodeAgents>,
) -> Arc<sandpool_controller::context::Context> {
    Arc::new(bare_context(api, tasks).with_node_agents(agents))
}

pub fn bare_context(api: &FakeApi, tasks: NoTasks) -> sandpool_controller::context::Context {
    let inj = sandpool_controller::pods::RuntimeInjection {
        image: "ghcr.io/sandpool/sandpool:test".into(),
        image_pull_policy: None,
    };
    sandpool_controller::context::Context::new(
        api.client(),
        inj,
        Arc::new(tasks),
        Some("test".into()),
    )
}

/// The events (events.k8s.io/v1) in `ns` about the object `name`, as
/// (type, reason, note).
pub fn events_about(api: &FakeApi, ns: &str, name: &str) -> Vec<(String, String, String)> {
    let coll = format!("/apis/events.k8s.io/v1/namespaces/{ns}/events");
    api.with_store(|s| s.list(&coll))
        .iter()
        .filter(|e| e["regarding"]["name"] == name)
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("type"), s("reason"), s("note"))
        })
        .collect()
}

/// What the kubelet would do: every pod of `ns` without an IP becomes Ready
/// at `ip` on `node`.
pub fn make_pending_ready(api: &FakeApi, ns: &str, ip: &str, node: &str) {
    let pending: Vec<String> = api.with_store(|s| {
        s.list(&pods_path(ns))
            .iter()
            .filter(|p| p["status"]["podIP"].is_null())
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    });
    for p in pending {
        api.with_store(|s| make_ready(s, ns, &p, ip, node));
    }
}

/// The batch controller, once over every BatchSandbox of `ns`.
pub async fn reconcile_batches(ctx: &Arc<sandpool_controller::context::Context>, ns: &str) {
    use sandpool_controller::crd::BatchSandbox;
    let all = kube::Api::<BatchSandbox>::namespaced(ctx.client.clone(), ns)
        .list(&Default::default())
        .await
        .expect("list batches");
    for b in all.items {
        let _ = sandpool_controller::batch::reconcile(Arc::new(b), ctx.clone()).await;
    }
}

/// The batch controller and the kubelet, every 10 ms until aborted: claims
/// are filled and their pods made Ready at 10.2.0.7 on node-a.
pub fn spawn_batch_controller(
    api: &FakeApi,
    ctx: &Arc<sandpool_controller::context::Context>,
    ns: &str,
) -> tokio::task::JoinHandle<()> {
    let (api, ctx, ns) = (api.clone(), ctx.clone(), ns.to_string());
    tokio::spawn(async move {
        loop {
            reconcile_batches(&ctx, &ns).await;
            make_pending_ready(&api, &ns, "10.2.0.7", "node-a");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
}
