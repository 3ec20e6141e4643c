//! What every reconciler shares, and the small API helpers they use.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer;
use kube::{Client, Resource, ResourceExt};
use serde_json::Value;

use crate::crd::ProcessTask;
use crate::error::{Error, Result, is_not_found};
use crate::node_agents::{NoNodeAgents, NodeAgents};
use crate::pods::{self, RuntimeInjection};

/// The runtime operations the controllers need on a pod (its sandpool-runtime
/// at `<podIP>:44772`). Behind a trait so reconcilers test without pods.
#[async_trait]
pub trait TaskRunner: Send + Sync {
    /// Start `task` as the sandbox's entrypoint.
    async fn start(&self, pod: &Pod, task: &ProcessTask) -> Result<()>;
    /// `None` = unknown (runtime unreachable), `Some(None)` = running,
    /// `Some(Some(code))` = exited.
    async fn status(&self, pod: &Pod) -> Option<Option<i32>>;
    /// Stop the task (and everything it started).
    async fn stop(&self, pod: &Pod) -> Result<()>;
    /// The runtime's health, with its activity (idle auto-pause); `None`
    /// when it cannot be asked (the default: no runtime to ask).
    async fn health(&self, _pod: &Pod) -> Option<sandpool_proto::v1::HealthResponse> {
        None
    }
}

pub struct Context {
    pub client: Client,
    pub injection: RuntimeInjection,
    pub tasks: Arc<dyn TaskRunner>,
    pub recorder: Recorder,
    /// How often to look again at things that are still settling.
    pub settle: Duration,
    /// Domains a claim's `additionalPodMetadata` labels may use
    /// ([`crate::agent_sandbox::label_domains`]).
    pub label_domains: Vec<String>,
    /// The node agents: SandboxSnapshot commits (a BatchSandbox's
    /// `spec.pause` among them).
    pub nodes: Arc<dyn NodeAgents>,
    /// Where SandboxSnapshot images go (default: node-local).
    pub snapshots: crate::snapshot_registry::SnapshotRegistry,
}

impl Context {
    pub fn new(
        client: Client,
        injection: RuntimeInjection,
        tasks: Arc<dyn TaskRunner>,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: "sandpool-controller".into(),
            instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            injection,
            tasks,
            settle: Duration::from_secs(2),
            label_domains: crate::agent_sandbox::label_domains(),
            nodes: Arc::new(NoNodeAgents),
            snapshots: Default::default(),
        }
    }

    /// Push SandboxSnapshot images as `cfg` says (default: node-local).
    pub fn with_snapshot_registry(
        mut self,
        cfg: crate::snapshot_registry::SnapshotRegistry,
    ) -> Self {
        self.snapshots = cfg;
        self
    }

    /// Pause and resume pods through `nodes` (default: refused, naming why).
    pub fn with_node_agents(mut self, nodes: Arc<dyn NodeAgents>) -> Self {
        self.nodes = nodes;
        self
    }

    /// The runtime pod of `template` named by `meta`, with the runtime
    /// injected and a fresh token.
    pub fn runtime_pod(&self, template: &PodTemplateSpec, meta: ObjectMeta) -> Result<Pod> {
        pods::runtime_pod(template, &self.injection, meta, &pods::new_token())
    }

    /// The pod of an agent-sandbox `template` named by `meta`
    /// ([`pods::agent_sandbox_pod`]), with a fresh token.
    pub fn agent_sandbox_pod(&self, template: &PodTemplateSpec, meta: ObjectMeta) -> Result<Pod> {
        pods::agent_sandbox_pod(template, &self.injection, meta, &pods::new_token())
    }

    pub fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Publish an event about `obj`; failures are logged, never fatal.
    pub async fn event<K>(&self, obj: &K, warning: bool, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "publishing an event failed");
        }
    }
}

pub fn namespace_of<K: ResourceExt>(obj: &K) -> Result<String> {
    obj.namespace()
        .ok_or_else(|| Error::invalid("object", &obj.name_any(), "it has no namespace"))
}

/// Reconcile `obj` under the finalizer `name`: `reconcile` gets the
/// event (apply while the object lives, cleanup once it is being deleted)
/// and the object's namespace.
pub async fn finalized<K>(
    ctx: &Context,
    name: &str,
    obj: Arc<K>,
    reconcile: impl AsyncFnOnce(finalizer::Event<K>, &str) -> Result<Action>,
) -> Result<Action>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    <K as Resource>::DynamicType: Default,
{
    let ns = namespace_of(obj.as_ref())?;
    let api: Api<K> = ctx.api(&ns);
    finalizer(&api, name, obj, |ev| reconcile(ev, &ns))
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
}

pub async fn list_pods(api: &Api<Pod>, selector: &str) -> Result<Vec<Pod>> {
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await?
        .items)
}

/// Delete by name; gone already is fine.
pub async fn delete_ignoring_missing<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Merge-patch `name` with `patch`; gone already is fine.
pub async fn merge_patch_ignoring_missing<K>(api: &Api<K>, name: &str, patch: Value) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Merge-patch the status subresource.
pub async fn patch_status<K>(api: &Api<K>, name: &str, status: Value) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await?;
    Ok(())
}

pub fn now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

/// Time until `t` (zero when past).
pub fn until(t: k8s_openapi::jiff::Timestamp) -> Duration {
    let ms = t.as_millisecond() - now().as_millisecond();
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}
