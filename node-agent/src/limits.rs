//! Resource limits every sandbox runs under (pure): node defaults for what a
//! template leaves unset, and a node-wide maximum no template may exceed.

use crate::{
    error::{AgentError, Result},
    spec::Limits,
};

/// Default CPU of a sandbox: one core, so one busy sandbox cannot take a
/// whole small node (E2B's smallest sandbox has 2 vCPUs on its own VM).
pub const DEFAULT_CPU_MILLIS: u64 = 1000;
/// Default memory: 512 MiB, E2B's default sandbox size; a runaway
/// allocation is OOM-killed inside the sandbox, not on the host.
pub const DEFAULT_MEMORY_BYTES: u64 = 512 << 20;
/// Default process/thread count: room for a parallel build or a Jupyter
/// kernel with its threads, far below what starves the host's pid space.
pub const DEFAULT_PIDS: u32 = 512;
/// Node-wide maximum a template may ask for (`sandpool serve --max-sandbox-*`).
pub const MAX_CPU_MILLIS: u64 = 4000;
pub const MAX_MEMORY_BYTES: u64 = 4 << 30;
pub const MAX_PIDS: u32 = 4096;

/// What a sandbox gets when its template says nothing, and the most it may ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitPolicy {
    pub default: Limits,
    pub max: Limits,
}

impl Default for LimitPolicy {
    fn default() -> Self {
        LimitPolicy {
            default: Limits {
                cpu_millis: DEFAULT_CPU_MILLIS,
                memory_bytes: DEFAULT_MEMORY_BYTES,
                pids: DEFAULT_PIDS,
            },
            max: Limits {
                cpu_millis: MAX_CPU_MILLIS,
                memory_bytes: MAX_MEMORY_BYTES,
                pids: MAX_PIDS,
            },
        }
    }
}

impl LimitPolicy {
    /// The limits a sandbox runs under: the template's (0 = unset → the
    /// default, capped by the maximum); above the maximum is refused.
    /// Never returns a 0 (unlimited) field.
    pub fn apply(&self, asked: &Limits) -> Result<Limits> {
        let too_much = |what: &str, asked: String, max: String| {
            AgentError::InvalidTemplate(format!(
                "{what} {asked} is above this node's maximum of {max} per sandbox"
            ))
        };
        let pick = |asked: u64, default: u64, max: u64| {
            if asked == 0 { default.min(max) } else { asked }
        };
        let out = Limits {
            cpu_millis: pick(
                asked.cpu_millis,
                self.default.cpu_millis,
                self.max.cpu_millis,
            ),
            memory_bytes: pick(
                asked.memory_bytes,
                self.default.memory_bytes,
                self.max.memory_bytes,
            ),
            pids: pick(
                u64::from(asked.pids),
                u64::from(self.default.pids),
                u64::from(self.max.pids),
            ) as u32,
        };
        if out.cpu_millis > self.max.cpu_millis {
            return Err(too_much(
                "cpu",
                format!("{}m", out.cpu_millis),
                format!("{}m", self.max.cpu_millis),
            ));
        }
        if out.memory_bytes > self.max.memory_bytes {
            return Err(too_much(
                "memory",
                format!("{} MiB", out.memory_bytes >> 20),
                format!("{} MiB", self.max.memory_bytes >> 20),
            ));
        }
        if out.pids > self.max.pids {
            return Err(too_much(
                "pids",
                out.pids.to_string(),
                self.max.pids.to_string(),
            ));
        }
        Ok(out)
    }

    /// Refuse a policy that would leave sandboxes unlimited or below their own default.
    pub fn check(&self) -> Result<()> {
        let l = &self.max;
        if l.cpu_millis == 0 || l.memory_bytes == 0 || l.pids == 0 {
            return Err(AgentError::InvalidTemplate(
                "the node-wide sandbox maximum must limit cpu, memory and pids (0 = unlimited is not allowed)".into(),
            ));
        }
        let d = &self.default;
        if d.cpu_millis == 0 || d.memory_bytes == 0 || d.pids == 0 {
            return Err(AgentError::InvalidTemplate(
                "the default sandbox limits must set cpu, memory and pids".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(cpu_millis: u64, memory_bytes: u64, pids: u32) -> Limits {
        Limits {
            cpu_millis,
            memory_bytes,
            pids,
        }
    }

    #[test]
    fn unset_fields_get_the_defaults() {
        let p = LimitPolicy::default();
        assert_eq!(
            p.apply(&Limits::default()).unwrap(),
            lim(1000, 512 << 20, 512)
        );
        assert_eq!(p.apply(&lim(500, 0, 0)).unwrap(), lim(500, 512 << 20, 512));
        assert_eq!(
            p.apply(&lim(0, 256 << 20, 64)).unwrap(),
            lim(1000, 256 << 20, 64)
        );
    }

    #[test]
    fn the_template_may_ask_for_more_up_to_the_maximum() {
        let p = LimitPolicy::default();
        assert_eq!(
            p.apply(&lim(4000, 4 << 30, 4096)).unwrap(),
            lim(4000, 4 << 30, 4096)
        );
        for (asked, what) in [
            (lim(4001, 0, 0), "cpu"),
            (lim(0, (4 << 30) + 1, 0), "memory"),
            (lim(0, 0, 4097), "pids"),
        ] {
            let e = p.apply(&asked).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains("maximum"), "{e}");
        }
    }

    #[test]
    fn a_default_above_a_lowered_maximum_is_capped() {
        let p = LimitPolicy {
            max: lim(500, 128 << 20, 100),
            ..LimitPolicy::default()
        };
        assert_eq!(
            p.apply(&Limits::default()).unwrap(),
            lim(500, 128 << 20, 100)
        );
        assert!(p.check().is_ok());
        let open = LimitPolicy {
            max: lim(500, 0, 100),
            ..LimitPolicy::default()
        };
        assert!(open.check().is_err());
    }
}
