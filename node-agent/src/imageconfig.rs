//! What a sandbox takes from its image's config: Env, WorkingDir and User,
//! the user resolved against the image's own `/etc/passwd` and `/etc/group`
//! (as a container engine resolves `USER app:grp`), and Entrypoint and Cmd,
//! the process a claim starts when nothing names one
//! ([`sandpool_core::start`]).

use crate::error::{AgentError, Result};

/// The parts of an image config a sandbox applies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageConfig {
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// The process's working directory (empty: `/`).
    pub working_dir: String,
    /// The config's `User`, as written (empty: none).
    pub user: String,
    /// `Entrypoint` (exec form, as the config holds it).
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
}

impl ImageConfig {
    /// From an OCI/Docker image config blob.
    pub fn from_config(config: &serde_json::Value) -> Self {
        let c = &config["config"];
        let text = |k: &str| c[k].as_str().unwrap_or_default().trim().to_string();
        let list = |k: &str| {
            c[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        ImageConfig {
            env: list("Env"),
            working_dir: text("WorkingDir"),
            user: text("User"),
            entrypoint: list("Entrypoint"),
            cmd: list("Cmd"),
        }
    }

    /// The process a sandbox of this image starts when neither its claim
    /// nor its template names one: `Entrypoint ++ Cmd`, unless the
    /// template's `labels` turn it off.
    pub fn default_process<'a>(
        &self,
        labels: impl Iterator<Item = (&'a String, &'a String)>,
    ) -> Vec<String> {
        sandpool_core::start::image_command(&self.entrypoint, &self.cmd, labels)
    }

    /// Whether resolving the user needs the image's passwd and group files.
    pub fn needs_user_files(&self) -> bool {
        !self.user.is_empty()
    }
}

/// A user the sandbox's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUser {
    pub uid: u32,
    pub gid: u32,
    /// The passwd name (the numeric uid when the image has no entry).
    pub name: String,
    /// The passwd home directory (`/` when the image has no entry).
    pub home: String,
}

struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = Passwd<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7).then_some(())?;
        Some(Passwd {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

fn group_gid(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok())?
    })
}

/// Resolve an image's `User` (`uid`, `uid:gid`, `name`, `name:group`, and
/// mixes) against its `/etc/passwd` and `/etc/group` texts (`None`: the
/// image has no such file). A name the files do not have is an error; a
/// numeric uid without an entry runs with gid 0 and home `/` (as Docker).
pub fn resolve_user(
    image: &str,
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ImageUser> {
    let bad =
        |what: String| AgentError::InvalidTemplate(format!("image {image}: USER {spec:?}: {what}"));
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || grp == Some("") {
        return Err(bad("empty user or group".into()));
    }
    let passwd = passwd.unwrap_or_default();
    let (uid, entry) = match user.parse::<u32>() {
        Ok(uid) => (uid, passwd_entries(passwd).find(|p| p.uid == uid)),
        Err(_) => {
            let p = passwd_entries(passwd)
                .find(|p| p.name == user)
                .ok_or_else(|| bad(format!("no user {user:?} in the image's /etc/passwd")))?;
            (p.uid, Some(p))
        }
    };
    let gid = match grp {
        None => entry.as_ref().map_or(0, |p| p.gid),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_gid(group.unwrap_or_default(), g)
                .ok_or_else(|| bad(format!("no group {g:?} in the image's /etc/group")))?,
        },
    };
    Ok(ImageUser {
        uid,
        gid,
        name: entry
            .as_ref()
            .map_or_else(|| uid.to_string(), |p| p.name.to_string()),
        home: entry
            .as_ref()
            .map(|p| p.home)
            .filter(|h| !h.is_empty())
            .unwrap_or("/")
            .to_string(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        app:x:1000:1001:App:/home/app:/bin/sh\n\
        nohome:x:1002:1002::: \n";
    const GROUP: &str = "root:x:0:\napp:x:1001:\ngrp:x:2000:app\n";

    fn user(spec: &str) -> Result<ImageUser> {
        resolve_user("img", spec, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn config_fields() {
        let c = ImageConfig::from_config(&json!({"config": {
            "Env": ["A=1", 2], "WorkingDir": " /app ", "User": "app:grp",
            "Entrypoint": ["/entry.sh"], "Cmd": ["serve", "-p", "1"]}}));
        assert_eq!(c.env, vec!["A=1".to_string()]);
        let none = std::collections::HashMap::new();
        assert_eq!(
            c.default_process(none.iter()),
            ["/entry.sh", "serve", "-p", "1"].map(String::from)
        );
        let off = std::collections::HashMap::from([(
            sandpool_core::start::IMAGE_COMMAND_LABEL.to_string(),
            "none".to_string(),
        )]);
        assert!(c.default_process(off.iter()).is_empty());
        assert_eq!(
            (c.working_dir.as_str(), c.user.as_str()),
            ("/app", "app:grp")
        );
        assert!(c.needs_user_files());
        let none = ImageConfig::from_config(&json!({}));
        assert_eq!(none, ImageConfig::default());
        assert!(!none.needs_user_files());
    }

    #[test]
    fn numeric_and_named_users() {
        let u = user("1000").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.name.as_str(), u.home.as_str()),
            (1000, 1001, "app", "/home/app")
        );
        let u = user("1000:1000").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        let u = user("app").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1001, "/home/app"));
        let u = user("app:grp").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 2000));
        let u = user("app:7").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 7));
        // a uid the image does not know: gid 0, home /
        let u = user("4242").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.name.as_str(), u.home.as_str()),
            (4242, 0, "4242", "/")
        );
        let u = user("4242:grp").unwrap();
        assert_eq!((u.uid, u.gid), (4242, 2000));
        // an entry without a home
        assert_eq!(user("1002").unwrap().home, "/");
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        for (spec, what) in [
            ("nobody", "no user \"nobody\" in the image's /etc/passwd"),
            ("app:staff", "no group \"staff\" in the image's /etc/group"),
            ("", "empty user or group"),
            ("app:", "empty user or group"),
        ] {
            let e = user(spec).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains("image img"), "{spec}: {e}");
        }
        // an image without the files knows no names
        let e = resolve_user("img", "app", None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no user \"app\""), "{e}");
        assert_eq!(resolve_user("img", "5:6", None, None).unwrap().gid, 6);
    }
}
