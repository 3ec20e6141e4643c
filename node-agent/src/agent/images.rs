//! A sandbox's image: builtin images built, absent ones pulled, and what
//! its config says (user, default process).

use std::{sync::Arc, time::Instant};

use crate::{
    error::{AgentError, Result},
    image,
    imageconfig::{ImageConfig, resolve_user},
    registry::Credentials,
    spec::SandboxUser,
};

use super::Agent;

impl Agent {
    /// Make sure `name` exists in containerd, building builtin images.
    pub async fn ensure_image(&self, name: &str) -> Result<(String, String, ImageConfig)> {
        self.ensure_image_with(name, None).await
    }

    /// [`Self::ensure_image`], an absent image pulled with `creds` (used
    /// for that pull only).
    pub async fn ensure_image_with(
        &self,
        name: &str,
        creds: Option<Credentials>,
    ) -> Result<(String, String, ImageConfig)> {
        let Some(builtin) = image::builtin(name) else {
            return self.ensure_other_image(name, creds).await;
        };
        let (image, chain, mut cfg) = self.ensure_builtin(builtin).await?;
        // sandpool's own images start nothing of their own: their `Cmd`
        // (`/bin/sh`, the base images' habit) would exit at once
        cfg.entrypoint.clear();
        cfg.cmd.clear();
        Ok((image, chain, cfg))
    }

    /// A non-builtin image: present, else pulled.
    async fn ensure_other_image(
        &self,
        name: &str,
        creds: Option<Credentials>,
    ) -> Result<(String, String, ImageConfig)> {
        if let Some((chain, env)) = self.ctr.image_rootfs(name).await? {
            return Ok((name.to_string(), chain, env));
        }
        if let Some((chain, env)) = self.pull_missing(name, creds).await? {
            return Ok((name.to_string(), chain, env));
        }
        let known = self.ctr.list_images().await.unwrap_or_default().join(", ");
        Err(AgentError::UnknownImage(
            name.to_string(),
            format!(
                "{known} (builtin: {}, {}, {})",
                image::BUSYBOX,
                image::PYTHON,
                image::CODE_INTERPRETER
            ),
        ))
    }

    /// Builtin image `builtin`, built and imported when absent or stale.
    async fn ensure_builtin(&self, builtin: &str) -> Result<(String, String, ImageConfig)> {
        if let Some(found) = self.current_builtin(builtin).await? {
            return Ok(found);
        }
        let _g = self.image_lock.lock().await;
        if let Some(found) = self.current_builtin(builtin).await? {
            return Ok(found);
        }
        let cache = self.cfg.image_cache.clone();
        let started = Instant::now();
        let name2 = builtin.to_string();
        let blobs = tokio::task::spawn_blocking(move || image::build_builtin(&name2, &cache))
            .await
            .map_err(|e| AgentError::image("image builder", e))??;
        self.ctr.import(&blobs).await?;
        tracing::info!(
            image = builtin,
            ms = started.elapsed().as_millis() as u64,
            "image built and imported"
        );
        let (chain, env) =
            self.ctr.image_rootfs(builtin).await?.ok_or_else(|| {
                AgentError::Image(format!("{builtin} missing right after import"))
            })?;
        Ok((builtin.to_string(), chain, env))
    }

    /// Pull `name` when the agent pulls missing images and `name` is an
    /// image reference: its chainID and env once pulled. `None` when the
    /// agent does not pull or `name` is no reference.
    async fn pull_missing(
        &self,
        name: &str,
        creds: Option<Credentials>,
    ) -> Result<Option<(String, ImageConfig)>> {
        let Some(puller) = &self.puller else {
            return Ok(None);
        };
        if crate::registry::parse_reference(name).is_err() {
            return Ok(None);
        }
        let started = Instant::now();
        let image = name.to_string();
        let progress: crate::registry::Progress =
            Arc::new(move |line: String| tracing::info!(image = %image, "{line}"));
        let pulled = puller.pull(&self.ctr, name, creds, progress).await?;
        tracing::info!(
            image = name,
            digest = %pulled.digest,
            ms = started.elapsed().as_millis() as u64,
            "image pulled for a create"
        );
        self.ctr.image_rootfs(name).await
    }

    /// Builtin image `builtin` if containerd holds it built from the current
    /// recipe (its `RECIPE_LABEL`); one built from an older recipe is not
    /// used (it is rebuilt and its record replaced).
    async fn current_builtin(
        &self,
        builtin: &str,
    ) -> Result<Option<(String, String, ImageConfig)>> {
        let key = image::recipe_key(builtin);
        let current = self
            .ctr
            .image(builtin)
            .await?
            .is_some_and(|i| i.labels.get(image::RECIPE_LABEL) == key.as_ref());
        if !current {
            return Ok(None);
        }
        let found = self.ctr.image_rootfs(builtin).await?;
        Ok(found.map(|(chain, env)| (builtin.to_string(), chain, env)))
    }

    /// Whom a non-root sandbox of `image` runs as: the image's `User`,
    /// resolved against its own passwd and group files, else (and for a
    /// `User` that is root: root needs a run-as-root template) sandpool's
    /// default sandbox user.
    pub(super) async fn image_user(
        &self,
        image: &str,
        chain: &str,
        cfg: &ImageConfig,
    ) -> Result<SandboxUser> {
        if !cfg.needs_user_files() {
            return Ok(SandboxUser::default_user());
        }
        let files = self
            .ctr
            .read_image_files(chain, &["etc/passwd", "etc/group"])
            .await?;
        let (passwd, group) = (files[0].as_deref(), files[1].as_deref());
        let u = resolve_user(image, &cfg.user, passwd, group)?;
        if u.uid == 0 {
            return Ok(SandboxUser::default_user());
        }
        Ok(SandboxUser {
            uid: u.uid,
            gid: u.gid,
            name: u.name,
            home: u.home,
        })
    }
}
