//! The snapshotter's contract, call by call, against the gRPC service of a running
//! `stratafs-snapshotter` (no containerd): containerd's semantics for keys, names, parents,
//! kinds, labels and field paths, filters, usage, removal and cleanup; the mounts it hands
//! out; the gRPC status of every bad input, and that a refused call changes nothing;
//! metadata across restarts, and the recovery of a removal cut short. None of this mounts,
//! so it runs as any user.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod snapshotter_support;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use snapshotter_support::{snapshotter_bin, Snapshotter};
use stratafs_mount::snapshotter::api::snapshots::snapshots_client::SnapshotsClient;
use stratafs_mount::snapshotter::api::snapshots::{self as pb, Kind};
use stratafs_mount::snapshotter::api::types::Mount;
use tonic::transport::Channel;
use tonic::Code;

type Client = SnapshotsClient<Channel>;

struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
    sock: PathBuf,
}

fn scratch() -> Scratch {
    let dir = tempfile::tempdir().expect("tempdir");
    Scratch {
        root: dir.path().join("root"),
        sock: dir.path().join("run/grpc.sock"),
        _dir: dir,
    }
}

fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn prepare(c: &mut Client, key: &str, parent: &str) -> Result<Vec<Mount>, tonic::Status> {
    prepare_l(c, key, parent, &[]).await
}

async fn prepare_l(
    c: &mut Client,
    key: &str,
    parent: &str,
    l: &[(&str, &str)],
) -> Result<Vec<Mount>, tonic::Status> {
    c.prepare(pb::PrepareSnapshotRequest {
        snapshotter: "stratafs".into(),
        key: key.into(),
        parent: parent.into(),
        labels: labels(l),
    })
    .await
    .map(|r| r.into_inner().mounts)
}

async fn view(c: &mut Client, key: &str, parent: &str) -> Result<Vec<Mount>, tonic::Status> {
    c.view(pb::ViewSnapshotRequest {
        snapshotter: "stratafs".into(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|r| r.into_inner().mounts)
}

async fn commit(c: &mut Client, name: &str, key: &str) -> Result<(), tonic::Status> {
    commit_l(c, name, key, &[]).await
}

async fn commit_l(
    c: &mut Client,
    name: &str,
    key: &str,
    l: &[(&str, &str)],
) -> Result<(), tonic::Status> {
    c.commit(pb::CommitSnapshotRequest {
        snapshotter: "stratafs".into(),
        name: name.into(),
        key: key.into(),
        labels: labels(l),
    })
    .await
    .map(|_| ())
}

async fn mounts(c: &mut Client, key: &str) -> Result<Vec<Mount>, tonic::Status> {
    c.mounts(pb::MountsRequest {
        snapshotter: "stratafs".into(),
        key: key.into(),
    })
    .await
    .map(|r| r.into_inner().mounts)
}

async fn remove(c: &mut Client, key: &str) -> Result<(), tonic::Status> {
    c.remove(pb::RemoveSnapshotRequest {
        snapshotter: "stratafs".into(),
        key: key.into(),
    })
    .await
    .map(|_| ())
}

async fn stat(c: &mut Client, key: &str) -> Result<pb::Info, tonic::Status> {
    c.stat(pb::StatSnapshotRequest {
        snapshotter: "stratafs".into(),
        key: key.into(),
    })
    .await
    .map(|r| r.into_inner().info.expect("stat answers an info"))
}

async fn update(
    c: &mut Client,
    name: &str,
    l: &[(&str, &str)],
    paths: &[&str],
) -> Result<pb::Info, tonic::Status> {
    c.update(pb::UpdateSnapshotRequest {
        snapshotter: "stratafs".into(),
        info: Some(pb::Info {
            name: name.into(),
            labels: labels(l),
            ..Default::default()
        }),
        update_mask: (!paths.is_empty()).then(|| prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    })
    .await
    .map(|r| r.into_inner().info.expect("update answers an info"))
}

async fn list(c: &mut Client, filters: &[&str]) -> Result<Vec<pb::Info>, tonic::Status> {
    let mut stream = c
        .list(pb::ListSnapshotsRequest {
            snapshotter: "stratafs".into(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.message().await? {
        out.extend(batch.info);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

async fn names(c: &mut Client, filters: &[&str]) -> Vec<String> {
    list(c, filters)
        .await
        .expect("list")
        .into_iter()
        .map(|i| i.name)
        .collect()
}

async fn usage(c: &mut Client, key: &str) -> Result<(i64, i64), tonic::Status> {
    c.usage(pb::UsageRequest {
        snapshotter: "stratafs".into(),
        key: key.into(),
    })
    .await
    .map(|r| {
        let u = r.into_inner();
        (u.size, u.inodes)
    })
}

async fn cleanup(c: &mut Client) -> Result<(), tonic::Status> {
    c.cleanup(pb::CleanupRequest {
        snapshotter: "stratafs".into(),
    })
    .await
    .map(|_| ())
}

/// The option `key=` of a mount.
fn opt<'a>(m: &'a Mount, key: &str) -> Option<&'a str> {
    m.options
        .iter()
        .find_map(|o| o.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// The upper (or only) directory a mount writes to.
fn dir_of(m: &Mount) -> PathBuf {
    match m.r#type.as_str() {
        "bind" => PathBuf::from(&m.source),
        _ => PathBuf::from(opt(m, "upperdir").expect("an upperdir")),
    }
}

/// Every directory a mount names.
fn paths_of(m: &Mount) -> Vec<PathBuf> {
    if m.r#type == "bind" {
        return vec![PathBuf::from(&m.source)];
    }
    let mut v: Vec<PathBuf> = ["upperdir", "workdir"]
        .iter()
        .filter_map(|k| opt(m, k).map(PathBuf::from))
        .collect();
    v.extend(
        opt(m, "lowerdir")
            .expect("a lowerdir")
            .split(':')
            .map(PathBuf::from),
    );
    v
}

/// Everything observable: every snapshot's info, and the files under the root other than
/// the lock and the database.
async fn state(c: &mut Client, root: &Path) -> (Vec<String>, Vec<PathBuf>) {
    let infos = list(c, &[])
        .await
        .expect("list")
        .into_iter()
        .map(|i| format!("{i:?}"))
        .collect();
    let mut files = Vec::new();
    let mut stack = vec![root.join("snapshots")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read root").flatten() {
            let p = e.path();
            files.push(p.strip_prefix(root).expect("under root").to_path_buf());
            if e.file_type().expect("type").is_dir() {
                stack.push(p);
            }
        }
    }
    files.sort();
    (infos, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_are_shaped_as_containerds_overlayfs_snapshotter_shapes_them() {
    let s = scratch();
    let snap = Snapshotter::start(&s.root, &s.sock);
    let mut c = snap.client().await;

    // No parent: a bind mount of the snapshot's own directory, writable.
    let m = prepare(&mut c, "base-active", "").await.expect("prepare");
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].r#type, "bind");
    assert_eq!(m[0].options, ["rw", "rbind"]);
    let base_dir = PathBuf::from(&m[0].source);
    assert!(base_dir.starts_with(s.root.join("snapshots")) && base_dir.is_dir());
    fs::write(base_dir.join("file"), b"base\n").expect("write into the layer");
    assert_eq!(mounts(&mut c, "base-active").await.expect("mounts"), m);
    commit(&mut c, "base", "base-active").await.expect("commit");

    // A view of one committed layer: that layer, bound read-only.
    let v = view(&mut c, "v1", "base").await.expect("view");
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].r#type, "bind");
    assert_eq!(v[0].options, ["ro", "rbind"]);
    assert_eq!(PathBuf::from(&v[0].source), base_dir);

    // A view without a parent: its own (empty) directory, read-only.
    let v0 = view(&mut c, "v0", "").await.expect("view");
    assert_eq!(v0[0].r#type, "bind");
    assert_eq!(v0[0].options, ["ro", "rbind"]);

    // Active on a parent: a stratafs union, the parents as lowers, nearest first.
    let a = prepare(&mut c, "mid-active", "base")
        .await
        .expect("prepare");
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].r#type, "fuse3.stratafs");
    assert_eq!(
        opt(&a[0], "lowerdir"),
        Some(base_dir.to_str().expect("utf-8"))
    );
    let upper = PathBuf::from(opt(&a[0], "upperdir").expect("upperdir"));
    let work = PathBuf::from(opt(&a[0], "workdir").expect("workdir"));
    assert!(upper.is_dir() && work.is_dir());
    assert_eq!(
        upper.parent(),
        work.parent(),
        "upper and work sit side by side"
    );
    assert!(opt(&a[0], "uidmapping").is_none() && opt(&a[0], "redirect_dir").is_none());
    commit(&mut c, "mid", "mid-active").await.expect("commit");

    // Two committed parents: a view is a read-only union (lowers only), an active snapshot
    // a writable one.
    let v2 = view(&mut c, "v2", "mid").await.expect("view");
    assert_eq!(v2[0].r#type, "fuse3.stratafs");
    assert_eq!(
        opt(&v2[0], "lowerdir"),
        Some(format!("{}:{}", upper.display(), base_dir.display()).as_str())
    );
    assert!(opt(&v2[0], "upperdir").is_none() && opt(&v2[0], "workdir").is_none());
    let top = prepare(&mut c, "top", "mid").await.expect("prepare");
    assert_eq!(opt(&top[0], "lowerdir"), opt(&v2[0], "lowerdir"));
    assert!(opt(&top[0], "upperdir").is_some());

    // containerd's id-mapping labels become stratafs's mapping options.
    let mapped = prepare_l(
        &mut c,
        "mapped",
        "mid",
        &[
            ("containerd.io/snapshot/uidmapping", "0:100000:65536"),
            ("containerd.io/snapshot/gidmapping", "0:200000:65536"),
        ],
    )
    .await
    .expect("prepare");
    assert_eq!(opt(&mapped[0], "uidmapping"), Some("0:100000:65536"));
    assert_eq!(opt(&mapped[0], "gidmapping"), Some("0:200000:65536"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_dir_and_metacopy_are_options_of_the_root_off_by_default() {
    let s = scratch();
    let snap = Snapshotter::start_with(&s.root, &s.sock, &["--redirect-dir", "--metacopy"]);
    let mut c = snap.client().await;
    prepare(&mut c, "a", "").await.expect("prepare");
    commit(&mut c, "base", "a").await.expect("commit");
    let m = prepare(&mut c, "b", "base").await.expect("prepare");
    assert_eq!(opt(&m[0], "redirect_dir"), Some("on"));
    assert_eq!(opt(&m[0], "metacopy"), Some("on"));
    // A bind mount takes no union options.
    let m = prepare(&mut c, "c", "").await.expect("prepare");
    assert_eq!(m[0].options, ["rw", "rbind"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_list_update_usage_commit_and_remove() {
    let s = scratch();
    let snap = Snapshotter::start(&s.root, &s.sock);
    let mut c = snap.client().await;

    let m = prepare_l(&mut c, "k1", "", &[("a", "1"), ("b", "2")])
        .await
        .expect("prepare");
    let i = stat(&mut c, "k1").await.expect("stat");
    assert_eq!(i.name, "k1");
    assert_eq!(i.parent, "");
    assert_eq!(i.kind, Kind::Active as i32);
    assert_eq!(i.labels, labels(&[("a", "1"), ("b", "2")]));
    assert!(i.created_at.is_some() && i.updated_at.is_some());

    // Usage: bytes of allocated blocks and inodes of the snapshot's own layer, live while
    // active.
    let dir = dir_of(&m[0]);
    let (size0, inodes0) = usage(&mut c, "k1").await.expect("usage");
    assert_eq!(inodes0, 1, "an empty layer is its root directory");
    fs::write(dir.join("f"), vec![7u8; 100_000]).expect("write");
    fs::create_dir(dir.join("d")).expect("mkdir");
    fs::hard_link(dir.join("f"), dir.join("d/link")).expect("link");
    let (size1, inodes1) = usage(&mut c, "k1").await.expect("usage");
    assert_eq!(inodes1, 3, "root, f (linked twice, counted once), d");
    assert!(size1 >= size0 + 100_000, "{size0} -> {size1}");

    // Commit: the key becomes the name; the commit's labels are the committed snapshot's.
    commit_l(&mut c, "n1", "k1", &[("c", "3")])
        .await
        .expect("commit");
    assert_eq!(
        stat(&mut c, "k1")
            .await
            .expect_err("the key is gone")
            .code(),
        Code::NotFound
    );
    let i = stat(&mut c, "n1").await.expect("stat");
    assert_eq!(i.kind, Kind::Committed as i32);
    assert_eq!(i.labels, labels(&[("c", "3")]));
    assert_eq!(usage(&mut c, "n1").await.expect("usage"), (size1, inodes1));

    prepare(&mut c, "k2", "n1").await.expect("prepare");
    view(&mut c, "v2", "n1").await.expect("view");
    let i = stat(&mut c, "k2").await.expect("stat");
    assert_eq!(i.parent, "n1");
    let i = stat(&mut c, "v2").await.expect("stat");
    assert_eq!(i.kind, Kind::View as i32);

    // Update with field paths: labels.KEY sets or (absent from the info) removes one label;
    // labels (or no paths) replaces them all.
    let before = stat(&mut c, "n1").await.expect("stat");
    let i = update(&mut c, "n1", &[("x", "1")], &["labels.x"])
        .await
        .expect("update");
    assert_eq!(i.labels, labels(&[("c", "3"), ("x", "1")]));
    assert_eq!(i.created_at, before.created_at);
    let t = |i: &pb::Info| {
        let t = i.updated_at.expect("updated_at");
        (t.seconds, t.nanos)
    };
    assert!(t(&i) >= t(&before));
    let i = update(&mut c, "n1", &[], &["labels.c"])
        .await
        .expect("update");
    assert_eq!(i.labels, labels(&[("x", "1")]));
    let i = update(&mut c, "n1", &[("y", "2")], &["labels"])
        .await
        .expect("update");
    assert_eq!(i.labels, labels(&[("y", "2")]));
    let i = update(&mut c, "n1", &[("z", "3"), ("y", "2")], &[])
        .await
        .expect("update");
    assert_eq!(i.labels, labels(&[("y", "2"), ("z", "3")]));
    assert_eq!(stat(&mut c, "n1").await.expect("stat").labels, i.labels);
    update(
        &mut c,
        "k2",
        &[("containerd.io/gc.root", "t")],
        &["labels.containerd.io/gc.root"],
    )
    .await
    .expect("update");

    // List with filters (containerd's syntax; filters are or-ed, selectors and-ed).
    assert_eq!(names(&mut c, &[]).await, ["k2", "n1", "v2"]);
    assert_eq!(names(&mut c, &["kind==committed"]).await, ["n1"]);
    assert_eq!(
        names(&mut c, &["kind==view", "kind==active"]).await,
        ["k2", "v2"]
    );
    assert_eq!(names(&mut c, &["parent==n1,kind!=view"]).await, ["k2"]);
    assert_eq!(names(&mut c, &["parent"]).await, ["k2", "v2"]);
    assert_eq!(names(&mut c, &["labels.y==2"]).await, ["n1"]);
    assert_eq!(
        names(&mut c, &[r#"labels."containerd.io/gc.root""#]).await,
        ["k2"]
    );
    assert_eq!(names(&mut c, &["name~=/^[kv]/"]).await, ["k2", "v2"]);
    assert!(names(&mut c, &["name==nothing"]).await.is_empty());

    // Many snapshots come back in several messages of the stream.
    for i in 0..250 {
        view(&mut c, &format!("many-{i:03}"), "n1")
            .await
            .expect("view");
    }
    assert_eq!(names(&mut c, &["name~=^many-"]).await.len(), 250);

    // Remove: children first; the layer's directory goes with it.
    for i in 0..250 {
        remove(&mut c, &format!("many-{i:03}"))
            .await
            .expect("remove");
    }
    let k2_dir = dir_of(&mounts(&mut c, "k2").await.expect("mounts")[0]);
    let k2_snapshot_dir = k2_dir.parent().expect("snapshot dir").to_path_buf();
    assert!(k2_snapshot_dir.is_dir());
    remove(&mut c, "k2").await.expect("remove");
    assert!(!k2_snapshot_dir.exists());
    remove(&mut c, "v2").await.expect("remove");
    remove(&mut c, "n1").await.expect("remove");
    assert!(names(&mut c, &[]).await.is_empty());
    assert_eq!(
        fs::read_dir(s.root.join("snapshots"))
            .expect("read")
            .count(),
        0,
        "every layer directory is gone"
    );
    assert_eq!(fs::read_dir(s.root.join("trash")).expect("read").count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_containerds_status_and_changes_nothing() {
    let s = scratch();
    let snap = Snapshotter::start(&s.root, &s.sock);
    let mut c = snap.client().await;
    prepare(&mut c, "base-a", "").await.expect("prepare");
    commit(&mut c, "base", "base-a").await.expect("commit");
    prepare(&mut c, "active", "base").await.expect("prepare");
    view(&mut c, "view", "base").await.expect("view");

    let before = state(&mut c, &s.root).await;
    let big = "v".repeat(5000);
    let cases: Vec<(&str, Code, Result<(), tonic::Status>)> = vec![
        // Prepare and View
        (
            "prepare: duplicate key",
            Code::AlreadyExists,
            prepare(&mut c, "active", "").await.map(drop),
        ),
        (
            "prepare: key of a committed snapshot",
            Code::AlreadyExists,
            prepare(&mut c, "base", "").await.map(drop),
        ),
        (
            "prepare: unknown parent",
            Code::NotFound,
            prepare(&mut c, "x", "nope").await.map(drop),
        ),
        (
            "prepare: active parent",
            Code::FailedPrecondition,
            prepare(&mut c, "x", "active").await.map(drop),
        ),
        (
            "prepare: view parent",
            Code::FailedPrecondition,
            prepare(&mut c, "x", "view").await.map(drop),
        ),
        (
            "prepare: empty key",
            Code::InvalidArgument,
            prepare(&mut c, "", "base").await.map(drop),
        ),
        (
            "prepare: label too long",
            Code::InvalidArgument,
            prepare_l(&mut c, "x", "base", &[("k", &big)])
                .await
                .map(drop),
        ),
        (
            "view: duplicate key",
            Code::AlreadyExists,
            view(&mut c, "view", "base").await.map(drop),
        ),
        (
            "view: unknown parent",
            Code::NotFound,
            view(&mut c, "x", "nope").await.map(drop),
        ),
        (
            "view: active parent",
            Code::FailedPrecondition,
            view(&mut c, "x", "active").await.map(drop),
        ),
        // Mounts
        (
            "mounts: unknown key",
            Code::NotFound,
            mounts(&mut c, "nope").await.map(drop),
        ),
        (
            "mounts: committed snapshot",
            Code::FailedPrecondition,
            mounts(&mut c, "base").await.map(drop),
        ),
        (
            "mounts: empty key",
            Code::InvalidArgument,
            mounts(&mut c, "").await.map(drop),
        ),
        // Commit
        (
            "commit: unknown key",
            Code::NotFound,
            commit(&mut c, "n", "nope").await,
        ),
        (
            "commit: a committed snapshot",
            Code::FailedPrecondition,
            commit(&mut c, "n", "base").await,
        ),
        (
            "commit: a view",
            Code::FailedPrecondition,
            commit(&mut c, "n", "view").await,
        ),
        (
            "commit: name taken",
            Code::AlreadyExists,
            commit(&mut c, "base", "active").await,
        ),
        (
            "commit: name of an active snapshot",
            Code::AlreadyExists,
            commit(&mut c, "view", "active").await,
        ),
        (
            "commit: empty name",
            Code::InvalidArgument,
            commit(&mut c, "", "active").await,
        ),
        (
            "commit: label too long",
            Code::InvalidArgument,
            commit_l(&mut c, "n", "active", &[(&big, "v")]).await,
        ),
        // Remove
        (
            "remove: unknown key",
            Code::NotFound,
            remove(&mut c, "nope").await,
        ),
        (
            "remove: has children",
            Code::FailedPrecondition,
            remove(&mut c, "base").await,
        ),
        (
            "remove: empty key",
            Code::InvalidArgument,
            remove(&mut c, "").await,
        ),
        // Stat, Update, List, Usage
        (
            "stat: unknown key",
            Code::NotFound,
            stat(&mut c, "nope").await.map(drop),
        ),
        (
            "update: unknown key",
            Code::NotFound,
            update(&mut c, "nope", &[("a", "b")], &[]).await.map(drop),
        ),
        (
            "update: immutable field",
            Code::InvalidArgument,
            update(&mut c, "base", &[], &["parent"]).await.map(drop),
        ),
        (
            "update: labels and a bad path",
            Code::InvalidArgument,
            update(&mut c, "base", &[("a", "b")], &["labels.a", "kind"])
                .await
                .map(drop),
        ),
        (
            "update: label too long",
            Code::InvalidArgument,
            update(&mut c, "base", &[("a", &big)], &[]).await.map(drop),
        ),
        (
            "list: malformed filter",
            Code::InvalidArgument,
            list(&mut c, &["name=="]).await.map(drop),
        ),
        (
            "list: bad regular expression",
            Code::InvalidArgument,
            list(&mut c, &["name~=/(/"]).await.map(drop),
        ),
        (
            "usage: unknown key",
            Code::NotFound,
            usage(&mut c, "nope").await.map(drop),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, want, got) in cases {
        match got {
            Ok(()) => wrong.push(format!("{what}: succeeded, want {want:?}")),
            Err(st) if st.code() != want => wrong.push(format!(
                "{what}: {:?} ({}), want {want:?}",
                st.code(),
                st.message()
            )),
            Err(_) => {}
        }
    }
    // An update without an info.
    let st = c
        .update(pb::UpdateSnapshotRequest {
            snapshotter: "stratafs".into(),
            info: None,
            update_mask: None,
        })
        .await
        .expect_err("update without info");
    assert_eq!(st.code(), Code::InvalidArgument);
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    assert_eq!(
        state(&mut c, &s.root).await,
        before,
        "a refused call changed something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_survives_a_restart_and_a_second_snapshotter_is_refused() {
    let s = scratch();
    let mut snap = Snapshotter::start(&s.root, &s.sock);
    let mut c = snap.client().await;
    let m = prepare(&mut c, "a", "").await.expect("prepare");
    fs::write(dir_of(&m[0]).join("kept"), b"kept\n").expect("write");
    commit_l(&mut c, "base", "a", &[("l", "v")])
        .await
        .expect("commit");
    prepare(&mut c, "active", "base").await.expect("prepare");
    let before = state(&mut c, &s.root).await;
    let mounts_before = mounts(&mut c, "active").await.expect("mounts");

    // One snapshotter per root.
    let other = std::process::Command::new(snapshotter_bin())
        .arg("--root")
        .arg(&s.root)
        .arg("--address")
        .arg(s.sock.with_file_name("other.sock"))
        .output()
        .expect("run a second snapshotter");
    assert!(!other.status.success());
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("another stratafs-snapshotter"), "{err}");

    drop(c);
    assert!(snap.stop(), "SIGTERM stops it cleanly: {}", snap.log_text());
    assert!(!s.sock.exists(), "the socket is removed on the way out");
    snap.restart();
    let mut c = snap.client().await;
    assert_eq!(state(&mut c, &s.root).await, before);
    assert_eq!(
        mounts(&mut c, "active").await.expect("mounts"),
        mounts_before
    );
    let i = stat(&mut c, "base").await.expect("stat");
    assert_eq!(i.labels, labels(&[("l", "v")]));
    assert!(usage(&mut c, "base").await.expect("usage").1 >= 2);
    // Ids are not reused after a restart.
    let m = prepare(&mut c, "b", "").await.expect("prepare");
    assert!(!before.1.contains(
        &dir_of(&m[0])
            .strip_prefix(&s.root)
            .expect("under root")
            .to_path_buf()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directories_follow_the_records_after_a_crash_and_on_cleanup() {
    let s = scratch();
    let mut snap = Snapshotter::start(&s.root, &s.sock);
    let mut c = snap.client().await;
    let m = prepare(&mut c, "a", "").await.expect("prepare");
    let layer = dir_of(&m[0]);
    fs::write(layer.join("data"), b"data\n").expect("write");
    commit(&mut c, "base", "a").await.expect("commit");
    drop(c);
    assert!(snap.stop());

    // What a crash can leave: a removal renamed aside whose transaction never committed (the
    // record is there: the layer must come back), a snapshot being made (tmp/), a layer
    // renamed into place whose transaction never committed (no record), and a removal whose
    // transaction committed but whose deletion did not finish.
    let snap_dir = layer.parent().expect("snapshot dir").to_path_buf();
    let id = snap_dir.file_name().expect("id").to_owned();
    fs::rename(&snap_dir, s.root.join("trash").join(&id)).expect("rename aside");
    fs::create_dir_all(s.root.join("tmp/new-77/fs")).expect("tmp");
    fs::create_dir_all(s.root.join("snapshots/78/fs/x")).expect("orphan");
    fs::create_dir_all(s.root.join("trash/79/fs")).expect("trash");

    snap.restart();
    let mut c = snap.client().await;
    assert_eq!(
        fs::read(layer.join("data")).expect("the layer is back"),
        b"data\n"
    );
    assert!(!s.root.join("tmp/new-77").exists());
    assert!(!s.root.join("snapshots/78").exists());
    assert!(!s.root.join("trash/79").exists());

    // Cleanup does the same while serving.
    fs::create_dir_all(s.root.join("snapshots/1000/fs")).expect("orphan");
    cleanup(&mut c).await.expect("cleanup");
    assert!(!s.root.join("snapshots/1000").exists());
    assert!(
        layer.join("data").exists(),
        "cleanup keeps what a record owns"
    );
    assert_eq!(names(&mut c, &[]).await, ["base"]);
}

/// A small deterministic generator (xorshift) for the crash test's operations.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Random calls until one fails (the snapshotter is gone).
async fn churn(mut c: Client, seed: u64) {
    let mut rng = Xorshift(seed | 1);
    loop {
        let k = format!("k{}", rng.below(12));
        let n = format!("n{}", rng.below(12));
        let parent = if rng.below(3) == 0 {
            String::new()
        } else {
            format!("n{}", rng.below(12))
        };
        let r = match rng.below(5) {
            0 | 1 => match prepare(&mut c, &k, &parent).await {
                Ok(m) => {
                    let d = dir_of(&m[0]);
                    for i in 0..rng.below(20) {
                        let _ = fs::write(d.join(format!("f{i}")), vec![1u8; 5000]);
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            },
            2 => commit(&mut c, &n, &k).await,
            3 => remove(&mut c, if rng.below(2) == 0 { &k } else { &n }).await,
            _ => view(&mut c, &format!("v{}", rng.below(6)), &parent)
                .await
                .map(drop),
        };
        if let Err(st) = r {
            if matches!(
                st.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            ) {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_at_any_point_leaves_records_and_directories_in_step() {
    let s = scratch();
    let mut snap = Snapshotter::start(&s.root, &s.sock);
    let mut rng = Xorshift(0x5eed_cafe);
    let mut made = 0;
    for round in 0..8u64 {
        let c = snap.client().await;
        let task = tokio::spawn(churn(c, round * 7919 + 1));
        tokio::time::sleep(std::time::Duration::from_millis(50 + rng.below(400))).await;
        snap.kill();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
        snap.restart();
        let mut c = snap.client().await;
        let infos = list(&mut c, &[]).await.expect("list after a kill");
        made += infos.len();
        // Every record has its directory, and every directory a record.
        let dirs = fs::read_dir(s.root.join("snapshots"))
            .expect("read")
            .count();
        assert_eq!(dirs, infos.len(), "round {round}: {infos:?}");
        for d in ["tmp", "trash"] {
            assert_eq!(
                fs::read_dir(s.root.join(d)).expect("read").count(),
                0,
                "{d}/"
            );
        }
        for i in &infos {
            let m = if i.kind == Kind::Committed as i32 {
                let key = format!("check-{}", i.name);
                let m = view(&mut c, &key, &i.name)
                    .await
                    .expect("a view of a committed layer");
                remove(&mut c, &key).await.expect("remove the view");
                m
            } else {
                mounts(&mut c, &i.name).await.expect("mounts")
            };
            for dir in paths_of(&m[0]) {
                assert!(
                    dir.is_dir(),
                    "round {round}: {}: {} is missing",
                    i.name,
                    dir.display()
                );
            }
            if i.kind != Kind::Committed as i32 {
                usage(&mut c, &i.name).await.expect("usage");
            }
        }
    }
    assert!(
        made > 8,
        "the churn made snapshots ({made} seen over the rounds)"
    );
}

#[test]
fn help_teaches_the_containerd_config() {
    let out = std::process::Command::new(snapshotter_bin())
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for want in [
        "[proxy_plugins.stratafs]",
        "type = \"snapshot\"",
        "snapshotter = \"stratafs\"",
        "--root",
        "--address",
        "--redirect-dir",
        "--metacopy",
        "SIGTERM",
    ] {
        assert!(help.contains(want), "--help lacks {want:?}:\n{help}");
    }
    let bad = std::process::Command::new(snapshotter_bin())
        .arg("--no-such-flag")
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2));
}
