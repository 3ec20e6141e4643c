//! Claims: assignment, lookup, renew, pause/resume, release.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use sandpool_core::{
    Template,
    claim::{ClaimEvent, ClaimState},
};
use sandpool_proto::v1 as pb;

use super::{
    Busy, ClaimRec, Claiming, InFlight, SandboxRef, Scheduler, State, egress_from_pb, expiry_ms,
    new_sandbox_id, node_err, now_ms, template_from_pb,
};
use crate::{
    error::{Result, SchedError},
    store::Table,
    traced,
};

/// What a resume after a filesystem-only pause starts again (see
/// `ClaimRec::restart`): `process` as injected, the request's resources and
/// mounts; empty when there is none of them.
fn restart_request(process: &pb::InjectRequest, req: &pb::ClaimRequest) -> Vec<u8> {
    let r = pb::ClaimRequest {
        process: Some(process.clone()).filter(|p| !p.argv.is_empty()),
        resources: req.resources.clone(),
        mounts: req.mounts.clone(),
        ..Default::default()
    };
    if r == pb::ClaimRequest::default() {
        return Vec::new();
    }
    prost::Message::encode_to_vec(&r)
}

/// A warm sandbox taken off a pool: node, sandbox id, what the node said about it.
type Taken = (String, String, Option<pb::SandboxInfo>);

/// What a claim id check found (see [`Scheduler::begin_claim`]).
pub(super) enum Begin<'a> {
    /// The claim was made before (an idempotent retry).
    Existing(Box<ClaimRec>),
    /// A new claim under this id; the guard (caller-chosen ids only) keeps a
    /// concurrent retry out until it drops.
    New(String, Option<Claiming<'a>>),
}

/// A claim being made: the pool's allocation, then the sandbox it holds and
/// its durable record. Unless committed, everything is undone: by
/// [`Reservation::fail`] (which also deletes the sandbox on its node), or
/// on drop (a cancelled claim: the books only; a later node resync deletes
/// a sandbox that no claim or pool owns).
struct Reservation<'a> {
    sched: &'a Scheduler,
    pool: String,
    /// node and sandbox id once one is assigned
    sandbox: Option<(String, String)>,
    /// the claim id once its record may have been written
    record: Option<String>,
    done: bool,
}

impl<'a> Reservation<'a> {
    /// Take over the allocation already counted for `pool` (empty: none).
    fn new(sched: &'a Scheduler, pool: &str) -> Self {
        Reservation {
            sched,
            pool: pool.to_string(),
            sandbox: None,
            record: None,
            done: false,
        }
    }

    /// The claim now holds sandbox `id` on `node`.
    fn hold(&mut self, node: &str, id: &str) {
        self.sandbox = Some((node.to_string(), id.to_string()));
    }

    /// Claim `id`'s record is (being) written.
    fn record(&mut self, id: &str) {
        self.record = Some(id.to_string());
    }

    /// The claim is made: nothing is undone.
    fn commit(mut self) {
        self.done = true;
    }

    /// Undo the books (record, allocation), delete the sandbox and return `e`.
    async fn fail(mut self, e: SchedError) -> SchedError {
        self.undo_books();
        if let Some((node, id)) = self.sandbox.take() {
            self.sched
                .release_sandbox(&node, &id, pb::ReleasePolicy::Delete)
                .await;
        }
        e
    }

    fn undo_books(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some(id) = self.record.take()
            && let Err(e) = self.sched.store.delete(Table::Claims, &id)
        {
            tracing::warn!(claim = %id, error = %e, "could not delete a failed claim's record");
        }
        self.sched.unallocate(&self.pool);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.done {
            tracing::warn!(pool = %self.pool, "claim abandoned half-way; undoing its allocation");
            self.undo_books();
        }
    }
}

impl Scheduler {
    /// Assign a sandbox: a warm one from the pool in O(1), else a cold start
    /// (unless `pool_only`); then inject the process and record the claim.
    #[tracing::instrument(name = "claim", skip_all, fields(pool = %req.pool))]
    pub async fn claim(&self, req: pb::ClaimRequest) -> Result<ClaimRec> {
        let t0 = Instant::now();
        // the metric's pool label: a pool that exists, else "-" (a caller's
        // made-up names never become series)
        let pool = if self.lock().pools.contains_key(&req.pool) {
            req.pool.clone()
        } else {
            "-".to_string()
        };
        let res = {
            let _in_flight = InFlight::start(self);
            self.claim_inner(req, t0).await
        };
        let outcome = match &res {
            Ok(c) if c.cold => "cold",
            Ok(_) => "warm",
            Err(SchedError::Exhausted(_)) => "exhausted",
            Err(_) => "error",
        };
        sandpool_telemetry::metrics::observe_claim(&pool, outcome, t0.elapsed());
        if let Err(e) = &res {
            sandpool_telemetry::metrics::error("scheduler", e.kind());
        }
        res
    }

    pub(super) async fn claim_inner(&self, req: pb::ClaimRequest, t0: Instant) -> Result<ClaimRec> {
        // refused before a sandbox is taken
        let egress = req.egress.as_ref().map(egress_from_pb).transpose()?;
        sandpool_core::claim::check_sandbox_env(&req.sandbox_env)
            .map_err(|e| SchedError::Invalid(format!("sandbox_env: {e}")))?;
        let (claim_id, _claiming) = match self.begin_claim(&req)? {
            Begin::Existing(c) => return Ok(*c), // idempotent retry
            Begin::New(id, claiming) => (id, claiming),
        };
        let (template, taken) = self.take_sandbox(&req)?;
        let mut reservation = Reservation::new(self, &req.pool);
        self.wake.notify_one();
        // the sandbox stays busy (no resync touches it) until the claim is booked
        let cold_id = new_sandbox_id();
        let _busy = match &taken {
            Some((_, id, _)) => Busy::adopt(self, id.clone()),
            None => self.busy(&cold_id),
        };
        let auth = req.image_auth.clone();
        let (node, info, cold) = match self
            .assign(&req.pool, &template, taken, &cold_id, auth)
            .await
        {
            Ok(a) => a,
            Err(e) => return Err(reservation.fail(e).await),
        };
        reservation.hold(&node, &info.sandbox_id);
        let (info, image) = match self.upgrade_image(&node, info, &req, &template).await {
            Ok(up) => up,
            Err(e) => return Err(reservation.fail(e).await),
        };
        // Inject the entrypoint (request's, else the template's default,
        // else the image's Entrypoint ++ Cmd), while the claim record is
        // written durably in parallel.
        let mut process = req.process.clone().unwrap_or_default();
        process.argv =
            sandpool_core::start::start_argv(&process.argv, &template.command, &info.image_command);
        let now = now_ms();
        let mut rec = ClaimRec {
            id: claim_id.clone(),
            pool: req.pool.clone(),
            state: ClaimState::Pending.on(ClaimEvent::Bind)?,
            sandbox: SandboxRef::of(&node, &info),
            created_ms: now,
            expires_ms: expiry_ms(now, req.ttl_seconds),
            paused_remaining_ms: 0,
            metadata: req.metadata.clone().into_iter().collect(),
            cold,
            entrypoint: process.argv.clone(),
            image,
            claim_us: 0,
            batch: None,
            failure: String::new(),
            egress: egress.clone(),
            pause_on_expiry: req.pause_on_expiry,
            auto_resume: req.auto_resume && req.pause_on_expiry,
            ttl_seconds: req.ttl_seconds,
            oom_kills: 0,
            pause_filesystem_only: req.pause_filesystem_only && req.pause_on_expiry,
            paused_filesystem: false,
            restart: restart_request(&process, &req),
            sandbox_env: req.sandbox_env.clone().into_iter().collect(),
        };
        reservation.record(&claim_id);
        let started = async {
            self.inject_and_persist(
                &node,
                &rec,
                process,
                req.egress.clone(),
                req.resources.clone(),
            )
            .await?;
            self.mount_volumes(&node, &rec.sandbox.id, &req.mounts)
                .await
        };
        if let Err(e) = started.await {
            return Err(reservation.fail(e).await);
        }
        reservation.commit();
        rec.claim_us = t0.elapsed().as_micros() as u64;
        self.lock().claims.insert(claim_id, rec.clone());
        Ok(rec)
    }

    /// Check a caller-chosen claim id: a claim already made under it is
    /// returned as is; one still being made is a conflict; otherwise it is
    /// marked in the making until the returned guard drops.
    pub(super) fn begin_claim(&self, req: &pb::ClaimRequest) -> Result<Begin<'_>> {
        if req.claim_id.is_empty() {
            return Ok(Begin::New(uuid::Uuid::new_v4().to_string(), None));
        }
        if req.claim_id.len() > 64
            || !req
                .claim_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(SchedError::Invalid(format!(
                "bad claim id {:?}",
                req.claim_id
            )));
        }
        let mut st = self.lock();
        if let Some(c) = st.claims.get(&req.claim_id) {
            return Ok(Begin::Existing(Box::new(c.clone())));
        }
        // a retry while the first attempt is still running must not make a second claim
        if !st.claiming.insert(req.claim_id.clone()) {
            return Err(SchedError::Conflict(format!(
                "claim {} is still being made; retry",
                req.claim_id
            )));
        }
        let claiming = Claiming {
            st: &self.st,
            id: req.claim_id.clone(),
        };
        Ok(Begin::New(req.claim_id.clone(), Some(claiming)))
    }

    /// The template to run and, from a pool, a warm sandbox taken off it (the
    /// pool's allocation counted); `None` means a cold start.
    fn take_sandbox(&self, req: &pb::ClaimRequest) -> Result<(Template, Option<Taken>)> {
        if req.pool.is_empty() {
            let t = req
                .template
                .as_ref()
                .ok_or_else(|| SchedError::Invalid("either pool or template is required".into()))?;
            return Ok((template_from_pb(t)?, None));
        }
        let mut st = self.lock();
        let State {
            pools,
            warm_index,
            warm_info,
            busy,
            touched,
            ..
        } = &mut *st;
        let p = pools
            .get_mut(&req.pool)
            .ok_or_else(|| SchedError::PoolNotFound(req.pool.clone()))?;
        p.demand.record(Instant::now());
        let taken = p.warm.take().map(|(node, id)| {
            busy.insert(id.clone());
            touched.insert(id.clone(), now_ms());
            warm_index.remove(&id);
            let info = warm_info.remove(&id);
            (node, id, info)
        });
        if taken.is_none() && req.pool_only {
            return Err(SchedError::Exhausted(req.pool.clone()));
        }
        p.allocated += 1;
        Ok((p.rec.template.clone(), taken))
    }

    /// The sandbox the claim gets: the warm one taken (asking its node when
    /// the books have no details), else a cold create as `cold_id` (an
    /// absent image pulled with `image_auth`).
    async fn assign(
        &self,
        pool: &str,
        template: &Template,
        taken: Option<Taken>,
        cold_id: &str,
        image_auth: Option<pb::ImageAuth>,
    ) -> Result<(String, pb::SandboxInfo, bool)> {
        let span = tracing::info_span!("scheduler.assign", warm = taken.is_some());
        let assigned = async {
            match taken {
                Some((node, _, Some(info))) => Ok((node, info, false)),
                Some((node, id, None)) => {
                    let n = self.node(&node)?;
                    let info = n
                        .client
                        .clone()
                        .get_sandbox(traced(pb::SandboxRef { sandbox_id: id }))
                        .await
                        .map_err(node_err(&node))?
                        .into_inner();
                    Ok((node, info, false))
                }
                None => {
                    let (node, info) = self
                        .create_on_node(pool, template, cold_id, image_auth)
                        .await?;
                    Ok((node, info, true))
                }
            }
        };
        tracing::Instrument::instrument(assigned, span).await
    }

    /// In-place image upgrade: the same sandbox, restarted on another image
    /// (when the request names one other than the template's).
    async fn upgrade_image(
        &self,
        node: &str,
        info: pb::SandboxInfo,
        req: &pb::ClaimRequest,
        template: &Template,
    ) -> Result<(pb::SandboxInfo, String)> {
        if req.image.is_empty() || req.image == template.image {
            return Ok((info, template.image.clone()));
        }
        let n = self.node(node)?;
        let span = tracing::info_span!("scheduler.upgrade", image = %req.image);
        let up = pb::UpgradeRequest {
            sandbox_id: info.sandbox_id.clone(),
            image: req.image.clone(),
        };
        let r = tracing::Instrument::instrument(n.client.clone().upgrade(traced(up)), span)
            .await
            .map_err(node_err(node))?;
        Ok((r.into_inner(), req.image.clone()))
    }

    /// Start `process` in the claim's sandbox (nothing to start: no call)
    /// while its record is written durably; both must succeed.
    async fn inject_and_persist(
        &self,
        node: &str,
        rec: &ClaimRec,
        process: pb::InjectRequest,
        egress: Option<pb::EgressPolicy>,
        resources: Option<pb::Resources>,
    ) -> Result<()> {
        let inject = async {
            if process.argv.is_empty() && egress.is_none() && resources.is_none() {
                return Ok(());
            }
            let n = self.node(node)?;
            let span = tracing::info_span!("scheduler.inject");
            tracing::Instrument::instrument(
                n.client.clone().inject(traced(pb::NodeInjectRequest {
                    sandbox_id: rec.sandbox.id.clone(),
                    process: Some(process).filter(|p| !p.argv.is_empty()),
                    egress,
                    resources,
                    ..Default::default()
                })),
                span,
            )
            .await
            .map(|_| ())
            .map_err(node_err(node))
        };
        let persist = {
            let s = Arc::clone(&self.store);
            let r = rec.clone();
            let r_id = rec.id.clone();
            async move {
                tokio::task::spawn_blocking(move || s.put(Table::Claims, &r.id, &r))
                    .await
                    .map_err(|source| SchedError::StoreTask {
                        claim: r_id,
                        source,
                    })?
            }
        };
        let (injected, persisted) = tokio::join!(inject, persist);
        injected.and(persisted)
    }

    /// Mount the requested volumes into the sandbox, in order; the first
    /// failure stops. A missing named volume is an invalid request (not a
    /// missing pool or sandbox).
    async fn mount_volumes(
        &self,
        node: &str,
        sandbox_id: &str,
        mounts: &[pb::VolumeMount],
    ) -> Result<()> {
        if mounts.is_empty() {
            return Ok(());
        }
        let n = self.node(node)?;
        for m in mounts {
            let mr = pb::MountRequest {
                sandbox_id: sandbox_id.to_string(),
                host_path: m.volume.clone(),
                mount_path: m.mount_path.clone(),
                read_only: m.read_only,
            };
            n.client
                .clone()
                .mount(traced(mr))
                .await
                .map_err(|status| match status.code() {
                    // a volume the node does not have is the request's fault
                    tonic::Code::NotFound if !m.volume.starts_with('/') => {
                        SchedError::Invalid(status.message().to_string())
                    }
                    _ => node_err(node)(status),
                })?;
        }
        Ok(())
    }

    pub(super) fn unallocate(&self, pool: &str) {
        if let Some(p) = self.lock().pools.get_mut(pool) {
            p.allocated = p.allocated.saturating_sub(1);
        }
        self.wake.notify_one();
    }

    pub fn get_claim(&self, id: &str) -> Result<ClaimRec> {
        self.lock()
            .claims
            .get(id)
            .cloned()
            .ok_or_else(|| SchedError::ClaimNotFound(id.to_string()))
    }

    /// Claims matching the filters, ordered by creation time.
    pub fn list_claims(
        &self,
        pool: &str,
        states: &[ClaimState],
        metadata: &BTreeMap<String, String>,
    ) -> Vec<ClaimRec> {
        let mut v: Vec<ClaimRec> = self
            .lock()
            .claims
            .values()
            .filter(|c| pool.is_empty() || c.pool == pool)
            .filter(|c| states.is_empty() || states.contains(&c.state))
            .filter(|c| {
                metadata
                    .iter()
                    .all(|(k, val)| c.metadata.get(k) == Some(val))
            })
            .cloned()
            .collect();
        v.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        v
    }

    pub(super) fn update_claim(
        &self,
        id: &str,
        f: impl FnOnce(&mut ClaimRec) -> Result<()>,
    ) -> Result<ClaimRec> {
        let mut rec = self.get_claim(id)?;
        f(&mut rec)?;
        self.store.put(Table::Claims, id, &rec)?;
        self.lock().claims.insert(id.to_string(), rec.clone());
        Ok(rec)
    }

    pub fn renew(&self, id: &str, expires_ms: i64) -> Result<ClaimRec> {
        if expires_ms <= now_ms() {
            return Err(SchedError::Invalid(
                "expiresAt must be in the future".into(),
            ));
        }
        self.update_claim(id, |c| {
            if c.state == ClaimState::Paused {
                c.paused_remaining_ms = expires_ms - now_ms();
            } else {
                c.expires_ms = expires_ms;
            }
            Ok(())
        })
    }

    /// Merge-patch claim `id`'s metadata: `set` adds or replaces keys, then
    /// `remove` deletes keys (those absent are ignored).
    pub fn patch_metadata(
        &self,
        id: &str,
        set: BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<ClaimRec> {
        if let Some(k) = set.keys().chain(remove).find(|k| k.is_empty()) {
            return Err(SchedError::Invalid(format!("bad metadata key {k:?}")));
        }
        if let Some(k) = remove.iter().find(|k| set.contains_key(*k)) {
            return Err(SchedError::Invalid(format!(
                "metadata key {k:?} is both set and removed"
            )));
        }
        self.update_claim(id, |c| {
            c.metadata.extend(set);
            for k in remove {
                c.metadata.remove(k);
            }
            Ok(())
        })
    }

    /// Pause: freeze the sandbox; the TTL clock stops (the remaining time is kept).
    /// Replace the egress policy of claim `id`'s sandbox, live (`None`:
    /// everything allowed); the claim keeps it for readback.
    pub async fn set_egress(&self, id: &str, policy: Option<pb::EgressPolicy>) -> Result<ClaimRec> {
        let policy = policy.unwrap_or_default();
        let stored = egress_from_pb(&policy)?;
        let c = self.get_claim(id)?;
        if c.state.is_terminal() {
            return Err(SchedError::Invalid(format!(
                "claim {id} is {:?}: its sandbox is gone",
                c.state
            )));
        }
        let mut node = self.node(&c.sandbox.node)?.client.clone();
        node.inject(traced(pb::NodeInjectRequest {
            sandbox_id: c.sandbox.id.clone(),
            egress: Some(policy),
            ..Default::default()
        }))
        .await
        .map_err(node_err(&c.sandbox.node))?;
        self.update_claim(id, |c| {
            c.egress = Some(stored.clone());
            Ok(())
        })
    }

    /// Hand claim `id`'s sandbox its credential vault (`vault`: the JSON of
    /// a `credential_vault::Vault`, secrets included). The vault is neither
    /// stored nor logged here.
    pub async fn set_credential_vault(&self, id: &str, vault: Vec<u8>) -> Result<ClaimRec> {
        let c = self.get_claim(id)?;
        if c.state.is_terminal() {
            return Err(SchedError::Invalid(format!(
                "claim {id} is {:?}: its sandbox is gone",
                c.state
            )));
        }
        if vault.is_empty() {
            return Err(SchedError::Invalid("the credential vault is empty".into()));
        }
        let mut node = self.node(&c.sandbox.node)?.client.clone();
        node.inject(traced(pb::NodeInjectRequest {
            sandbox_id: c.sandbox.id.clone(),
            credential_vault: vault,
            ..Default::default()
        }))
        .await
        .map_err(node_err(&c.sandbox.node))?;
        Ok(c)
    }

    pub async fn pause(&self, id: &str) -> Result<ClaimRec> {
        self.freeze_or_thaw(id, ClaimEvent::Pause).await
    }

    /// Pause claim `id`: frozen in place, or with `filesystem_only` its
    /// sandbox's processes stopped and only its root file system kept (a
    /// frozen claim may be paused that way too, dropping its memory).
    pub async fn pause_as(&self, id: &str, filesystem_only: bool) -> Result<ClaimRec> {
        if !filesystem_only {
            return self.pause(id).await;
        }
        let c = self.get_claim(id)?;
        let next = sandpool_core::claim::on_filesystem_pause(c.state, c.paused_filesystem)?;
        let mut node = self.node(&c.sandbox.node)?.client.clone();
        node.pause(traced(pb::PauseRequest {
            sandbox_id: c.sandbox.id.clone(),
            filesystem_only: true,
        }))
        .await
        .map_err(node_err(&c.sandbox.node))?;
        let was_bound = c.state == ClaimState::Bound;
        self.update_claim(id, |c| {
            c.state = next;
            c.paused_filesystem = true;
            if was_bound && c.expires_ms > 0 {
                c.paused_remaining_ms = (c.expires_ms - now_ms()).max(1);
            }
            Ok(())
        })
    }

    /// Resume: thaw the sandbox; the TTL clock restarts with what was left.
    /// A sandbox paused filesystem-only starts afresh on its root file
    /// system, and what the claim started in it is started again.
    pub async fn resume(&self, id: &str) -> Result<ClaimRec> {
        let c = self.freeze_or_thaw(id, ClaimEvent::Resume).await?;
        if !c.paused_filesystem {
            return Ok(c);
        }
        let c = self.update_claim(id, |c| {
            c.paused_filesystem = false;
            Ok(())
        })?;
        self.restart_claim(&c).await?;
        Ok(c)
    }

    /// Start claim `c`'s process, resources and mounts again in its
    /// sandbox, which was just started afresh on its root file system.
    async fn restart_claim(&self, c: &ClaimRec) -> Result<()> {
        if c.restart.is_empty() {
            return Ok(());
        }
        let r =
            <pb::ClaimRequest as prost::Message>::decode(c.restart.as_slice()).map_err(|e| {
                SchedError::Invalid(format!(
                    "claim {}'s stored start does not decode: {e}",
                    c.id
                ))
            })?;
        let process = r.process.filter(|p| !p.argv.is_empty());
        if process.is_some() || r.resources.is_some() {
            let mut node = self.node(&c.sandbox.node)?.client.clone();
            node.inject(traced(pb::NodeInjectRequest {
                sandbox_id: c.sandbox.id.clone(),
                process,
                resources: r.resources,
                ..Default::default()
            }))
            .await
            .map_err(node_err(&c.sandbox.node))?;
        }
        self.mount_volumes(&c.sandbox.node, &c.sandbox.id, &r.mounts)
            .await
    }

    pub(super) async fn freeze_or_thaw(&self, id: &str, event: ClaimEvent) -> Result<ClaimRec> {
        let c = self.get_claim(id)?;
        let next = c.state.on(event)?;
        let mut node = self.node(&c.sandbox.node)?.client.clone();
        let sandbox_id = c.sandbox.id.clone();
        match event {
            ClaimEvent::Pause => {
                node.pause(traced(pb::PauseRequest {
                    sandbox_id,
                    filesystem_only: false,
                }))
                .await
            }
            _ => node.resume(traced(pb::SandboxRef { sandbox_id })).await,
        }
        .map_err(node_err(&c.sandbox.node))?;
        self.update_claim(id, |c| {
            c.state = next;
            if event == ClaimEvent::Pause && c.expires_ms > 0 {
                c.paused_remaining_ms = (c.expires_ms - now_ms()).max(1);
            } else if event == ClaimEvent::Resume && c.paused_remaining_ms > 0 {
                c.expires_ms = now_ms().saturating_add(c.paused_remaining_ms);
                c.paused_remaining_ms = 0;
            }
            Ok(())
        })
    }

    /// Release (or expire) a claim: the sandbox goes back per the pool's
    /// release policy: deleted (the default, and whenever a recycle fails)
    /// and the pool refills, or recycled into the pool's warm set (after
    /// this returns: the caller does not wait for the node's reset).
    #[tracing::instrument(skip_all, fields(claim = %id))]
    pub async fn release(&self, id: &str, event: ClaimEvent) -> Result<()> {
        let (c, recycle) = {
            let mut st = self.lock();
            let c = st
                .claims
                .get(id)
                .cloned()
                .ok_or_else(|| SchedError::ClaimNotFound(id.to_string()))?;
            // a failed claim can always be cleaned up
            if c.state != ClaimState::Failed {
                c.state.on(event)?;
            }
            st.claims.remove(id);
            if let Some(p) = st.pools.get_mut(&c.pool) {
                p.allocated = p.allocated.saturating_sub(1);
            }
            // busy from this moment (release_sandbox clears it when done)
            st.busy.insert(c.sandbox.id.clone());
            let recycle = st.begin_recycle(&c);
            (c, recycle)
        };
        self.store.delete(Table::Claims, id)?;
        if recycle {
            self.recycle_in_background(c).await;
        } else {
            self.release_sandbox(&c.sandbox.node, &c.sandbox.id, pb::ReleasePolicy::Delete)
                .await;
        }
        self.wake.notify_one();
        Ok(())
    }
}
