//! Which process a claimed sandbox starts when its claim names none.
//!
//! Every sandpool API passes a start command as a whole argv (OpenSandbox
//! `entrypoint`, the gRPC `process.argv`, an E2B template's `startCmd` and
//! `pool apply --start-cmd` as `/bin/sh -c LINE`): like a Kubernetes
//! `command`, it replaces the image's Entrypoint *and* Cmd. Only when no
//! command is given anywhere does the image's own default run, with
//! Docker's semantics: `Entrypoint ++ Cmd`.

/// The template label that turns the image's default process off for a
/// template's sandboxes (value [`IMAGE_COMMAND_NONE`]): an E2B template
/// without a startCmd runs nothing but envd, as in E2B, whatever the
/// image's Entrypoint and Cmd say.
pub const IMAGE_COMMAND_LABEL: &str = "sandpool.dev/image-command";
/// [`IMAGE_COMMAND_LABEL`]'s value: do not run the image's default process.
pub const IMAGE_COMMAND_NONE: &str = "none";

/// The image's default process (Docker: `Entrypoint ++ Cmd`; either may
/// be absent), or nothing when `labels` turn it off.
pub fn image_command<'a>(
    entrypoint: &[String],
    cmd: &[String],
    mut labels: impl Iterator<Item = (&'a String, &'a String)>,
) -> Vec<String> {
    if labels.any(|(k, v)| k == IMAGE_COMMAND_LABEL && v == IMAGE_COMMAND_NONE) {
        return Vec::new();
    }
    entrypoint.iter().chain(cmd).cloned().collect()
}

/// The argv a claim starts: the claim's own, else the template's command,
/// else the image's default process; empty: none is started.
pub fn start_argv(claim: &[String], template: &[String], image: &[String]) -> Vec<String> {
    [claim, template, image]
        .into_iter()
        .find(|a| !a.is_empty())
        .unwrap_or_default()
        .to_vec()
}

/// Whether a restore of a memory checkpoint, whose processes resume as they
/// were, can take the start process the restore asks for (`argv`, plus the
/// names of any other process fields it sets, e.g. `env`, `cwd`): only the
/// checkpointed claim's own argv (`checkpointed`) with nothing else, which
/// is then what already runs. `Err` names the field and says why: starting
/// another process would run two, and the resumed one keeps its env, cwd
/// and ids.
pub fn memory_restore_start(
    argv: &[String],
    also_set: &[&str],
    checkpointed: &[String],
) -> Result<(), String> {
    if let Some(field) = also_set.first() {
        return Err(format!(
            "{field} on a restore from a memory checkpoint: its processes resume with the {field} they had (omit {field})"
        ));
    }
    if argv.is_empty() || argv == checkpointed {
        return Ok(());
    }
    let started = if checkpointed.is_empty() {
        "the checkpointed claim started none of its own".to_string()
    } else {
        format!("the checkpointed claim started {checkpointed:?}")
    };
    Err(format!(
        "entrypoint {argv:?} on a restore from a memory checkpoint: its processes resume as they were ({started}); starting another would run two (omit entrypoint or give the checkpointed one)"
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn image_default_is_entrypoint_then_cmd() {
        let none = BTreeMap::new();
        let (ep, cmd) = (v(&["/entry.sh", "-x"]), v(&["serve", "--port", "1"]));
        assert_eq!(
            image_command(&ep, &cmd, none.iter()),
            v(&["/entry.sh", "-x", "serve", "--port", "1"])
        );
        assert_eq!(image_command(&[], &cmd, none.iter()), cmd);
        assert_eq!(image_command(&ep, &[], none.iter()), ep);
        assert!(image_command(&[], &[], none.iter()).is_empty());
        let off = BTreeMap::from([(IMAGE_COMMAND_LABEL.to_string(), "none".to_string())]);
        assert!(image_command(&ep, &cmd, off.iter()).is_empty());
        let other = BTreeMap::from([(IMAGE_COMMAND_LABEL.to_string(), "x".to_string())]);
        assert_eq!(image_command(&ep, &[], other.iter()), ep);
    }

    #[test]
    fn an_explicit_command_replaces_entrypoint_and_cmd() {
        let image = v(&["/entry.sh", "serve"]);
        let template = v(&["/bin/sh", "-c", "start"]);
        let claim = v(&["python3", "app.py"]);
        assert_eq!(start_argv(&claim, &template, &image), claim);
        assert_eq!(start_argv(&[], &template, &image), template);
        assert_eq!(start_argv(&[], &[], &image), image);
        assert!(start_argv(&[], &[], &[]).is_empty());
    }

    #[test]
    fn a_memory_restore_takes_only_the_checkpointed_process() {
        let tail = v(&["tail", "-f", "/dev/null"]);
        assert_eq!(memory_restore_start(&tail, &[], &tail), Ok(()));
        assert_eq!(memory_restore_start(&[], &[], &tail), Ok(()));
        assert_eq!(memory_restore_start(&[], &[], &[]), Ok(()));
        let e = memory_restore_start(&v(&["python3", "a.py"]), &[], &tail).unwrap_err();
        assert!(e.starts_with("entrypoint [\"python3\", \"a.py\"]"), "{e}");
        assert!(
            e.contains("would run two") && e.contains("[\"tail\""),
            "{e}"
        );
        let e = memory_restore_start(&tail, &[], &[]).unwrap_err();
        assert!(e.contains("started none"), "{e}");
        let e = memory_restore_start(&tail, &["env"], &tail).unwrap_err();
        assert!(e.starts_with("env on a restore"), "{e}");
    }
}
