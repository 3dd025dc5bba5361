//! Data on disk is owner-only whatever the umask (issue 19, item 5): the data directory, its
//! shards, log, cache and MANIFEST, backups, exports and imports, under umask 022, from the
//! library and from the real binary. Each test sets the umask, so each runs alone (`common::alone`).

use crate::common;

use common::cli::{ok, p, shardbox};
use common::spawn::{spawn_shardbox, KillOnDrop};
use common::Client;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Every path under `root` (itself included) whose mode gives group or others any right.
fn open_to_others(root: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bad.push(format!("{} {mode:o}", path.display()));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&path).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    bad
}

fn umask_022() {
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe {
        libc::umask(0o022);
    }
}

#[tokio::test]
async fn the_library_makes_its_files_owner_only_under_umask_022() {
    if !common::alone() {
        return;
    }
    umask_022();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = common::TestServer::start_in(dir.clone(), |_| {}).await;
    let mut c = s.client().await;
    assert_eq!(c.put("/v1/kv/app/secret", "hunter2").await.status, 201);
    let out = tmp.path().join("bk");
    let r = c
        .post_json("/v1/admin/backup", serde_json::json!({ "out": p(&out) }))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    drop(c);
    s.stop().await;
    assert_eq!(open_to_others(&dir), Vec::<String>::new(), "data");
    assert_eq!(open_to_others(&out), Vec::<String>::new(), "backup");
}

#[tokio::test]
async fn the_binary_keeps_data_backups_exports_and_imports_owner_only_under_umask_022() {
    if !common::alone() {
        return;
    }
    umask_022();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (child, addr) = spawn_shardbox(&dir, &[]).expect("start");
    let mut child = KillOnDrop(child);
    let mut c = Client::connect(addr).await;
    assert_eq!(c.put("/v1/kv/app/secret", "hunter2").await.status, 201);
    let bk = tmp.path().join("bk");
    ok(
        &shardbox(&["backup", "--data", p(&dir), "--out", p(&bk)]),
        "backup",
    );
    let export = tmp.path().join("export.ndjson");
    ok(
        &shardbox(&["export", "--data", p(&dir), "--out", p(&export)]),
        "export",
    );
    drop(c);
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let imported = tmp.path().join("imported");
    ok(
        &shardbox(&["import", "--data", p(&imported), "--in", p(&export)]),
        "import",
    );
    let restored = tmp.path().join("restored");
    ok(
        &shardbox(&["restore", "--from", p(&bk), "--data", p(&restored)]),
        "restore",
    );
    for (what, path) in [
        ("data", &dir),
        ("backup", &bk),
        ("export", &export),
        ("import", &imported),
        ("restore", &restored),
    ] {
        assert_eq!(open_to_others(path), Vec::<String>::new(), "{what}");
    }
}
