//! Shared support for the stratafs-mount tests: facility checks that fail under CI, image
//! archives built in the test (OCI layouts, OCI archives, docker-archives; gzip, zstd and
//! plain layers), a runner for the helper, and mount guards that always unmount.
#![allow(dead_code)]

// Facility checks, mount-table queries and the kernel mount guard are the stratafs tests'.
#[path = "../../../tests/common/base.rs"]
mod base;
pub use base::*;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

// ---- facilities ----

/// Root (device nodes, kernel whiteouts, owners).
pub fn can_root() -> bool {
    facility(is_root(), "root")
}

// ---- the binaries ----

/// The helper under test.
pub fn helper_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stratafs-mount"))
}

/// The stratafs daemon: next to the helper (`cargo test --workspace` builds it), else built
/// now into the same target directory.
pub fn daemon_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let helper = helper_bin();
        let dir = helper.parent().expect("bin dir").to_path_buf();
        let bin = dir.join("stratafs");
        if !bin.is_file() {
            let target_dir = dir.parent().expect("target dir").to_path_buf();
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
            let out = run(Command::new(cargo)
                .args([
                    "build",
                    "-p",
                    "stratafs",
                    "--bin",
                    "stratafs",
                    "--manifest-path",
                ])
                .arg(&manifest)
                .arg("--target-dir")
                .arg(&target_dir));
            assert!(
                out.status.success(),
                "building the daemon failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(bin.is_file(), "no daemon at {}", bin.display());
        // A private copy, so a concurrent build replacing the binary cannot break a mount.
        // Copies of test processes that have exited are removed.
        if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("stratafs-mount-test-bin-") {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let copy_dir =
            std::env::temp_dir().join(format!("stratafs-mount-test-bin-{}", std::process::id()));
        std::fs::create_dir_all(&copy_dir).expect("bin copy dir");
        let copy = copy_dir.join("stratafs");
        let part = copy_dir.join("stratafs.part");
        std::fs::copy(&bin, &part).expect("copy the daemon");
        std::fs::rename(&part, &copy).expect("place the daemon copy");
        copy
    })
    .clone()
}

/// Runs a command to completion, capturing its output.
pub fn run(cmd: &mut Command) -> Output {
    match cmd.stdin(Stdio::null()).output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    }
}

/// A store in a temporary directory, and the helper run against it.
pub struct Helper {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
}

impl Helper {
    pub fn new() -> Helper {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("store");
        Helper { dir, store }
    }

    /// The helper command with `--store` and `--daemon` set.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(helper_bin());
        c.arg("--store").arg(&self.store);
        if is_root() && has_fuse() {
            c.arg("--daemon").arg(daemon_bin());
        }
        c.args(args);
        c
    }

    /// Runs the helper; returns its output whatever the status.
    pub fn run(&self, args: &[&str]) -> Output {
        run(&mut self.cmd(args))
    }

    /// Runs the helper, panicking with its stderr unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "stratafs-mount {args:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs the helper expecting failure with exit status 1; returns the stderr line.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(
            o.status.code(),
            Some(1),
            "stratafs-mount {args:?} should fail with 1: stdout {} stderr {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(err.lines().count(), 1, "one error line, got: {err}");
        assert!(err.starts_with("stratafs-mount: "), "{err}");
        err
    }

    /// A path in the test's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Mounts container `name` (at its own directory, or `target`); unmounted on drop.
    pub fn mount(&self, name: &str, target: Option<&Path>) -> ContainerMount<'_> {
        self.mount_with(name, target, &[])
    }

    /// [`Helper::mount`] with more arguments (`--suid`, `--dev`).
    pub fn mount_with(
        &self,
        name: &str,
        target: Option<&Path>,
        extra: &[&str],
    ) -> ContainerMount<'_> {
        let mut args = vec!["mount", name];
        let t;
        if let Some(p) = target {
            t = p.display().to_string();
            args.push(&t);
        }
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        ContainerMount {
            helper: self,
            name: name.to_string(),
            target: PathBuf::from(out.trim()),
            done: false,
        }
    }

    /// What the store's directories hold, besides the lock: for checks that a refused
    /// import left nothing.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        for sub in ["tmp", "layers", "blobs/sha256", "images", "containers"] {
            let d = self.store.join(sub);
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    found.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(&self.store) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                let known = [
                    "lock",
                    "tmp",
                    "blobs",
                    "layers",
                    "images",
                    "containers",
                    "tags.json",
                ];
                if !known.contains(&n.as_str()) {
                    found.push(format!("stray {n}"));
                }
            }
        }
        for f in ["journal.json"] {
            if self.store.join(f).exists() {
                found.push(f.to_string());
            }
        }
        if let Ok(t) = std::fs::read_to_string(self.store.join("tags.json")) {
            if t.trim() != "{}" {
                found.push(format!("tags.json: {t}"));
            }
        }
        found
    }
}

/// A container mounted by the helper: unmounted (by the helper, else by force) when
/// dropped, even when the test fails.
pub struct ContainerMount<'a> {
    pub helper: &'a Helper,
    pub name: String,
    pub target: PathBuf,
    done: bool,
}

impl ContainerMount<'_> {
    /// Unmounts through the helper, which must succeed.
    pub fn umount(mut self) {
        self.done = true;
        self.helper.ok(&["umount", &self.name]);
        assert!(
            !is_mounted(&self.target),
            "{} still mounted",
            self.target.display()
        );
        assert!(daemons_for(&self.target).is_empty(), "daemon still running");
    }
}

impl Drop for ContainerMount<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = self.helper.run(&["umount", &self.name]);
        if is_mounted(&self.target) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.target)
                .status();
        }
        if is_mounted(&self.target) {
            let _ = Command::new("umount").arg("-l").arg(&self.target).status();
        }
        let target = self.target.clone();
        if !wait_until(Duration::from_secs(10), || daemons_for(&target).is_empty()) {
            for p in daemons_for(&target) {
                let _ = Command::new("kill").arg("-9").arg(p.to_string()).status();
            }
        }
    }
}

// ---- fuzzing: the stratafs tests' case counts ----

#[path = "../../../tests/common/fuzz.rs"]
mod fuzz;
#[allow(unused_imports)]
pub use fuzz::*;

// ---- trees: the stratafs tests' snapshot ----

#[path = "../../../tests/common/snap.rs"]
mod snap;
#[allow(unused_imports)]
pub use snap::*;

// ---- archives ----

pub fn sha256_hex(b: &[u8]) -> String {
    let d = Sha256::digest(b);
    d.iter().map(|x| format!("{x:02x}")).collect()
}

/// A layer tar under construction. Paths are written into the header bytes as given, so
/// tests can make the entries a hostile archive would hold.
pub struct LayerTar {
    b: tar::Builder<Vec<u8>>,
}

fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(1_700_000_000);
    h.set_size(0);
    h
}

fn set_raw(field: &mut [u8], value: &[u8]) {
    assert!(
        value.len() < field.len(),
        "name too long for a raw header: {value:?}"
    );
    field.fill(0);
    field[..value.len()].copy_from_slice(value);
}

impl Default for LayerTar {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerTar {
    pub fn new() -> LayerTar {
        LayerTar {
            b: tar::Builder::new(Vec::new()),
        }
    }

    /// Appends an entry with raw path (and link name) bytes.
    pub fn raw(
        &mut self,
        mut h: tar::Header,
        path: &str,
        link: Option<&str>,
        data: &[u8],
    ) -> &mut Self {
        set_raw(&mut h.as_old_mut().name, path.as_bytes());
        if let Some(l) = link {
            set_raw(&mut h.as_old_mut().linkname, l.as_bytes());
        }
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).expect("append");
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.raw(
            header(tar::EntryType::Directory, mode, 0, 0),
            path,
            None,
            b"",
        )
    }

    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.file_owned(path, data, 0o644, 0, 0)
    }

    pub fn file_owned(
        &mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> &mut Self {
        self.raw(
            header(tar::EntryType::Regular, mode, uid, gid),
            path,
            None,
            data,
        )
    }

    /// A file with PAX xattr records.
    pub fn file_xattr(&mut self, path: &str, data: &[u8], xattrs: &[(&str, &[u8])]) -> &mut Self {
        let recs: Vec<(String, Vec<u8>)> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.to_vec()))
            .collect();
        self.b
            .append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .expect("pax");
        self.file(path, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(
            header(tar::EntryType::Symlink, 0o777, 0, 0),
            path,
            Some(target),
            b"",
        )
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(
            header(tar::EntryType::Link, 0o644, 0, 0),
            path,
            Some(target),
            b"",
        )
    }

    pub fn chardev(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = header(tar::EntryType::Char, 0o666, 0, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.raw(h, path, None, b"")
    }

    pub fn fifo(&mut self, path: &str) -> &mut Self {
        self.raw(header(tar::EntryType::Fifo, 0o600, 0, 0), path, None, b"")
    }

    /// `.wh.NAME` next to `path`'s name.
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        self.file(&format!("{dir}.wh.{name}"), b"")
    }

    /// `DIR/.wh..wh..opq`.
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"")
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.into_inner().expect("finish tar")
    }
}

/// How a test layer's blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comp {
    Plain,
    Gzip,
    Zstd,
}

/// One layer blob of a test image.
#[derive(Debug, Clone)]
pub struct Blob {
    pub tar: Vec<u8>,
    pub blob: Vec<u8>,
    pub comp: Comp,
}

impl Blob {
    pub fn new(tar: Vec<u8>, comp: Comp) -> Blob {
        let blob = match comp {
            Comp::Plain => tar.clone(),
            Comp::Gzip => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(&tar).expect("gzip");
                e.finish().expect("gzip")
            }
            Comp::Zstd => zstd::encode_all(&tar[..], 3).expect("zstd"),
        };
        Blob { tar, blob, comp }
    }

    pub fn diff_id(&self) -> String {
        format!("sha256:{}", sha256_hex(&self.tar))
    }

    pub fn digest(&self) -> String {
        format!("sha256:{}", sha256_hex(&self.blob))
    }

    pub fn media_type(&self) -> &'static str {
        match self.comp {
            Comp::Plain => "application/vnd.oci.image.layer.v1.tar",
            Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// A test image: layers bottom first. `diff_ids` and `digests` may be overridden to lie.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub layers: Vec<Blob>,
    pub diff_ids: Vec<String>,
    /// The digest and size each manifest descriptor claims.
    pub claims: Vec<(String, u64)>,
}

impl TestImage {
    pub fn new(layers: Vec<Blob>) -> TestImage {
        let diff_ids = layers.iter().map(|l| l.diff_id()).collect();
        let claims = layers
            .iter()
            .map(|l| (l.digest(), l.blob.len() as u64))
            .collect();
        TestImage {
            layers,
            diff_ids,
            claims,
        }
    }

    pub fn config(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": self.diff_ids},
            "history": self.layers.iter().map(|_| serde_json::json!({"created_by": "test"})).collect::<Vec<_>>(),
        });
        serde_json::to_vec(&v).expect("config")
    }

    fn manifest(&self, config: &[u8]) -> Vec<u8> {
        let v = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{}", sha256_hex(config)),
                "size": config.len(),
            },
            "layers": self.layers.iter().zip(&self.claims).map(|(l, (d, s))| serde_json::json!({
                "mediaType": l.media_type(), "digest": d, "size": s,
            })).collect::<Vec<_>>(),
        });
        serde_json::to_vec(&v).expect("manifest")
    }

    /// The files of an OCI layout: (path, bytes).
    pub fn oci_files(&self, tag: &str) -> Vec<(String, Vec<u8>)> {
        let config = self.config();
        let manifest = self.manifest(&config);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{}", sha256_hex(&manifest)),
                "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }],
        });
        let mut files = vec![
            (
                "oci-layout".to_string(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            (
                "index.json".to_string(),
                serde_json::to_vec(&index).expect("index"),
            ),
            (
                format!("blobs/sha256/{}", sha256_hex(&config)),
                config.clone(),
            ),
            (format!("blobs/sha256/{}", sha256_hex(&manifest)), manifest),
        ];
        for (l, (d, _)) in self.layers.iter().zip(&self.claims) {
            // A blob is stored under the digest its descriptor claims.
            files.push((
                format!("blobs/sha256/{}", d.trim_start_matches("sha256:")),
                l.blob.clone(),
            ));
        }
        files
    }

    /// Writes an OCI image layout directory.
    pub fn write_oci_dir(&self, dir: &Path, tag: &str) {
        for (p, b) in self.oci_files(tag) {
            let path = dir.join(p);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, b).expect("write");
        }
    }

    /// Writes an OCI archive (the layout in a tar).
    pub fn write_oci_archive(&self, path: &Path, tag: &str) {
        write_tar(path, &self.oci_files(tag));
    }

    /// Writes a docker-archive as `docker save` does (one directory per layer).
    pub fn write_docker_archive(&self, path: &Path, tag: &str) {
        let config = self.config();
        let config_name = format!("{}.json", sha256_hex(&config));
        let mut files = vec![(config_name.clone(), config)];
        let mut layer_names = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let name = format!("{:064x}/layer.tar", i + 1);
            files.push((name.clone(), l.blob.clone()));
            layer_names.push(name);
        }
        let manifest = serde_json::json!([{
            "Config": config_name,
            "RepoTags": [tag],
            "Layers": layer_names,
        }]);
        files.push((
            "manifest.json".to_string(),
            serde_json::to_vec(&manifest).expect("manifest"),
        ));
        write_tar(path, &files);
    }
}

/// A tar of regular files.
pub fn write_tar(path: &Path, files: &[(String, Vec<u8>)]) {
    let f = std::fs::File::create(path).expect("create archive");
    let mut b = tar::Builder::new(f);
    for (p, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, p, &data[..]).expect("append");
    }
    b.into_inner().expect("finish").sync_all().expect("sync");
}

/// The first field of the helper's `imported ID ...` line.
pub fn imported_id(out: &str) -> String {
    out.split_whitespace().nth(1).expect("an id").to_string()
}

// ---- processes with a deadline, resources, mounts ----

/// Runs `cmd`, killing it if it has not finished after `limit`: `None` when it had to be
/// killed (a hang).
pub fn run_timeout(cmd: &mut Command, limit: Duration) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = std::time::Instant::now();
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => return Some(child.wait_with_output().expect("output")),
            None if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Runs `cmd` under `prlimit` (util-linux) with `limits` (`--as=BYTES`, `--nofile=N`).
pub fn run_prlimit(cmd: &Command, limits: &[&str]) -> Output {
    let mut limited = Command::new("prlimit");
    limited.args(limits);
    limited.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => limited.env(k, v),
            None => limited.env_remove(k),
        };
    }
    run(&mut limited)
}

/// Runs `cmd` with its address space limited to `bytes`: whatever it tries to hold beyond
/// that fails to allocate.
pub fn run_limited(cmd: &Command, bytes: u64) -> Output {
    run_prlimit(cmd, &[&format!("--as={bytes}")])
}

/// The options of the mount at `target` as /proc/self/mountinfo lists them (per-mount and
/// superblock options together).
pub fn mount_options(target: &Path) -> Vec<String> {
    let canon = std::fs::canonicalize(target).expect("canonicalize");
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let want = canon.to_string_lossy().into_owned();
    for l in info.lines().rev() {
        let f: Vec<&str> = l.split(' ').collect();
        if f.get(4) == Some(&want.as_str()) {
            let mut opts: Vec<String> = f[5].split(',').map(str::to_string).collect();
            if let Some(sep) = f.iter().position(|x| *x == "-") {
                if let Some(s) = f.get(sep + 3) {
                    opts.extend(s.split(',').map(str::to_string));
                }
            }
            return opts;
        }
    }
    panic!("{want} is not mounted")
}

/// A tmpfs of a given size (root only), unmounted when dropped: a store on it cannot fill
/// the machine's disk, whatever an import does.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn new(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("tmpfs mount point");
        let o = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0755"))
            .arg("tmpfs")
            .arg(path));
        assert!(
            o.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        if is_mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// A command run as the unprivileged user 65534 (setpriv).
pub fn as_nobody(program: &Path, args: &[&str]) -> Output {
    run(Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        // Through a shell: setpriv looks the program up before it gives up root.
        .args(["sh", "-c", "exec \"$0\" \"$@\""])
        .arg(program)
        .args(args))
}
