//! A pod's containers committed into images (the controller's
//! SandboxSnapshot): each named app container's root file system, its
//! writable layer on its image, becomes a new image of the node's `k8s.io`
//! namespace, where the kubelet finds it (`imagePullPolicy: IfNotPresent`
//! or `Never`) without a registry.
//!
//! The pod's running containers are paused for the commit (a consistent
//! file system, as `nerdctl commit` does by default) and resumed after it,
//! also when it fails; a pod that was paused already stays paused.
//!
//! gVisor (runsc) pods are refused: runsc keeps the root file system's
//! writes in its own overlay (in the sandbox's memory or a file it
//! manages), not in containerd's snapshot, so a commit would silently miss
//! them.

use crate::containerd::{Committed, TaskState};
use crate::error::{AgentError, Result};
use crate::registry::{PushTarget, push_image};

use super::{CriNode, CriPod, is_gvisor};

/// The app containers of `pod` to commit: (container id, image) for each
/// `(name, image)` asked for; an unknown name or a repeated one is refused.
pub fn commit_targets(pod: &CriPod, asked: &[(String, String)]) -> Result<Vec<(String, String)>> {
    if asked.is_empty() {
        return Err(AgentError::InvalidArgument(
            "no containers to commit".to_string(),
        ));
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, (name, image)) in asked.iter().enumerate() {
        if asked[..i].iter().any(|(n, _)| n == name) {
            return Err(AgentError::InvalidArgument(format!(
                "container {name:?} is named twice"
            )));
        }
        if image.is_empty() {
            return Err(AgentError::InvalidArgument(format!(
                "container {name:?} has no image name to commit into"
            )));
        }
        let id = pod
            .containers
            .iter()
            .find(|(_, n)| n == name)
            .map(|(id, _)| id.clone())
            .ok_or_else(|| {
                AgentError::NotFound(format!(
                    "container {name:?} in pod {} (it has {:?})",
                    pod.id(),
                    pod.containers.iter().map(|(_, n)| n).collect::<Vec<_>>()
                ))
            })?;
        out.push((id, image.clone()));
    }
    Ok(out)
}

/// Where a CommitImages request's images are pushed: none without `push`
/// (then credentials or the insecure flag are refused, never ignored).
pub fn push_target(
    push: bool,
    auth: Option<sandpool_proto::v1::ImageAuth>,
    insecure: bool,
) -> Result<Option<PushTarget>> {
    if !push {
        if auth.is_some() || insecure {
            return Err(AgentError::InvalidArgument(
                "push_auth and push_insecure need push".into(),
            ));
        }
        return Ok(None);
    }
    Ok(Some(PushTarget {
        creds: auth.map(crate::registry::Credentials::from),
        insecure,
    }))
}

impl CriNode {
    /// Commit the app containers `asked` (`(container name, image name)`)
    /// of pod `id` into images (see the module doc), then, with `push`,
    /// push each to the registry its name gives (after the pod is resumed;
    /// the digests are the pushed manifests').
    pub async fn commit(
        &self,
        id: &str,
        asked: &[(String, String)],
        push: Option<&PushTarget>,
    ) -> Result<Vec<Committed>> {
        let pod = self.pod(id).await?;
        let targets = commit_targets(&pod, asked)?;
        let all = self.ctr.list_containers().await?;
        let gvisor = all
            .iter()
            .filter(|c| pod.containers.iter().any(|(cid, _)| *cid == c.id))
            .any(is_gvisor);
        if gvisor {
            return Err(AgentError::Unsupported(format!(
                "snapshots need a runc pod; {id} runs on gVisor (runsc), which keeps its root file system's writes in its own overlay, not in containerd's snapshot"
            )));
        }
        let mut paused = Vec::new();
        for (c, _) in &pod.containers {
            if matches!(self.ctr.task_state(c).await?, Some((TaskState::Running, _))) {
                self.ctr.pause(c).await?;
                paused.push(c.clone());
            }
        }
        let mut done = Vec::new();
        let mut failed = None;
        for (c, image) in &targets {
            match self.ctr.commit_container(c, image).await {
                Ok(img) => done.push(img),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        for c in &paused {
            if let Err(e) = self.ctr.resume(c).await {
                tracing::warn!(pod = %id, container = %c, error = %e, "resuming after the commit failed");
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        tracing::info!(pod = %id, images = ?done, "committed");
        if let Some(to) = push {
            for img in &mut done {
                img.digest = push_image(&self.ctr, &img.image, &img.digest, to).await?;
            }
            tracing::info!(pod = %id, images = ?done, "pushed");
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> CriPod {
        CriPod {
            namespace: "ns".into(),
            name: "p".into(),
            uid: "u".into(),
            containers: vec![("c1".into(), "main".into()), ("c2".into(), "side".into())],
            managed: true,
        }
    }

    fn ask(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn push_fields_without_push_are_refused() {
        let auth = || {
            Some(sandpool_proto::v1::ImageAuth {
                username: "u".into(),
                password: "p".into(),
            })
        };
        assert_eq!(push_target(false, None, false).expect("none"), None);
        for (a, insecure) in [(auth(), false), (None, true)] {
            let e = push_target(false, a, insecure).expect_err("refused");
            assert!(matches!(e, AgentError::InvalidArgument(_)), "{e:?}");
        }
        let t = push_target(true, auth(), true).expect("ok").expect("push");
        assert!(t.insecure);
        assert_eq!(t.creds.map(|c| c.username), Some("u".to_string()));
    }

    #[test]
    fn containers_are_found_by_name_and_bad_requests_are_refused() {
        let got = commit_targets(&pod(), &ask(&[("side", "img:s"), ("main", "img:m")]));
        assert_eq!(
            got.expect("ok"),
            ask(&[("c2", "img:s"), ("c1", "img:m")]),
            "container ids in the order asked"
        );
        let missing = commit_targets(&pod(), &ask(&[("nope", "img")])).expect_err("missing");
        assert!(
            matches!(&missing, AgentError::NotFound(m) if m.contains("\"nope\"") && m.contains("main")),
            "{missing:?}"
        );
        for bad in [
            ask(&[]),
            ask(&[("main", "")]),
            ask(&[("main", "a"), ("main", "b")]),
        ] {
            let e = commit_targets(&pod(), &bad).expect_err("bad");
            assert!(
                matches!(e, AgentError::InvalidArgument(_)),
                "{bad:?}: {e:?}"
            );
        }
    }
}
