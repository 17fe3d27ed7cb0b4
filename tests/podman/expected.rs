//! Expected trees: what `tests/podman/state.sh` prints for each image and container.

/// `/data` of the hand-made layered image: a line from every layer, nothing whited out.
pub(crate) const LAYERS_STATE: &str = "\
/data dir 755 0:0
/data/deep dir 755 0:0
/data/deep/a dir 755 0:0
/data/deep/a/b dir 755 0:0
/data/deep/a/b/c.txt file 644 0:0 = deep|
/data/deep/a/b/d.txt file 644 0:0 = d2|
/data/dir_del dir 755 0:0
/data/dir_del/c file 644 0:0 = c|
/data/exec.sh file 755 0:0 = #!/bin/sh|echo exec-ok|
/data/file_to_dir dir 755 0:0
/data/file_to_dir/inner.txt file 644 0:0 = inner|
/data/hard1 file 644 0:0 = hard|
/data/hard2 file 644 0:0 = hard|
/data/keep.txt file 644 0:0 = keep|
/data/l1only.txt file 644 0:0 = l1|
/data/l3.txt file 644 0:0 = l3|
/data/mod.txt file 644 0:0 = v2|
/data/opq dir 755 0:0
/data/opq/new1 file 644 0:0 = new1|
/data/opq/new3 file 644 0:0 = new3|
/data/owned dir 750 1000:1000
/data/owned/f file 640 1000:1000 = owned|
/data/replace_dir file 644 0:0 = nowfile|
/data/suid file 4755 0:0 = suid|
/data/sym_l1 link 0:0 -> l1only.txt
";

/// Names of the layered image that whiteouts, opaque directories and replacements hide.
pub(crate) const LAYERS_GONE: &[&str] = &[
    "/data/del.txt",
    "/data/.wh.del.txt",
    "/data/.wh.dir_del",
    "/data/.wh.l2only.txt",
    "/data/dir_del/a",
    "/data/dir_del/sub",
    "/data/dir_del/sub/b",
    "/data/opq/old1",
    "/data/opq/sub",
    "/data/opq/sub/old3",
    "/data/opq/.wh..wh..opq",
    "/data/replace_dir/x",
    "/data/l2only.txt",
];

/// `/data` after tests/podman/writes.sh, with `/data/stamp` holding `stamp`.
pub(crate) fn written_state(stamp: &str) -> String {
    format!(
        "\
/data dir 755 0:0
/data/dir_del dir 755 0:0
/data/dir_del/c2 file 644 0:0 = x|
/data/exec.sh file 755 1234:5678 = #!/bin/sh|echo exec-ok|
/data/file_to_dir dir 755 0:0
/data/file_to_dir/renamed.txt file 644 0:0 = inner|
/data/hard1 file 644 0:0 = hard|
/data/hard2 file 644 0:0 = hard|
/data/l1hard file 644 0:0 = l1|
/data/l1only.txt file 644 0:0 = l1|
/data/l3moved.txt file 644 0:0 = l3|
/data/mod.txt file 644 0:0 = v2|more|
/data/newdir dir 755 0:0
/data/newdir/sub dir 755 0:0
/data/newdir/sub/n.txt file 644 0:0 = n|
/data/newlink link 0:0 -> mod.txt
/data/opq dir 755 0:0
/data/opq/new1 file 644 0:0 = new1|
/data/opq/new3 file 644 0:0 = new3|
/data/owned dir 750 1000:1000
/data/owned/f file 640 1000:1000 = owned|more|
/data/replace_dir file 600 0:0 = nowfile|
/data/stamp file 644 0:0 = {stamp}
/data/suid file 4755 0:0 = suid|
/data/sym_l1 link 0:0 -> l1only.txt
"
    )
}

/// Names writes.sh removes (on top of [`LAYERS_GONE`]).
pub(crate) const WRITES_GONE: &[&str] = &[
    "/data/keep.txt",
    "/data/deep",
    "/data/deep/a/b/c.txt",
    "/data/deep/a/b/d.txt",
    "/data/file_to_dir/inner.txt",
    "/data/dir_del/c",
    "/data/l3.txt",
];

/// `podman diff` of the container that ran writes.sh, restricted to `/data`.
pub(crate) const WRITES_DIFF: &str = "\
C /data
C /data/mod.txt
D /data/keep.txt
D /data/deep
C /data/replace_dir
C /data/file_to_dir
D /data/file_to_dir/inner.txt
A /data/file_to_dir/renamed.txt
A /data/newlink
A /data/newdir
A /data/newdir/sub
A /data/newdir/sub/n.txt
C /data/dir_del
D /data/dir_del/c
A /data/dir_del/c2
A /data/l1hard
D /data/l3.txt
A /data/l3moved.txt
C /data/exec.sh
C /data/owned
C /data/owned/f
A /data/stamp
";

/// `/app` and `/data` of the image tests/podman/Containerfile builds.
pub(crate) const BUILT_STATE: &str = "\
/app dir 755 0:0
/app/b.sh file 4755 0:0 = b|
/app/b2.sh file 644 1000:1000 = b|
/app/dirlink link 0:0 -> ../data/f2d_moved
/app/link link 0:0 -> /data/mod.txt
/app/secret file 700 0:0 = secret|
/data dir 755 0:0
/data/deep dir 755 0:0
/data/deep/a dir 755 0:0
/data/deep/a/b dir 755 0:0
/data/deep/a/b/c.txt file 644 0:0 = deep|
/data/deep/a/b/d.txt file 644 0:0 = d2|
/data/dir_del dir 755 0:0
/data/dir_del/c file 644 0:0 = c|
/data/exec.sh file 755 0:0 = #!/bin/sh|echo exec-ok|
/data/f2d_moved dir 755 0:0
/data/f2d_moved/inner.txt file 644 0:0 = inner|
/data/hard2 file 644 0:0 = hard|
/data/l1moved.txt file 644 0:0 = l1|
/data/l3.txt file 644 0:0 = l3|
/data/mod.txt file 644 0:0 = v2|v3|
/data/opq dir 755 0:0
/data/opq/new1 file 644 0:0 = new1|
/data/opq/new3 file 644 0:0 = new3|
/data/owned dir 750 1000:1000
/data/owned/f file 600 1000:1000 = owned|
/data/replace_dir file 644 0:0 = nowfile|
/data/suid file 4755 0:0 = suid|
/data/sym_l1 link 0:0 -> l1only.txt
";

pub(crate) const BUILT_GONE: &[&str] = &[
    "/data/keep.txt",
    "/data/l1only.txt",
    "/data/file_to_dir",
    "/data/hard1",
    "/app/a.txt",
    "/app/renamed.txt",
    "/app/tmpdir",
];
