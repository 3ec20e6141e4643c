//! Kubernetes resource quantities → cgroup numbers (pure).

use crate::error::{AgentError, Result};

/// `q` trimmed: empty = unlimited (0); otherwise what `parse` makes of it,
/// or a "bad {kind} quantity" error with `examples` when it makes nothing.
fn quantity(
    q: &str,
    kind: &str,
    examples: &str,
    parse: impl FnOnce(&str) -> Option<u64>,
) -> Result<u64> {
    let q = q.trim();
    if q.is_empty() {
        return Ok(0);
    }
    parse(q).ok_or_else(|| {
        AgentError::InvalidTemplate(format!("bad {kind} quantity {q:?} (examples: {examples})"))
    })
}

/// CPU quantity (`"2"`, `"0.5"`, `"500m"`) in millicores. Empty = unlimited (0).
pub fn cpu_millis(q: &str) -> Result<u64> {
    quantity(q, "cpu", r#""500m", "2", "0.5""#, |q| {
        let m = if let Some(n) = q.strip_suffix('m') {
            n.parse::<u64>().ok()?
        } else {
            let v: f64 = q.parse().ok()?;
            if !v.is_finite() || !(0.0..=1.0e6).contains(&v) {
                return None;
            }
            (v * 1000.0).round() as u64
        };
        (m != 0).then_some(m)
    })
}

/// Memory quantity (`"512Mi"`, `"1G"`, `"1073741824"`) in bytes. Empty = unlimited (0).
pub fn memory_bytes(q: &str) -> Result<u64> {
    let bytes = quantity(q, "memory", r#""512Mi", "2Gi", "1G""#, |q| {
        let split = q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len());
        let (num, unit) = q.split_at(split);
        let mult: u64 = match unit {
            "" => 1,
            "k" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "T" => 1_000_000_000_000,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            _ => return None,
        };
        let v: f64 = num.parse().ok()?;
        let bytes = v * mult as f64;
        (v.is_finite() && v > 0.0 && bytes <= 1.0e15).then(|| bytes.round() as u64)
    })?;
    // the kernel refuses very small limits; so do we, with a clear message
    let q = q.trim();
    if !q.is_empty() && bytes < 4 << 20 {
        return Err(AgentError::InvalidTemplate(format!(
            "memory limit {q} is below the 4Mi minimum"
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        assert_eq!(cpu_millis("500m").unwrap(), 500);
        assert_eq!(cpu_millis("2").unwrap(), 2000);
        assert_eq!(cpu_millis("0.25").unwrap(), 250);
        assert_eq!(cpu_millis("").unwrap(), 0);
        for bad in ["abc", "-1", "0", "1.5x", "m", "0m", "NaN"] {
            assert!(cpu_millis(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory() {
        assert_eq!(memory_bytes("512Mi").unwrap(), 512 << 20);
        assert_eq!(memory_bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(memory_bytes("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(memory_bytes("").unwrap(), 0);
        for bad in ["lots", "12XB", "-5Mi", "1Mi", "Mi", "0"] {
            assert!(memory_bytes(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn mi_roundtrip(n in 4u64..100_000) {
            proptest::prop_assert_eq!(memory_bytes(&format!("{n}Mi")).unwrap(), n << 20);
        }
        #[test]
        fn millis_roundtrip(n in 1u64..1_000_000) {
            proptest::prop_assert_eq!(cpu_millis(&format!("{n}m")).unwrap(), n);
        }
        #[test]
        fn never_panics(s in "\\PC{0,12}") {
            let _ = cpu_millis(&s);
            let _ = memory_bytes(&s);
        }
    }
}
