//! BatchSandbox helpers: per-shard task patches and task status counts.

use serde_json::Value;

use crate::CoreError;

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// The task of shard `index`: the template with `patches[index]` applied
/// (shards beyond the patch list get the plain template).
pub fn shard_task(template: &Value, patches: &[String], index: usize) -> Result<Value, CoreError> {
    let mut t = template.clone();
    if let Some(p) = patches.get(index) {
        let patch: Value = serde_json::from_str(p)
            .map_err(|e| CoreError::InvalidPatch(format!("shard {index}: {e}")))?;
        if !patch.is_object() {
            return Err(CoreError::InvalidPatch(format!(
                "shard {index}: a patch must be a JSON object"
            )));
        }
        merge_patch(&mut t, &patch);
    }
    Ok(t)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskCounts {
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub unknown: u32,
}

/// Count task states: `None` = unknown, `Some(None)` = running, `Some(Some(code))` = exited.
pub fn count_tasks(states: impl IntoIterator<Item = Option<Option<i32>>>) -> TaskCounts {
    let mut c = TaskCounts::default();
    for s in states {
        match s {
            None => c.unknown += 1,
            Some(None) => c.running += 1,
            Some(Some(0)) => c.succeeded += 1,
            Some(Some(_)) => c.failed += 1,
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7386_examples() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
        let mut t = json!({"a": ["b"]});
        merge_patch(&mut t, &json!({"a": ["c", "d"]}));
        assert_eq!(t, json!({"a": ["c", "d"]}), "arrays are replaced");
        let mut t = json!("x");
        merge_patch(&mut t, &json!({"a": 1}));
        assert_eq!(t, json!({"a": 1}));
    }

    #[test]
    fn shards() {
        let tpl = json!({"argv": ["python", "task.py"], "env": {"SHARD": "0", "MODE": "x"}});
        let patches = vec![
            r#"{"env":{"SHARD":"0"}}"#.to_string(),
            r#"{"env":{"SHARD":"1","MODE":null}}"#.to_string(),
        ];
        assert_eq!(
            shard_task(&tpl, &patches, 1).unwrap()["env"],
            json!({"SHARD": "1"})
        );
        assert_eq!(shard_task(&tpl, &patches, 5).unwrap(), tpl);
        assert!(shard_task(&tpl, &["[1]".to_string()], 0).is_err());
        assert!(shard_task(&tpl, &["{".to_string()], 0).is_err());
    }

    #[test]
    fn counts() {
        let c = count_tasks([
            None,
            Some(None),
            Some(Some(0)),
            Some(Some(2)),
            Some(Some(0)),
        ]);
        assert_eq!(
            c,
            TaskCounts {
                running: 1,
                succeeded: 2,
                failed: 1,
                unknown: 1
            }
        );
    }
}
