//! Checks a [`MountConfig`]'s directories against the filesystem before anything is mounted.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{os_error_text, ConfigError, MountConfig};

/// Checks that the layer directories and the mount point can make a working union.
///
/// In order: at least one lowerdir; upperdir and workdir given together; every layer and the
/// mount point exists and is a directory (symlinks followed); upperdir and workdir on one
/// mount of one filesystem, distinct, and neither inside the other; the mount point neither
/// equal to, inside, nor containing a layer; no directory used twice among the layers
/// (compared by device and inode, so two spellings of one directory are caught); no lowerdir
/// inside another layer (the kernel's `ELOOP`). Nesting is judged on canonical paths,
/// component by component.
///
/// # Errors
/// [`ConfigError::Layout`] with one line naming the first problem found and its path(s).
pub fn validate(cfg: &MountConfig) -> Result<(), ConfigError> {
    if cfg.lowerdirs.is_empty() {
        return Err(layout(if cfg.datadirs.is_empty() {
            "no lowerdir specified".to_string()
        } else {
            "at least one non-data lowerdir is required".to_string()
        }));
    }
    match (&cfg.upperdir, &cfg.workdir) {
        (Some(_), None) => return Err(layout("upperdir given without workdir".to_string())),
        (None, Some(_)) => return Err(layout("workdir given without upperdir".to_string())),
        _ => {}
    }

    // The kernel's overlayfs falls back to index=off in a user namespace (it cannot
    // decode file handles there), so an index written unprivileged would not be one it
    // reads: refused rather than written for nobody.
    if cfg.index_on() && !crate::sys::admin_in_initial_userns() {
        return Err(layout(
            "index=on needs a daemon running as root (the kernel's overlayfs uses no index in a user namespace)"
                .to_string(),
        ));
    }
    let mut layers = Vec::with_capacity(cfg.lowerdirs.len() + cfg.datadirs.len() + 2);
    for dir in &cfg.lowerdirs {
        layers.push(Dir::inspect("lowerdir", dir)?);
    }
    for dir in &cfg.datadirs {
        layers.push(Dir::inspect("datadir", dir)?);
    }
    let upper = match &cfg.upperdir {
        Some(p) => Some(Dir::inspect("upperdir", p)?),
        None => None,
    };
    let work = match &cfg.workdir {
        Some(p) => Some(Dir::inspect("workdir", p)?),
        None => None,
    };
    let mount = Dir::inspect("mount point", &cfg.mountpoint)?;

    if let (Some(upper), Some(work)) = (&upper, &work) {
        check_upper_work(upper, work)?;
    }
    layers.extend(upper);
    layers.extend(work);

    for layer in &layers {
        check_mount_point(&mount, layer)?;
    }
    check_duplicates(&layers)?;
    check_overlaps(&layers)
}

fn layout(msg: String) -> ConfigError {
    ConfigError::Layout(msg)
}

/// A directory that exists, with what the checks need to know about it.
struct Dir<'a> {
    /// `lowerdir`, `upperdir`, `workdir` or `mount point`.
    role: &'static str,
    /// As given in the configuration.
    given: &'a Path,
    /// Symlinks and `..` resolved.
    canon: PathBuf,
    dev: u64,
    ino: u64,
    /// The mount it is reached through (`STATX_MNT_ID`), where the kernel tells it.
    mnt_id: Option<u64>,
}

impl<'a> Dir<'a> {
    /// Stats `path` (following symlinks) and resolves it; fails unless it is a directory.
    fn inspect(role: &'static str, path: &'a Path) -> Result<Self, ConfigError> {
        let shown = path.display();
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A dangling symlink (podman's `l/ABC -> ../ID/diff` after a layer was removed)
                // deserves its target in the message.
                let msg = match std::fs::read_link(path) {
                    Ok(target) => format!(
                        "{role} '{shown}' does not exist (dangling symlink to '{}')",
                        target.display()
                    ),
                    Err(_) => format!("{role} '{shown}' does not exist"),
                };
                return Err(layout(msg));
            }
            Err(e) => return Err(os_failure(role, path, &e)),
        };
        if !meta.is_dir() {
            return Err(layout(format!("{role} '{shown}' is not a directory")));
        }
        let canon = std::fs::canonicalize(path).map_err(|e| os_failure(role, path, &e))?;
        Ok(Dir {
            role,
            given: path,
            mnt_id: mount_id(&canon),
            canon,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    fn same_dir(&self, other: &Dir<'_>) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }

    /// Strictly below `other`, judged on canonical paths component by component.
    fn inside(&self, other: &Dir<'_>) -> bool {
        self.canon != other.canon && self.canon.starts_with(&other.canon)
    }

    /// `role 'given'`, plus the resolved path when it differs from the spelling given.
    fn describe(&self) -> String {
        if self.given == self.canon {
            format!("{} '{}'", self.role, self.given.display())
        } else {
            format!(
                "{} '{}' (resolves to '{}')",
                self.role,
                self.given.display(),
                self.canon.display()
            )
        }
    }

    /// `role 'given'` alone.
    fn name(&self) -> String {
        format!("{} '{}'", self.role, self.given.display())
    }
}

/// The id of the mount `path` (canonical) is reached through; `None` before Linux 5.8.
fn mount_id(path: &Path) -> Option<u64> {
    let st = rustix::fs::statx(
        rustix::fs::CWD,
        path,
        rustix::fs::AtFlags::empty(),
        rustix::fs::StatxFlags::MNT_ID,
    )
    .ok()?;
    (st.stx_mask & rustix::fs::StatxFlags::MNT_ID.bits() != 0).then_some(st.stx_mnt_id)
}

/// `role 'path': <OS error text>`, with a hint for a stale FUSE mount.
fn os_failure(role: &str, path: &Path, err: &io::Error) -> ConfigError {
    let mut msg = format!("{role} '{}': {}", path.display(), os_error_text(err));
    if err.raw_os_error() == Some(libc::ENOTCONN) {
        msg.push_str(&format!(
            " (a stale FUSE mount? unmount it with 'fusermount3 -u {}')",
            path.display()
        ));
    }
    layout(msg)
}

fn check_upper_work(upper: &Dir<'_>, work: &Dir<'_>) -> Result<(), ConfigError> {
    if upper.same_dir(work) {
        return Err(layout(format!(
            "{} and {} are the same directory",
            upper.name(),
            work.name()
        )));
    }
    if upper.dev != work.dev {
        return Err(layout(format!(
            "{} and {} are on different filesystems",
            upper.name(),
            work.name()
        )));
    }
    // One filesystem is not enough: a rename between two mounts of it fails with EXDEV,
    // so every copy-up would (the kernel's "workdir and upperdir must reside under the same
    // mount").
    if let (Some(u), Some(w)) = (upper.mnt_id, work.mnt_id) {
        if u != w {
            return Err(layout(format!(
                "{} and {} are on different mounts of one filesystem \
                 (workdir and upperdir must reside under the same mount)",
                upper.name(),
                work.name()
            )));
        }
    }
    if work.inside(upper) {
        return Err(layout(format!(
            "{} is inside {}",
            work.describe(),
            upper.describe()
        )));
    }
    if upper.inside(work) {
        return Err(layout(format!(
            "{} is inside {}",
            upper.describe(),
            work.describe()
        )));
    }
    Ok(())
}

fn check_mount_point(mount: &Dir<'_>, layer: &Dir<'_>) -> Result<(), ConfigError> {
    let relation = if mount.same_dir(layer) || mount.canon == layer.canon {
        "is the same directory as"
    } else if mount.inside(layer) {
        "is inside"
    } else if layer.inside(mount) {
        "contains"
    } else {
        return Ok(());
    };
    Err(layout(format!(
        "{} {relation} {}",
        mount.describe(),
        layer.describe()
    )))
}

/// No lower layer inside another layer, as the kernel's overlayfs refuses them (`ELOOP`,
/// "overlapping lowerdir path"): a lower inside the upper or work directory would show the
/// mount's own changes half-made, and nested lowers show one tree twice. The kernel allows
/// the upper and work directories inside a lower layer, and so does this.
fn check_overlaps(layers: &[Dir<'_>]) -> Result<(), ConfigError> {
    for lower in layers.iter().filter(|l| l.role == "lowerdir") {
        if let Some(outer) = layers.iter().find(|o| lower.inside(o)) {
            return Err(layout(format!(
                "{} is inside {} (overlapping lowerdir path)",
                lower.describe(),
                outer.describe()
            )));
        }
    }
    Ok(())
}

fn check_duplicates(layers: &[Dir<'_>]) -> Result<(), ConfigError> {
    let mut seen: HashMap<(u64, u64), &Dir<'_>> = HashMap::with_capacity(layers.len());
    for layer in layers {
        if let Some(first) = seen.insert((layer.dev, layer.ino), layer) {
            let msg = if first.role == layer.role && first.given == layer.given {
                format!("{} is given twice", layer.name())
            } else {
                format!(
                    "{} and {} are the same directory",
                    first.name(),
                    layer.name()
                )
            };
            return Err(layout(msg));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use tempfile::TempDir;

    /// A scratch tree: `<tmp>/{l1,l2,u,w,m}` as directories.
    struct Tree {
        tmp: TempDir,
    }

    impl Tree {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            for d in ["l1", "l2", "u", "w", "m"] {
                fs::create_dir(tmp.path().join(d)).unwrap();
            }
            Tree { tmp }
        }

        fn p(&self, rel: &str) -> PathBuf {
            self.tmp.path().join(rel)
        }

        /// lowerdir=l1:l2, upperdir=u, workdir=w, mount point m.
        fn cfg(&self) -> MountConfig {
            let mut cfg = MountConfig::new(self.p("m"), vec![self.p("l1"), self.p("l2")]);
            cfg.upperdir = Some(self.p("u"));
            cfg.workdir = Some(self.p("w"));
            cfg
        }
    }

    fn layout_err(cfg: &MountConfig) -> String {
        match validate(cfg) {
            Err(ConfigError::Layout(msg)) => {
                assert!(!msg.contains('\n'), "multi-line message: {msg}");
                msg
            }
            other => panic!("expected a layout error, got {other:?}"),
        }
    }

    #[test]
    fn good_configs_pass() {
        let t = Tree::new();
        validate(&t.cfg()).unwrap();
        // Read-only: lowers only.
        let cfg = MountConfig::new(t.p("m"), vec![t.p("l1")]);
        validate(&cfg).unwrap();
        // Siblings with a shared prefix are not nested: `/x/u` vs `/x/uu`.
        fs::create_dir(t.p("uu")).unwrap();
        let mut cfg = t.cfg();
        cfg.workdir = Some(t.p("uu"));
        validate(&cfg).unwrap();
        // Podman's layout: symlinked lowers, work next to diff, merged a sibling.
        fs::create_dir_all(t.p("ID/diff")).unwrap();
        fs::create_dir_all(t.p("ID/work")).unwrap();
        fs::create_dir_all(t.p("ID/merged")).unwrap();
        fs::create_dir_all(t.p("L")).unwrap();
        symlink("../l1", t.p("L/ABC")).unwrap();
        symlink("../l2", t.p("L/DEF")).unwrap();
        let mut cfg = MountConfig::new(t.p("ID/merged"), vec![t.p("L/ABC"), t.p("L/DEF")]);
        cfg.upperdir = Some(t.p("ID/diff"));
        cfg.workdir = Some(t.p("ID/work"));
        validate(&cfg).unwrap();
    }

    #[test]
    fn no_lowerdir() {
        let t = Tree::new();
        let cfg = MountConfig::new(t.p("m"), Vec::new());
        assert!(layout_err(&cfg).contains("lowerdir"));
    }

    #[test]
    fn upper_and_work_come_together() {
        let t = Tree::new();
        let mut cfg = t.cfg();
        cfg.workdir = None;
        assert_eq!(layout_err(&cfg), "upperdir given without workdir");
        let mut cfg = t.cfg();
        cfg.upperdir = None;
        assert_eq!(layout_err(&cfg), "workdir given without upperdir");
    }

    #[test]
    fn missing_directories() {
        let t = Tree::new();
        for (role, edit) in [
            ("lowerdir", 0),
            ("upperdir", 1),
            ("workdir", 2),
            ("mount point", 3),
        ] {
            let mut cfg = t.cfg();
            let missing = t.p("nope/deeper");
            match edit {
                0 => cfg.lowerdirs[1] = missing.clone(),
                1 => cfg.upperdir = Some(missing.clone()),
                2 => cfg.workdir = Some(missing.clone()),
                _ => cfg.mountpoint = missing.clone(),
            }
            assert_eq!(
                layout_err(&cfg),
                format!("{role} '{}' does not exist", missing.display())
            );
        }
    }

    #[test]
    fn not_directories() {
        let t = Tree::new();
        fs::write(t.p("f"), b"x").unwrap();
        for (role, edit) in [
            ("lowerdir", 0),
            ("upperdir", 1),
            ("workdir", 2),
            ("mount point", 3),
        ] {
            let mut cfg = t.cfg();
            let file = t.p("f");
            match edit {
                0 => cfg.lowerdirs[0] = file.clone(),
                1 => cfg.upperdir = Some(file.clone()),
                2 => cfg.workdir = Some(file.clone()),
                _ => cfg.mountpoint = file.clone(),
            }
            assert_eq!(
                layout_err(&cfg),
                format!("{role} '{}' is not a directory", file.display())
            );
        }
        // A symlink to a file is not a directory either.
        symlink(t.p("f"), t.p("flink")).unwrap();
        let mut cfg = t.cfg();
        cfg.lowerdirs = vec![t.p("flink")];
        assert!(layout_err(&cfg).ends_with("is not a directory"));
        // A path through a file: the OS error text, without std's "(os error N)".
        let mut cfg = t.cfg();
        cfg.lowerdirs = vec![t.p("f/sub")];
        let msg = layout_err(&cfg);
        assert!(msg.starts_with("lowerdir '"), "{msg}");
        assert!(msg.contains("Not a directory"), "{msg}");
        assert!(!msg.contains("os error"), "{msg}");
    }

    #[test]
    fn dangling_symlink_names_its_target() {
        let t = Tree::new();
        symlink("../gone/diff", t.p("dangling")).unwrap();
        let mut cfg = t.cfg();
        cfg.lowerdirs = vec![t.p("dangling")];
        assert_eq!(
            layout_err(&cfg),
            format!(
                "lowerdir '{}' does not exist (dangling symlink to '../gone/diff')",
                t.p("dangling").display()
            )
        );
    }

    #[test]
    fn symlinked_layers_are_followed() {
        let t = Tree::new();
        symlink(t.p("l1"), t.p("l1link")).unwrap();
        let mut cfg = t.cfg();
        cfg.lowerdirs = vec![t.p("l1link")];
        validate(&cfg).unwrap();
    }

    #[test]
    fn same_directory_twice() {
        let t = Tree::new();
        // Same spelling.
        let mut cfg = t.cfg();
        cfg.lowerdirs = vec![t.p("l1"), t.p("l1")];
        assert_eq!(
            layout_err(&cfg),
            format!("lowerdir '{}' is given twice", t.p("l1").display())
        );
        // Two spellings: a symlink alias.
        symlink(t.p("l1"), t.p("alias")).unwrap();
        let mut cfg = t.cfg();
        cfg.lowerdirs = vec![t.p("l1"), t.p("l2"), t.p("alias")];
        assert_eq!(
            layout_err(&cfg),
            format!(
                "lowerdir '{}' and lowerdir '{}' are the same directory",
                t.p("l1").display(),
                t.p("alias").display()
            )
        );
        // Two spellings: a `..` detour.
        let mut cfg = t.cfg();
        cfg.lowerdirs = vec![t.p("l2"), t.p("l1/../l2")];
        assert!(layout_err(&cfg).ends_with("are the same directory"));
        // A lower that is also the upper.
        let mut cfg = t.cfg();
        cfg.lowerdirs = vec![t.p("l1"), t.p("u")];
        assert_eq!(
            layout_err(&cfg),
            format!(
                "lowerdir '{}' and upperdir '{}' are the same directory",
                t.p("u").display(),
                t.p("u").display()
            )
        );
        // A lower that is also the work dir.
        let mut cfg = t.cfg();
        cfg.lowerdirs = vec![t.p("w")];
        assert!(layout_err(&cfg).contains("workdir"));
    }

    #[test]
    fn upper_equals_work() {
        let t = Tree::new();
        symlink(t.p("u"), t.p("ualias")).unwrap();
        let mut cfg = t.cfg();
        cfg.workdir = Some(t.p("ualias"));
        assert_eq!(
            layout_err(&cfg),
            format!(
                "upperdir '{}' and workdir '{}' are the same directory",
                t.p("u").display(),
                t.p("ualias").display()
            )
        );
    }

    #[test]
    fn work_inside_upper_and_upper_inside_work() {
        let t = Tree::new();
        fs::create_dir(t.p("u/w")).unwrap();
        let mut cfg = t.cfg();
        cfg.workdir = Some(t.p("u/w"));
        assert_eq!(
            layout_err(&cfg),
            format!(
                "workdir '{}' is inside upperdir '{}'",
                t.p("u/w").display(),
                t.p("u").display()
            )
        );

        fs::create_dir(t.p("w/u")).unwrap();
        let mut cfg = t.cfg();
        cfg.upperdir = Some(t.p("w/u"));
        assert_eq!(
            layout_err(&cfg),
            format!(
                "upperdir '{}' is inside workdir '{}'",
                t.p("w/u").display(),
                t.p("w").display()
            )
        );

        // Nesting hidden behind a symlink is caught, and the message shows the resolution.
        symlink(t.p("u/w"), t.p("sneaky")).unwrap();
        let mut cfg = t.cfg();
        cfg.workdir = Some(t.p("sneaky"));
        let msg = layout_err(&cfg);
        assert!(msg.contains("is inside upperdir"), "{msg}");
        assert!(msg.contains("resolves to"), "{msg}");
    }

    #[test]
    fn upper_and_work_on_different_filesystems() {
        let t = Tree::new();
        let shm = Path::new("/dev/shm");
        let Ok(shm_meta) = fs::metadata(shm) else {
            eprintln!("skipped: no /dev/shm");
            return;
        };
        // /dev/shm is a tmpfs; the default temp dir is usually on the root filesystem. If both
        // are one filesystem on this machine the case cannot be built: skip just this test.
        if shm_meta.dev() == fs::metadata(t.tmp.path()).unwrap().dev() {
            eprintln!("skipped: /dev/shm and the temp dir are on the same filesystem");
            return;
        }
        let Ok(other) = tempfile::tempdir_in(shm) else {
            eprintln!("skipped: /dev/shm is not writable");
            return;
        };
        let mut cfg = t.cfg();
        cfg.workdir = Some(other.path().to_path_buf());
        assert_eq!(
            layout_err(&cfg),
            format!(
                "upperdir '{}' and workdir '{}' are on different filesystems",
                t.p("u").display(),
                other.path().display()
            )
        );
    }

    #[test]
    fn overlapping_layers() {
        let t = Tree::new();
        for d in ["u/x", "l1/sub", "w/x"] {
            fs::create_dir(t.p(d)).unwrap();
        }
        // Refused as the kernel refuses them: a lower inside any other layer.
        for (lowers, inner, outer) in [
            (vec!["u/x"], "u/x", "upperdir 'U'"),
            (vec!["l1", "l1/sub"], "l1/sub", "lowerdir 'U'"),
            (vec!["l1/sub", "l1"], "l1/sub", "lowerdir 'U'"),
            (vec!["w/x"], "w/x", "workdir 'U'"),
        ] {
            let mut cfg = t.cfg();
            cfg.lowerdirs = lowers.iter().map(|l| t.p(l)).collect();
            let outer_dir = &inner[..inner.find('/').unwrap()];
            assert_eq!(
                layout_err(&cfg),
                format!(
                    "lowerdir '{}' is inside {} (overlapping lowerdir path)",
                    t.p(inner).display(),
                    outer.replace('U', &t.p(outer_dir).display().to_string())
                )
            );
        }
        // Hidden behind a symlink: the message shows the resolution.
        symlink(t.p("l1/sub"), t.p("sublink")).unwrap();
        let mut cfg = t.cfg();
        cfg.lowerdirs = vec![t.p("l1"), t.p("sublink")];
        let msg = layout_err(&cfg);
        assert!(msg.contains("resolves to"), "{msg}");
        // Allowed as the kernel allows them: the upper or work directory inside a lower.
        fs::create_dir_all(t.p("l2/up")).unwrap();
        fs::create_dir_all(t.p("l2/wk")).unwrap();
        let mut cfg = t.cfg();
        cfg.upperdir = Some(t.p("l2/up"));
        validate(&cfg).unwrap();
        let mut cfg = t.cfg();
        cfg.workdir = Some(t.p("l2/wk"));
        validate(&cfg).unwrap();
    }

    #[test]
    fn mount_ids_are_known() {
        // Linux 5.8+ tells the mount of a path; the upper/work check relies on it.
        let t = Tree::new();
        let u = mount_id(&t.p("u"));
        assert!(u.is_some());
        assert_eq!(u, mount_id(&t.p("w")));
    }

    #[test]
    fn mount_point_is_a_layer() {
        let t = Tree::new();
        for (which, path) in [("lowerdir", "l2"), ("upperdir", "u"), ("workdir", "w")] {
            let mut cfg = t.cfg();
            cfg.mountpoint = t.p(path);
            assert_eq!(
                layout_err(&cfg),
                format!(
                    "mount point '{}' is the same directory as {which} '{}'",
                    t.p(path).display(),
                    t.p(path).display()
                )
            );
        }
    }

    #[test]
    fn mount_point_inside_a_layer() {
        let t = Tree::new();
        for (which, path) in [("lowerdir", "l1"), ("upperdir", "u"), ("workdir", "w")] {
            let inner = format!("{path}/mnt");
            fs::create_dir(t.p(&inner)).unwrap();
            let mut cfg = t.cfg();
            cfg.mountpoint = t.p(&inner);
            assert_eq!(
                layout_err(&cfg),
                format!(
                    "mount point '{}' is inside {which} '{}'",
                    t.p(&inner).display(),
                    t.p(path).display()
                )
            );
        }
        // The `/m/..` spelling: the mount point resolves to a directory containing the layers.
        let mut cfg = t.cfg();
        cfg.mountpoint = t.p("m/..");
        let msg = layout_err(&cfg);
        assert!(msg.contains("contains lowerdir"), "{msg}");
        assert!(msg.contains("resolves to"), "{msg}");
    }

    #[test]
    fn mount_point_contains_a_layer() {
        let t = Tree::new();
        fs::create_dir(t.p("m/lower")).unwrap();
        let mut cfg = t.cfg();
        cfg.lowerdirs.push(t.p("m/lower"));
        assert_eq!(
            layout_err(&cfg),
            format!(
                "mount point '{}' contains lowerdir '{}'",
                t.p("m").display(),
                t.p("m/lower").display()
            )
        );
        fs::create_dir_all(t.p("m/a/b/up")).unwrap();
        let mut cfg = t.cfg();
        cfg.upperdir = Some(t.p("m/a/b/up"));
        assert!(layout_err(&cfg).contains("contains upperdir"));
    }

    #[test]
    fn mount_point_prefix_is_component_wise() {
        let t = Tree::new();
        // `<tmp>/l1x` shares a string prefix with `<tmp>/l1` but is not inside it.
        fs::create_dir(t.p("l1x")).unwrap();
        let mut cfg = t.cfg();
        cfg.mountpoint = t.p("l1x");
        validate(&cfg).unwrap();
    }

    #[test]
    fn os_error_text_strips_the_code() {
        let err = io::Error::from_raw_os_error(libc::ENOTCONN);
        assert_eq!(os_error_text(&err), "Transport endpoint is not connected");
        let custom = io::Error::other("plain");
        assert_eq!(os_error_text(&custom), "plain");
        let ConfigError::Layout(msg) = os_failure("mount point", Path::new("/m"), &err) else {
            panic!("expected a layout error");
        };
        assert!(
            msg.starts_with("mount point '/m': Transport endpoint is not connected"),
            "{msg}"
        );
        assert!(msg.contains("fusermount3 -u /m"), "{msg}");
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn first_problem_wins_in_order() {
        let t = Tree::new();
        // Missing lowerdir reported before a missing mount point.
        let mut cfg = t.cfg();
        cfg.lowerdirs = vec![t.p("gone")];
        cfg.mountpoint = t.p("also-gone");
        assert!(layout_err(&cfg).starts_with("lowerdir"));
    }
}
