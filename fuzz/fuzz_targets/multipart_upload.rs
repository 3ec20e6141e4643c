//! The runtime's streaming multipart upload (`POST /files/upload`): any body,
//! cut into chunks anywhere, is refused with a clear error or written within
//! the limits; never a panic. Runs chrooted into a fresh temp dir, so the
//! absolute paths a fuzzed metadata part names land there, not on the host.
#![no_main]

use std::sync::Once;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sandpool_runtime::upload::{UploadLimits, receive};

static JAIL: Once = Once::new();

/// chroot into a fresh tmpfs, in a private mount namespace where only the
/// fuzz project's `corpus/` and `artifacts/` are bind-mounted (at their own
/// paths, where libFuzzer writes; pass them as absolute paths), so nothing a
/// fuzzed upload names — absolute or relative — reaches the host elsewhere.
fn jail() {
    use nix::mount::{MsFlags, mount};
    JAIL.call_once(|| {
        let exe = std::env::current_exe().expect("exe path");
        let project = exe
            .ancestors()
            .find(|p| p.join("fuzz_targets").is_dir())
            .expect("fuzz project dir")
            .to_path_buf();
        // a fresh 0700 dir (mkdtemp: never an existing path or a symlink)
        // with a tmpfs of this namespace on it: nothing written stays on disk
        let dir = nix::unistd::mkdtemp(&std::env::temp_dir().join("sandpool-fuzz-upload-XXXXXX"))
            .expect("mkdtemp");
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .expect("mount namespace (the fuzz target runs as root)");
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("private mounts");
        mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("size=256m,mode=0700"),
        )
        .expect("tmpfs jail");
        std::fs::create_dir_all(dir.join("tmp")).expect("/tmp in the jail");
        for sub in ["corpus", "artifacts"] {
            let outside = project.join(sub);
            std::fs::create_dir_all(&outside).expect("fuzz project dirs");
            let inside = dir.join(outside.strip_prefix("/").expect("absolute"));
            std::fs::create_dir_all(&inside).expect("jail dirs");
            mount(
                Some(&outside),
                &inside,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .expect("bind");
        }
        nix::unistd::chroot(&dir).expect("chroot");
        std::env::set_current_dir("/").expect("chdir /");
    });
}

fuzz_target!(|data: &[u8]| {
    jail();
    // first byte: chunk size, so the parser meets every split point
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).max(1);
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(cut)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let limits = UploadLimits {
        max_file_bytes: 4096,
        max_metadata_bytes: 1024,
        max_files: 8,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let res = rt.block_on(receive(
        futures_util::stream::iter(chunks),
        "XBOUNDARY".to_string(),
        &limits,
    ));
    if let Ok(files) = res {
        for f in files {
            assert!(f.size <= limits.max_file_bytes);
            let _ = std::fs::remove_file(&f.path);
        }
    }
});
