//! `sandpool image gc`: remove the pulled, imported and template-built
//! images nothing uses. An image is kept when it is builtin, when a pool's
//! template names it (by any of its names, or another name of the same
//! manifest), when a sandbox (a containerd container of the platform) was
//! made from it, or when it was pulled or imported less than
//! `--keep-unused-for` ago. Only image records are removed: the content
//! and snapshots they leave unreferenced (layers another image shares are
//! not) go with containerd's own garbage collection.

use std::{collections::BTreeSet, time::Duration};

use anyhow::Context;
use sandpool_node_agent::{containerd::ImageSummary, registry};
use sandpool_proto::v1 as pb;

/// `--keep-unused-for`: `90s`, `30m`, `24h`, `7d`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30m, 24h or 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

/// The names `image` may be stored under: as written and in full form.
fn name_forms(image: &str) -> Vec<String> {
    let mut v = vec![image.to_string()];
    if let Ok(r) = registry::parse_reference(image) {
        v.push(r.whole());
    }
    v
}

/// Why an image is kept, or `None` when it goes.
fn keep_reason(
    i: &ImageSummary,
    used: &BTreeSet<String>,
    used_digests: &BTreeSet<String>,
    now_ms: i64,
    keep: Duration,
) -> Option<&'static str> {
    if i.builtin {
        return Some("builtin");
    }
    if used.contains(&i.name) || used_digests.contains(&i.digest) {
        return Some("in use");
    }
    let age_ms = now_ms.saturating_sub(i.updated_unix_ms);
    if u128::try_from(age_ms).unwrap_or(0) < keep.as_millis() {
        return Some("recent");
    }
    None
}

/// Which `images` go and which stay (with why), given the image names
/// pools and sandboxes use.
pub fn plan<'a>(
    images: &'a [ImageSummary],
    used_names: &[String],
    now_ms: i64,
    keep: Duration,
) -> Vec<(&'a ImageSummary, Option<&'static str>)> {
    let used: BTreeSet<String> = used_names.iter().flat_map(|n| name_forms(n)).collect();
    let used_digests: BTreeSet<String> = images
        .iter()
        .filter(|i| used.contains(&i.name))
        .map(|i| i.digest.clone())
        .collect();
    images
        .iter()
        .map(|i| (i, keep_reason(i, &used, &used_digests, now_ms, keep)))
        .collect()
}

/// The image names pools use (from the scheduler) and sandboxes were made
/// from (the platform's containerd containers).
pub async fn used_names(
    scheduler: &str,
    token: &sandpool_proto::auth::ServiceToken,
    ctr: &sandpool_node_agent::containerd::Ctr,
) -> anyhow::Result<Vec<String>> {
    let mut s = crate::cli::connect(scheduler, token)
        .await
        .context("image gc asks the scheduler which images pools use")?;
    let pools = s
        .list_pools(pb::ListPoolsRequest {})
        .await
        .context("listing pools")?
        .into_inner()
        .pools;
    let mut names: Vec<String> = pools
        .into_iter()
        .filter_map(|p| p.template.map(|t| t.image))
        .collect();
    names.extend(
        ctr.list_containers()
            .await
            .context("listing sandboxes")?
            .into_iter()
            .map(|c| c.image)
            .filter(|i| !i.is_empty()),
    );
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(name: &str, digest: &str, builtin: bool, updated_ms: i64) -> ImageSummary {
        ImageSummary {
            name: name.into(),
            digest: digest.into(),
            size: 1,
            builtin,
            pulled: !builtin,
            updated_unix_ms: updated_ms,
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "h", "1w", "-1h", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_old_unused_images_that_are_not_builtin_go() {
        let day = 86_400_000;
        let now = 10 * day;
        let images = [
            img("sandpool/busybox:latest", "sha256:b", true, 0),
            // a pool's, under its short and its full name
            img("python:3.12", "sha256:p", false, 0),
            img("docker.io/library/python:3.12", "sha256:p", false, 0),
            // another name of the pool's manifest
            img("mirror.lan/python:3.12", "sha256:p", false, 0),
            // a live sandbox's
            img("127.0.0.1:5000/app:1", "sha256:a", false, 0),
            // pulled an hour ago
            img("127.0.0.1:5000/new:1", "sha256:n", false, now - 3_600_000),
            // old and unused
            img("127.0.0.1:5000/old:1", "sha256:o", false, now - 2 * day),
            img(
                "sandpool.local/templates/t:b1",
                "sha256:t",
                false,
                now - 2 * day,
            ),
        ];
        let used = [
            "python:3.12".to_string(),
            "127.0.0.1:5000/app:1".to_string(),
        ];
        let p = plan(&images, &used, now, Duration::from_secs(86_400));
        let why: Vec<(&str, Option<&str>)> = p.iter().map(|(i, r)| (i.name.as_str(), *r)).collect();
        assert_eq!(
            why,
            [
                ("sandpool/busybox:latest", Some("builtin")),
                ("python:3.12", Some("in use")),
                ("docker.io/library/python:3.12", Some("in use")),
                ("mirror.lan/python:3.12", Some("in use")),
                ("127.0.0.1:5000/app:1", Some("in use")),
                ("127.0.0.1:5000/new:1", Some("recent")),
                ("127.0.0.1:5000/old:1", None),
                ("sandpool.local/templates/t:b1", None),
            ]
        );
        // keeping nothing for long: the recent one goes too
        let p = plan(&images, &used, now, Duration::ZERO);
        let gone = p.iter().filter(|(_, r)| r.is_none()).count();
        assert_eq!(gone, 3);
    }
}
