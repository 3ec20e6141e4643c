//! The claim APIs' JSON (OpenSandbox and E2B `POST /sandboxes`): any body is
//! refused with a clear error or becomes a claim request that keeps the
//! gateway's promises (a pool or an image, bounded metadata keys).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandpool_gateway::{e2b, opensandbox};

fuzz_target!(|data: &[u8]| {
    match opensandbox::parse_create(data) {
        Ok(opensandbox::Create::Claim(c)) => {
            let image = c
                .template
                .as_ref()
                .map(|t| t.image.as_str())
                .unwrap_or_default();
            assert!(
                !c.pool.is_empty() || !image.is_empty(),
                "a claim names a pool or an image"
            );
            assert!(c.metadata.keys().all(|k| !k.is_empty() && k.len() <= 256));
        }
        Ok(opensandbox::Create::Restore(r)) => {
            assert!(
                !r.checkpoint_id.is_empty() && r.count == 1,
                "a restore names its snapshot"
            );
            assert!(r.metadata.keys().all(|k| !k.is_empty() && k.len() <= 256));
        }
        Err(e) => assert!(
            e.status().is_client_error() || e.status().as_u16() == 501,
            "bad input is a 4xx (or 501 unsupported): {e}"
        ),
    }
    match e2b::parse_create(data) {
        Ok(e2b::NewClaim { claim: c, .. }) => {
            assert!(!c.pool.is_empty(), "an E2B claim names a template");
            assert!(c.ttl_seconds > 0);
            assert!(c.mounts.iter().all(|m| m.mount_path.starts_with('/')));
        }
        Err(e) => assert!(
            e.status().is_client_error() || e.status().as_u16() == 501,
            "bad input is a 4xx (or 501 unsupported): {e}"
        ),
    }
});
