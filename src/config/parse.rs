//! The command line: argv into an [`Invocation`].
//!
//! Two stages. The argv scan sorts arguments into flags, `-o` option groups and positionals
//! (errors are held back so that `--help`, `--version` and `--demo` win over any of them). The
//! option stage splits each `-o` group into `key[=value]` elements and applies them to a
//! [`MountConfig`] in order, so a later `lowerdir=` replaces an earlier one, as with libfuse.
//!
//! Escapes and quoting inside an `-o` group:
//! - `"..."` protects commas; the quotes themselves are dropped (`context="a,b:c"`).
//! - `\,` is a literal comma in any value.
//! - In path values (`lowerdir=`, `upperdir=`, `workdir=`) `\:` is a literal colon and `\\` a
//!   literal backslash; `lowerdir=` is split on the remaining colons.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    ConfigError, IdMapping, Invocation, KernelFlag, Markers, MountConfig, Passthrough, RedirectDir,
    Udba, Uring, Verity, Xino,
};

/// Parses the command line (without argv\[0\]) into what it asks for.
///
/// Grammar: `[SOURCE] MOUNTPOINT [-o OPTS]... [-f] [-d] [-h|--help] [-V|--version] [--demo]`,
/// options and positionals in any order, `--` ending the options. `--debug` is accepted as a
/// synonym of `-d`, as fuse-overlayfs does.
///
/// Paths are made absolute against the current directory but not resolved: [`super::validate()`]
/// checks them. A missing `lowerdir=` is not an error here; `validate` reports it.
///
/// # Errors
/// [`ConfigError::Usage`] for a malformed command line (unknown flag, no mount point, too many
/// positionals, `-o` without its argument); [`ConfigError::BadValue`] for an option whose value
/// does not parse.
pub fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<Invocation, ConfigError> {
    let scan = scan_argv(args);
    if let Some(inv) = scan.early {
        return Ok(inv);
    }
    if let Some(err) = scan.error {
        return Err(err);
    }
    let mut positionals = scan.positionals;
    let mountpoint_arg = match positionals.len() {
        0 => return Err(ConfigError::Usage("missing mount point".to_string())),
        1 | 2 => positionals.pop().unwrap_or_default(),
        n => {
            return Err(ConfigError::Usage(format!(
                "too many arguments ({n} positionals; expected [SOURCE] MOUNTPOINT)"
            )))
        }
    };
    let source = positionals.pop().map(|s| s.to_string_lossy().into_owned());
    if mountpoint_arg.is_empty() {
        return Err(ConfigError::Usage("empty mount point".to_string()));
    }

    let mut cwd = CwdCache::default();
    let mountpoint = cwd.absolute(Path::new(&mountpoint_arg))?;
    let mut cfg = MountConfig::new(mountpoint, Vec::new());
    cfg.source = source;
    cfg.foreground = scan.foreground;
    cfg.debug = scan.debug;
    if cfg.debug {
        cfg.foreground = true;
    }

    let mut state = OptionState::default();
    for group in &scan.option_groups {
        for elem in split_option_group(group.as_bytes())? {
            apply_option(&mut cfg, &elem, &mut cwd, &mut state)?;
        }
    }
    if cfg.source.is_none() {
        cfg.source = state.fsname;
    }
    // As in fuse-overlayfs, `volatile` wins over any `fsync=` whatever their order.
    if cfg.volatile {
        cfg.fsync = false;
    }
    // metacopy needs redirect_dir=on: the kernel refuses any other mode given with it (with
    // no upper layer, `follow`, and `off` which follows, are as good as `on`).
    if cfg.metacopy_on() {
        let mode = cfg.redirect_mode();
        let read_only_follow =
            cfg.upperdir.is_none() && matches!(mode, RedirectDir::Follow | RedirectDir::Off);
        if mode != RedirectDir::On && !read_only_follow {
            return Err(ConfigError::Usage(format!(
                "conflicting options: metacopy=on,redirect_dir={}",
                mode.kernel_name()
            )));
        }
    }
    // The kernel refuses redirects with `userxattr` (their security rests on trusted.
    // xattrs), in its own words.
    if cfg.userxattr && cfg.redirect_dir.is_some_and(|m| m != RedirectDir::NoFollow) {
        return Err(ConfigError::Usage(format!(
            "conflicting options: userxattr,redirect_dir={}",
            cfg.redirect_mode().kernel_name()
        )));
    }
    if cfg.userxattr && cfg.metacopy_on() {
        return Err(ConfigError::Usage(
            "conflicting options: userxattr,metacopy=on".to_string(),
        ));
    }
    Ok(Invocation::Mount(Box::new(cfg)))
}

/// What the argv scan found.
#[derive(Default)]
struct Scan {
    /// The first of `-h`/`--help`, `-V`/`--version`, `--demo`.
    early: Option<Invocation>,
    /// The first command-line error, reported only if there is no `early`.
    error: Option<ConfigError>,
    positionals: Vec<OsString>,
    option_groups: Vec<OsString>,
    foreground: bool,
    debug: bool,
}

fn scan_argv<I: IntoIterator<Item = OsString>>(args: I) -> Scan {
    let mut scan = Scan::default();
    let mut iter = args.into_iter();
    let mut only_positionals = false;
    while let Some(arg) = iter.next() {
        let bytes = arg.as_bytes();
        if only_positionals || bytes.len() < 2 || bytes[0] != b'-' {
            // `-` alone is a positional too, by convention.
            scan.positionals.push(arg);
            continue;
        }
        match bytes {
            b"--" => only_positionals = true,
            b"-o" => match iter.next() {
                Some(group) => scan.option_groups.push(group),
                None => set_error(
                    &mut scan,
                    ConfigError::Usage("option '-o' requires an argument".to_string()),
                ),
            },
            b"-f" => scan.foreground = true,
            b"-d" | b"--debug" => scan.debug = true,
            b"-h" | b"--help" => set_early(&mut scan, Invocation::Help),
            b"-V" | b"--version" => set_early(&mut scan, Invocation::Version),
            b"--demo" => set_early(&mut scan, Invocation::Demo),
            _ if bytes.starts_with(b"-o") => scan
                .option_groups
                .push(OsStr::from_bytes(&bytes[2..]).to_os_string()),
            _ => set_error(
                &mut scan,
                ConfigError::Usage(format!("unknown flag '{}'", arg.to_string_lossy())),
            ),
        }
    }
    scan
}

fn set_early(scan: &mut Scan, inv: Invocation) {
    if scan.early.is_none() {
        scan.early = Some(inv);
    }
}

fn set_error(scan: &mut Scan, err: ConfigError) {
    if scan.error.is_none() {
        scan.error = Some(err);
    }
}

/// Splits one `-o` group on unquoted, unescaped commas. Double quotes are removed, `\,` becomes
/// `,`; every other backslash pair is kept whole (for the path unescaping later) so that `\\,`
/// is an escaped backslash followed by a separator. Empty elements are dropped.
fn split_option_group(group: &[u8]) -> Result<Vec<Vec<u8>>, ConfigError> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut quoted = false;
    let mut i = 0;
    while i < group.len() {
        let c = group[i];
        match c {
            b'\\' if i + 1 < group.len() => {
                let next = group[i + 1];
                if next != b',' {
                    cur.push(c);
                }
                cur.push(next);
                i += 2;
                continue;
            }
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
        i += 1;
    }
    if quoted {
        let key = cur.split(|&b| b == b'=').next().unwrap_or_default();
        return Err(ConfigError::BadValue {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: "unterminated double quote".to_string(),
        });
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// Every `-o` key that means something to stratafs (one arm of `apply_option` each). This list
/// decides what is accepted: `apply_option` treats a key in none of [`OPTION_KEYS`],
/// [`KERNEL_FLAG_KEYS`], [`IGNORED_KEYS`] (or `x-*`) as unknown, whatever its arms say. The man
/// page documents exactly these keys (xtask's tests check it), so a new option is added here,
/// in `apply_option`, and in `xtask/src/daemon_cli.rs`.
pub const OPTION_KEYS: &[&str] = &[
    "lowerdir",
    "lowerdir+",
    "datadir+",
    "upperdir",
    "workdir",
    "uidmapping",
    "gidmapping",
    "squash_to_root",
    "squash_to_uid",
    "squash_to_gid",
    "static_nlink",
    "noacl",
    "ino32_t",
    "volatile",
    "debug",
    "log",
    "allow_other",
    "allow_root",
    "default_permissions",
    "xino",
    "fsync",
    "threaded",
    "writeback",
    "fast_ino",
    "passthrough",
    "io_uring",
    "markers",
    "noxattrs",
    "timeout",
    "node_limit",
    "udba",
    "udba_watches",
    "xattr_permissions",
    "plugins",
    "redirect_dir",
    "metacopy",
    "index",
    "verity",
    "userxattr",
    "context",
    "fsname",
];

/// The mount flags `kernel_flag` knows.
pub const KERNEL_FLAG_KEYS: &[&str] = &[
    "ro", "rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "dirsync",
    "sync", "async",
];

/// Whether `apply_option` acts on `key` (or ignores it silently) rather than warn about it.
fn is_accepted_key(key: &str) -> bool {
    key.starts_with("x-")
        || OPTION_KEYS.contains(&key)
        || KERNEL_FLAG_KEYS.contains(&key)
        || IGNORED_KEYS.contains(&key)
}

/// Options that mount(8), mount.fuse3 or libfuse pass along and that mean nothing here. They are
/// accepted with or without a value, silently.
pub const IGNORED_KEYS: &[&str] = &[
    "subtype",
    "nonempty",
    "auto_unmount",
    "defaults",
    "_netdev",
    "nofail",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "noauto",
    "auto",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "diratime",
    "nodiratime",
    "comment",
    "silent",
    "loud",
];

fn kernel_flag(key: &str) -> Option<KernelFlag> {
    Some(match key {
        "ro" => KernelFlag::ReadOnly,
        "rw" => KernelFlag::ReadWrite,
        "dev" => KernelFlag::Dev,
        "nodev" => KernelFlag::NoDev,
        "suid" => KernelFlag::Suid,
        "nosuid" => KernelFlag::NoSuid,
        "exec" => KernelFlag::Exec,
        "noexec" => KernelFlag::NoExec,
        "atime" => KernelFlag::Atime,
        "noatime" => KernelFlag::NoAtime,
        "dirsync" => KernelFlag::DirSync,
        "sync" => KernelFlag::Sync,
        "async" => KernelFlag::Async,
        _ => return None,
    })
}

/// What the option stage remembers between elements.
#[derive(Default)]
struct OptionState {
    /// `fsname=`, the source unless a SOURCE positional was given.
    fsname: Option<String>,
    /// A `lowerdir=` list was given (and not replaced since): the kernel then refuses
    /// `lowerdir+=` and `datadir+=`.
    lowerdir_list: bool,
}

/// Applies one `key[=value]` element to `cfg`.
fn apply_option(
    cfg: &mut MountConfig,
    elem: &[u8],
    cwd: &mut CwdCache,
    state: &mut OptionState,
) -> Result<(), ConfigError> {
    let (key_bytes, value) = match elem.iter().position(|&b| b == b'=') {
        Some(eq) => (&elem[..eq], Some(&elem[eq + 1..])),
        None => (elem, None),
    };
    let Ok(key) = std::str::from_utf8(key_bytes) else {
        cfg.unknown.push(String::from_utf8_lossy(elem).into_owned());
        return Ok(());
    };
    if !is_accepted_key(key) {
        cfg.unknown.push(String::from_utf8_lossy(elem).into_owned());
        return Ok(());
    }

    // Keys that take no value.
    let flag = |cfg: &mut MountConfig, set: fn(&mut MountConfig)| match value {
        None => {
            set(cfg);
            Ok(())
        }
        Some(_) => Err(bad(key, "this option takes no value")),
    };

    match key {
        "lowerdir" => {
            let (lowers, datas) = parse_lowerdir_list(require(key, value)?, cwd)?;
            cfg.lowerdirs = lowers;
            cfg.datadirs = datas;
            state.lowerdir_list = true;
        }
        "lowerdir+" | "datadir+" => {
            // The new mount API's forms, with the kernel's rules: one directory each, taken
            // as written (no colon list), appended; never after a `lowerdir=` list, and no
            // ordinary layer after a data-only one.
            if state.lowerdir_list {
                return Err(ConfigError::Usage(
                    "lowerdir+ and datadir+ cannot follow lowerdir".to_string(),
                ));
            }
            let v = require(key, value)?;
            let dir = cwd.absolute(Path::new(OsStr::from_bytes(v)))?;
            if key == "datadir+" {
                cfg.datadirs.push(dir);
            } else if !cfg.datadirs.is_empty() {
                return Err(ConfigError::Usage(
                    "regular lower layers cannot follow data layers".to_string(),
                ));
            } else {
                cfg.lowerdirs.push(dir);
            }
        }
        "upperdir" => cfg.upperdir = Some(single_path(key, value, cwd)?),
        "workdir" => cfg.workdir = Some(single_path(key, value, cwd)?),
        "uidmapping" => {
            let v = utf8_value(key, value)?;
            cfg.uid_mappings.extend(parse_mappings(key, v)?);
        }
        "gidmapping" => {
            let v = utf8_value(key, value)?;
            cfg.gid_mappings.extend(parse_mappings(key, v)?);
        }
        "squash_to_root" => flag(cfg, |c| c.squash_to_root = true)?,
        "squash_to_uid" => cfg.squash_to_uid = Some(parse_id(key, utf8_value(key, value)?)?),
        "squash_to_gid" => cfg.squash_to_gid = Some(parse_id(key, utf8_value(key, value)?)?),
        "static_nlink" => flag(cfg, |c| c.static_nlink = true)?,
        "noacl" => flag(cfg, |c| c.noacl = true)?,
        "userxattr" => flag(cfg, |c| c.userxattr = true)?,
        "ino32_t" => flag(cfg, |c| c.ino32 = true)?,
        "volatile" => flag(cfg, |c| {
            c.volatile = true;
            c.fsync = false;
        })?,
        "debug" => flag(cfg, |c| {
            c.debug = true;
            c.foreground = true;
        })?,
        "log" => {
            cfg.log = match require(key, value)? {
                b"syslog" => super::LogTarget::Syslog,
                b"stderr" => super::LogTarget::Stderr,
                _ => super::LogTarget::File(single_path(key, value, cwd)?),
            }
        }
        "allow_other" => flag(cfg, |c| c.allow_other = true)?,
        "allow_root" => flag(cfg, |c| c.allow_root = true)?,
        "default_permissions" => flag(cfg, |c| c.default_permissions = true)?,
        "xino" => {
            cfg.xino = match utf8_value(key, value)? {
                "auto" => Xino::Auto,
                "on" => Xino::On,
                "off" => Xino::Off,
                _ => return Err(bad(key, "expected auto, on or off")),
            }
        }
        "fsync" => cfg.fsync = parse_bool(key, value)?,
        "threaded" => cfg.threaded = parse_bool(key, value)?,
        "writeback" => cfg.writeback = parse_bool(key, value)?,
        "fast_ino" => cfg.fast_ino = parse_bool(key, value)?,
        "passthrough" => {
            cfg.passthrough = match utf8_value(key, value)? {
                "all" => Passthrough::All,
                "upper" => Passthrough::Upper,
                "off" => Passthrough::Off,
                _ => return Err(bad(key, "expected all, upper or off")),
            }
        }
        "io_uring" => {
            cfg.io_uring = match value {
                None => Uring::On,
                Some(_) => match utf8_value(key, value)? {
                    "auto" => Uring::Auto,
                    "on" => Uring::On,
                    "off" => Uring::Off,
                    _ => return Err(bad(key, "expected auto, on or off")),
                },
            }
        }
        "markers" => {
            cfg.markers = match utf8_value(key, value)? {
                "auto" => Markers::Auto,
                "kernel" => Markers::Kernel,
                "fuse-overlayfs" => Markers::FuseOverlayfs,
                _ => return Err(bad(key, "expected auto, kernel or fuse-overlayfs")),
            }
        }
        "noxattrs" => cfg.noxattrs = value.is_none() || parse_bool(key, value)?,
        "timeout" => cfg.timeout = parse_timeout(key, utf8_value(key, value)?)?,
        "node_limit" => cfg.node_limit = at_least(key, value, 16)?,
        "udba" => {
            cfg.udba = match utf8_value(key, value)? {
                "none" => Udba::None,
                "notify" => Udba::Notify,
                _ => return Err(bad(key, "expected none or notify")),
            }
        }
        "udba_watches" => cfg.udba_watches = at_least(key, value, 1)?,
        "xattr_permissions" => {
            cfg.xattr_permissions = match utf8_value(key, value)? {
                "0" => 0,
                "1" => 1,
                "2" => 2,
                _ => return Err(bad(key, "expected 0, 1 or 2")),
            }
        }
        "plugins" => {
            // `plugins=` (empty) is allowed: no plugins.
            let Some(v) = value else {
                return Err(bad(key, "a value is required"));
            };
            let mut plugins = Vec::new();
            for part in split_path_list(v) {
                if part.is_empty() {
                    continue;
                }
                match String::from_utf8(part) {
                    Ok(s) => plugins.push(s),
                    Err(_) => return Err(bad(key, "not valid UTF-8")),
                }
            }
            cfg.plugins = plugins;
        }
        "redirect_dir" => {
            cfg.redirect_dir = Some(match utf8_value(key, value)? {
                "on" => RedirectDir::On,
                "off" => RedirectDir::Off,
                "follow" => RedirectDir::Follow,
                "nofollow" => RedirectDir::NoFollow,
                _ => return Err(bad(key, "expected on, off, follow or nofollow")),
            })
        }
        "metacopy" => cfg.metacopy = Some(on_off(key, value)?),
        "index" => cfg.index = on_off(key, value)?,
        "verity" => {
            cfg.verity = match utf8_value(key, value)? {
                "off" => Verity::Off,
                "on" => Verity::On,
                "require" => Verity::Require,
                _ => return Err(bad(key, "expected off, on or require")),
            }
        }
        "context" => cfg.context = Some(utf8_value(key, value)?.to_string()),
        "fsname" => {
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                state.fsname = Some(String::from_utf8_lossy(v).into_owned());
            }
        }
        _ if key.starts_with("x-") || IGNORED_KEYS.contains(&key) => {}
        _ => match kernel_flag(key) {
            Some(kf) => match value {
                None => cfg.kernel_flags.push(kf),
                Some(_) => return Err(bad(key, "this option takes no value")),
            },
            None => cfg.unknown.push(String::from_utf8_lossy(elem).into_owned()),
        },
    }
    Ok(())
}

fn bad(key: &str, reason: &str) -> ConfigError {
    ConfigError::BadValue {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

fn require<'a>(key: &str, value: Option<&'a [u8]>) -> Result<&'a [u8], ConfigError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(bad(key, "a value is required")),
    }
}

fn utf8_value<'a>(key: &str, value: Option<&'a [u8]>) -> Result<&'a str, ConfigError> {
    std::str::from_utf8(require(key, value)?).map_err(|_| bad(key, "not valid UTF-8"))
}

/// `on` or `off`, as the kernel's overlayfs spells its switches.
fn on_off(key: &str, value: Option<&[u8]>) -> Result<bool, ConfigError> {
    match utf8_value(key, value)? {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(bad(key, "expected on or off")),
    }
}

/// A whole number of at least `min`.
fn at_least(key: &str, value: Option<&[u8]>, min: usize) -> Result<usize, ConfigError> {
    let v = utf8_value(key, value)?;
    match v.parse::<usize>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(bad(
            key,
            &format!("'{v}' is not a whole number of at least {min}"),
        )),
    }
}

fn parse_bool(key: &str, value: Option<&[u8]>) -> Result<bool, ConfigError> {
    match value {
        Some(b"0") => Ok(false),
        Some(b"1") => Ok(true),
        _ => Err(bad(key, "expected 0 or 1")),
    }
}

fn parse_id(key: &str, v: &str) -> Result<u32, ConfigError> {
    v.parse::<u32>()
        .map_err(|_| bad(key, &format!("'{v}' is not a valid id")))
}

fn parse_timeout(key: &str, v: &str) -> Result<Duration, ConfigError> {
    let secs: f64 = v
        .parse()
        .map_err(|_| bad(key, &format!("'{v}' is not a number of seconds")))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad(
            key,
            &format!("'{v}' is not a finite, non-negative number"),
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| bad(key, &format!("'{v}' is out of range")))
}

/// `C:H:S[:C:H:S...]`, a leading or trailing `:` tolerated (podman writes `uidmapping=:0:1000:1`).
fn parse_mappings(key: &str, v: &str) -> Result<Vec<IdMapping>, ConfigError> {
    let trimmed = v.strip_prefix(':').unwrap_or(v);
    let trimmed = trimmed.strip_suffix(':').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Err(bad(key, "no mapping given"));
    }
    let mut nums = Vec::new();
    for part in trimmed.split(':') {
        let n = part
            .parse::<u32>()
            .map_err(|_| bad(key, &format!("'{part}' is not a valid id in '{v}'")))?;
        nums.push(n);
    }
    if nums.len() % 3 != 0 {
        return Err(bad(
            key,
            &format!("'{v}' is not a list of container:host:size triples"),
        ));
    }
    let mut out = Vec::new();
    for t in nums.chunks_exact(3) {
        let (container, host, len) = (t[0], t[1], t[2]);
        if len == 0 {
            return Err(bad(key, &format!("zero-length range in '{v}'")));
        }
        let limit = u64::from(u32::MAX) + 1;
        if u64::from(container) + u64::from(len) > limit || u64::from(host) + u64::from(len) > limit
        {
            return Err(bad(key, &format!("range exceeds the id space in '{v}'")));
        }
        out.push(IdMapping {
            container,
            host,
            len,
        });
    }
    Ok(out)
}

/// Splits a colon list on unescaped colons, turning `\:` into `:` and `\\` into `\`; any other
/// backslash is kept literally. Empty elements are returned (the caller decides about them).
fn split_path_list(v: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'\\' if i + 1 < v.len() && (v[i + 1] == b':' || v[i + 1] == b'\\') => {
                cur.push(v[i + 1]);
                i += 2;
                continue;
            }
            b':' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
        i += 1;
    }
    out.push(cur);
    out
}

/// A `lowerdir=` list: the ordinary lower layers, then the data-only ones, each after a
/// `::` (`l1:l2::d1::d2`), with the kernel's refusals in its words.
fn parse_lowerdir_list(
    v: &[u8],
    cwd: &mut CwdCache,
) -> Result<(Vec<PathBuf>, Vec<PathBuf>), ConfigError> {
    const KEY: &str = "lowerdir";
    if v.first() == Some(&b':') {
        return Err(bad(KEY, "cannot append lower layer"));
    }
    let parts = split_path_list(v);
    let (mut lowers, mut datas) = (Vec::new(), Vec::new());
    // An empty element is the second colon of a `::`: the next one is a data layer.
    let mut data_next = false;
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            if i + 1 == parts.len() {
                return Err(bad(KEY, "unescaped trailing colons"));
            }
            if data_next {
                return Err(bad(
                    KEY,
                    "only single ':' or double '::' sequences of unescaped colons allowed",
                ));
            }
            data_next = true;
            continue;
        }
        let dir = cwd.absolute(Path::new(OsStr::from_bytes(part)))?;
        if data_next {
            datas.push(dir);
        } else if !datas.is_empty() {
            return Err(bad(
                KEY,
                "regular lower layers cannot follow data lower layers",
            ));
        } else {
            lowers.push(dir);
        }
        data_next = false;
    }
    Ok((lowers, datas))
}

/// A single path (`upperdir=`, `workdir=`): unescaped like a list element, colons kept.
fn single_path(
    key: &str,
    value: Option<&[u8]>,
    cwd: &mut CwdCache,
) -> Result<PathBuf, ConfigError> {
    let v = require(key, value)?;
    let unescaped = split_path_list(v).join(&b':');
    cwd.absolute(Path::new(OsStr::from_bytes(&unescaped)))
}

/// The current directory, read at most once and only if a relative path needs it.
#[derive(Default)]
struct CwdCache(Option<PathBuf>);

impl CwdCache {
    /// `p` made absolute and lexically tidied (`.` components, doubled and trailing slashes
    /// dropped); `..` and symlinks are left alone.
    fn absolute(&mut self, p: &Path) -> Result<PathBuf, ConfigError> {
        let joined = if p.is_absolute() {
            p.to_path_buf()
        } else {
            let cwd = match &self.0 {
                Some(c) => c.clone(),
                None => {
                    let c = std::env::current_dir().map_err(|e| {
                        ConfigError::Layout(format!(
                            "cannot resolve relative path '{}': current directory: {}",
                            p.display(),
                            super::os_error_text(&e)
                        ))
                    })?;
                    self.0 = Some(c.clone());
                    c
                }
            };
            cwd.join(p)
        };
        Ok(joined.components().collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn parse(list: &[&str]) -> Result<Invocation, ConfigError> {
        parse_args(args(list))
    }

    fn mount(list: &[&str]) -> MountConfig {
        match parse(list) {
            Ok(Invocation::Mount(cfg)) => *cfg,
            other => panic!("expected a mount for {list:?}, got {other:?}"),
        }
    }

    fn usage(list: &[&str]) -> String {
        match parse(list) {
            Err(ConfigError::Usage(msg)) => msg,
            other => panic!("expected a usage error for {list:?}, got {other:?}"),
        }
    }

    fn bad_key(list: &[&str]) -> String {
        match parse(list) {
            Err(ConfigError::BadValue { key, .. }) => key,
            other => panic!("expected a bad value for {list:?}, got {other:?}"),
        }
    }

    fn pb(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn cwd() -> PathBuf {
        std::env::current_dir().unwrap()
    }

    #[test]
    fn podman_form() {
        let cfg = mount(&[
            "-o",
            "lowerdir=/s/l/A:/s/l/B,upperdir=/s/ID/diff,workdir=/s/ID/work,,volatile",
            "-o",
            "uidmapping=:0:1000:1:1:100000:65536,gidmapping=:0:1000:1:1:100000:65536,",
            "/s/ID/merged",
        ]);
        assert_eq!(cfg.mountpoint, pb("/s/ID/merged"));
        assert_eq!(cfg.lowerdirs, vec![pb("/s/l/A"), pb("/s/l/B")]);
        assert_eq!(cfg.upperdir, Some(pb("/s/ID/diff")));
        assert_eq!(cfg.workdir, Some(pb("/s/ID/work")));
        assert!(cfg.volatile);
        assert!(!cfg.fsync);
        let want = vec![
            IdMapping {
                container: 0,
                host: 1000,
                len: 1,
            },
            IdMapping {
                container: 1,
                host: 100_000,
                len: 65536,
            },
        ];
        assert_eq!(cfg.uid_mappings, want);
        assert_eq!(cfg.gid_mappings, want);
        assert!(cfg.unknown.is_empty());
        assert_eq!(cfg.source, None);
        assert!(!cfg.foreground);
        assert!(!cfg.debug);
    }

    #[test]
    fn mount_fuse3_form() {
        let cfg = mount(&[
            "overlay",
            "/target",
            "-o",
            "rw,lowerdir=/l1:/l2,upperdir=/u,workdir=/w,nodev,nosuid,dev,suid,_netdev,defaults",
        ]);
        assert_eq!(cfg.source.as_deref(), Some("overlay"));
        assert_eq!(cfg.mountpoint, pb("/target"));
        assert_eq!(cfg.lowerdirs, vec![pb("/l1"), pb("/l2")]);
        assert_eq!(
            cfg.kernel_flags,
            vec![
                KernelFlag::ReadWrite,
                KernelFlag::NoDev,
                KernelFlag::NoSuid,
                KernelFlag::Dev,
                KernelFlag::Suid
            ]
        );
        assert!(cfg.unknown.is_empty());
        assert!(!cfg.read_only());
    }

    #[test]
    fn options_after_positionals_and_glued() {
        let cfg = mount(&["/m", "-olowerdir=/a", "-f", "-oupperdir=/u,workdir=/w"]);
        assert_eq!(cfg.mountpoint, pb("/m"));
        assert_eq!(cfg.lowerdirs, vec![pb("/a")]);
        assert_eq!(cfg.upperdir, Some(pb("/u")));
        assert_eq!(cfg.workdir, Some(pb("/w")));
        assert!(cfg.foreground);
        assert!(!cfg.debug);
    }

    #[test]
    fn several_o_accumulate_and_later_wins() {
        let cfg = mount(&[
            "-o",
            "lowerdir=/old",
            "-o",
            "ro",
            "/m",
            "-o",
            "lowerdir=/new1:/new2,noatime",
            "-o",
            "uidmapping=0:1:1",
            "-o",
            "uidmapping=1:2:3",
        ]);
        assert_eq!(cfg.lowerdirs, vec![pb("/new1"), pb("/new2")]);
        assert_eq!(
            cfg.kernel_flags,
            vec![KernelFlag::ReadOnly, KernelFlag::NoAtime]
        );
        assert!(cfg.read_only());
        assert_eq!(cfg.uid_mappings.len(), 2);
        assert_eq!(
            cfg.uid_mappings[1],
            IdMapping {
                container: 1,
                host: 2,
                len: 3
            }
        );
    }

    #[test]
    fn empty_elements_ignored() {
        let cfg = mount(&["-o", ",,lowerdir=/a,,,noacl,", "-o", "", "-o", ",", "/m"]);
        assert_eq!(cfg.lowerdirs, vec![pb("/a")]);
        assert!(cfg.noacl);
        assert!(cfg.unknown.is_empty());
    }

    #[test]
    fn escaped_colons_and_backslashes() {
        let cfg = mount(&[
            "-o",
            r"lowerdir=/a\:b:/c,upperdir=/u\:x,workdir=/w\\:y",
            "/m",
        ]);
        assert_eq!(cfg.lowerdirs, vec![pb("/a:b"), pb("/c")]);
        assert_eq!(cfg.upperdir, Some(pb("/u:x")));
        // `\\` is one backslash; an unescaped colon in a single path is kept.
        assert_eq!(cfg.workdir, Some(pb(r"/w\:y")));

        let cfg = mount(&["-o", r"lowerdir=/a\\:/b\q", "/m"]);
        assert_eq!(cfg.lowerdirs, vec![pb(r"/a\"), pb(r"/b\q")]);
    }

    #[test]
    fn escaped_comma() {
        let cfg = mount(&["-o", r"lowerdir=/a\,b:/c,context=x\,y", "/m"]);
        assert_eq!(cfg.lowerdirs, vec![pb("/a,b"), pb("/c")]);
        assert_eq!(cfg.context.as_deref(), Some("x,y"));
        // An escaped backslash before a comma does not escape the comma.
        let cfg = mount(&["-o", r"lowerdir=/a\\,noacl", "/m"]);
        assert_eq!(cfg.lowerdirs, vec![pb(r"/a\")]);
        assert!(cfg.noacl);
    }

    #[test]
    fn quoted_context() {
        let cfg = mount(&[
            "-o",
            r#"lowerdir=/a,context="system_u:object_r:container_file_t:s0:c1,c2",noacl"#,
            "/m",
        ]);
        assert_eq!(
            cfg.context.as_deref(),
            Some("system_u:object_r:container_file_t:s0:c1,c2")
        );
        assert!(cfg.noacl);
        assert_eq!(cfg.lowerdirs, vec![pb("/a")]);
        assert!(cfg.unknown.is_empty());

        let cfg = mount(&["-o", r#"context="a,b:c""#, "/m"]);
        assert_eq!(cfg.context.as_deref(), Some("a,b:c"));

        assert_eq!(bad_key(&["-o", r#"context="a,b"#, "/m"]), "context");
    }

    #[test]
    fn mappings() {
        let cfg = mount(&["-o", "uidmapping=0:1000:1,gidmapping=:5:6:7", "/m"]);
        assert_eq!(
            cfg.uid_mappings,
            vec![IdMapping {
                container: 0,
                host: 1000,
                len: 1
            }]
        );
        assert_eq!(
            cfg.gid_mappings,
            vec![IdMapping {
                container: 5,
                host: 6,
                len: 7
            }]
        );
        for bad in [
            "uidmapping=0:1000",
            "uidmapping=0:1000:1:2",
            "uidmapping=0:x:1",
            "uidmapping=0::1000:1",
            "uidmapping=-1:0:1",
            "uidmapping=",
            "uidmapping",
            "uidmapping=:",
            "uidmapping=0:0:0",
            "uidmapping=4294967295:0:2",
        ] {
            assert_eq!(bad_key(&["-o", bad, "/m"]), "uidmapping", "{bad}");
        }
        assert_eq!(bad_key(&["-o", "gidmapping=1:2", "/m"]), "gidmapping");
        // The whole id space is fine.
        let cfg = mount(&["-o", "uidmapping=0:0:4294967295", "/m"]);
        assert_eq!(cfg.uid_mappings[0].len, u32::MAX);
    }

    #[test]
    fn squash_options() {
        let cfg = mount(&[
            "-o",
            "squash_to_root,squash_to_uid=12,squash_to_gid=34",
            "/m",
        ]);
        assert!(cfg.squash_to_root);
        assert_eq!(cfg.squash_to_uid, Some(12));
        assert_eq!(cfg.squash_to_gid, Some(34));
        assert_eq!(bad_key(&["-o", "squash_to_uid=-1", "/m"]), "squash_to_uid");
        assert_eq!(bad_key(&["-o", "squash_to_gid=abc", "/m"]), "squash_to_gid");
        assert_eq!(bad_key(&["-o", "squash_to_uid", "/m"]), "squash_to_uid");
        assert_eq!(bad_key(&["-o", "squash_to_root=1", "/m"]), "squash_to_root");
    }

    #[test]
    fn defaults_match_fuse_overlayfs() {
        let cfg = mount(&["/m"]);
        assert_eq!(cfg, MountConfig::new(pb("/m"), Vec::new()));
        assert!(cfg.fsync);
        assert!(cfg.writeback);
        assert_eq!(cfg.timeout, Duration::from_secs(1_000_000_000));
    }

    #[test]
    fn boolean_and_enum_options() {
        let cfg = mount(&[
            "-o",
            "fsync=0,threaded=1,writeback=0,fast_ino=1,noxattrs=1,xattr_permissions=2",
            "-o",
            "xino=off,ino32_t,static_nlink,noacl,redirect_dir=nofollow,plugins=/p/a:/p/b",
            "-o",
            "allow_other,allow_root,default_permissions",
            "/m",
        ]);
        assert!(!cfg.fsync);
        assert!(!cfg.volatile);
        assert!(cfg.threaded);
        assert!(!cfg.writeback);
        assert!(cfg.fast_ino);
        assert!(cfg.noxattrs);
        assert_eq!(cfg.xattr_permissions, 2);
        assert_eq!(cfg.xino, Xino::Off);
        assert!(cfg.ino32);
        assert!(cfg.static_nlink);
        assert!(cfg.noacl);
        assert_eq!(cfg.redirect_dir, Some(RedirectDir::NoFollow));
        assert_eq!(cfg.plugins, vec!["/p/a".to_string(), "/p/b".to_string()]);
        assert!(mount(&["-o", "plugins=", "/m"]).plugins.is_empty());
        assert_eq!(mount(&["-o", "plugins=:/x:", "/m"]).plugins, vec!["/x"]);
        assert_eq!(bad_key(&["-o", "plugins", "/m"]), "plugins");
        assert!(cfg.allow_other);
        assert!(cfg.allow_root);
        assert!(cfg.default_permissions);

        assert!(!cfg.userxattr);
        assert!(mount(&["-o", "userxattr", "/m"]).userxattr);
        assert_eq!(bad_key(&["-o", "userxattr=1", "/m"]), "userxattr");
        assert!(mount(&["-o", "noxattrs", "/m"]).noxattrs);
        assert!(!mount(&["-o", "noxattrs=0", "/m"]).noxattrs);
        assert_eq!(mount(&["-o", "xino=on", "/m"]).xino, Xino::On);
        assert_eq!(mount(&["-o", "xino=auto", "/m"]).xino, Xino::Auto);
        for (v, want) in [
            ("on", RedirectDir::On),
            ("off", RedirectDir::Off),
            ("follow", RedirectDir::Follow),
        ] {
            let opt = format!("redirect_dir={v}");
            assert_eq!(mount(&["-o", &opt, "/m"]).redirect_dir, Some(want));
            assert_eq!(mount(&["-o", &opt, "/m"]).redirect_mode(), want);
            // The kernel's refusal, naming `off` as the `follow` it is.
            let both = format!("{opt},userxattr");
            let want_msg = format!(
                "conflicting options: userxattr,redirect_dir={}",
                if v == "on" { "on" } else { "follow" }
            );
            match parse(&["-o", &both, "/m"]) {
                Err(e) => assert_eq!(e.to_string(), want_msg),
                other => panic!("{both}: {other:?}"),
            }
        }
        assert_eq!(mount(&["/m"]).redirect_mode(), RedirectDir::Off);
        let ux = mount(&["-o", "userxattr", "/m"]);
        assert_eq!(ux.redirect_mode(), RedirectDir::NoFollow);
        let ux = mount(&["-o", "userxattr,redirect_dir=nofollow", "/m"]);
        assert_eq!(ux.redirect_mode(), RedirectDir::NoFollow);
        // metacopy=on turns redirect_dir on, and the kernel refuses the combinations it
        // refuses, in its words (checked against this kernel's mount(2)).
        let mc = mount(&["-o", "metacopy=on", "/m"]);
        assert!(mc.metacopy_on());
        assert_eq!(mc.redirect_mode(), RedirectDir::On);
        assert!(!mount(&["-o", "metacopy=off", "/m"]).metacopy_on());
        assert!(!mount(&["/m"]).metacopy_on());
        assert!(mount(&["-o", "metacopy=on,redirect_dir=on", "/m"]).metacopy_on());
        assert_eq!(bad_key(&["-o", "metacopy=yes", "/m"]), "metacopy");
        for (opts, msg) in [
            (
                "metacopy=on,redirect_dir=off",
                "conflicting options: metacopy=on,redirect_dir=follow",
            ),
            (
                "metacopy=on,redirect_dir=follow",
                "conflicting options: metacopy=on,redirect_dir=follow",
            ),
            (
                "redirect_dir=nofollow,metacopy=on",
                "conflicting options: metacopy=on,redirect_dir=nofollow",
            ),
            (
                "metacopy=on,userxattr",
                "conflicting options: userxattr,metacopy=on",
            ),
            (
                "metacopy=on,userxattr,redirect_dir=on",
                "conflicting options: userxattr,redirect_dir=on",
            ),
        ] {
            let list = format!("upperdir=/u,workdir=/w,lowerdir=/l,{opts}");
            match parse(&["-o", &list, "/m"]) {
                Err(e) => assert_eq!(e.to_string(), msg, "{opts}"),
                other => panic!("{opts}: {other:?}"),
            }
        }
        assert!(mount(&["-o", "userxattr,metacopy=off", "/m"]).userxattr);
        // Without an upper layer `follow` is as good as `on`.
        assert!(mount(&["-o", "lowerdir=/l,metacopy=on,redirect_dir=follow", "/m"]).metacopy_on());
        assert!(mount(&["-o", "lowerdir=/l,metacopy=on,redirect_dir=off", "/m"]).metacopy_on());
        assert_eq!(
            parse(&["-o", "lowerdir=/l,metacopy=on,redirect_dir=nofollow", "/m"])
                .err()
                .map(|e| e.to_string()),
            Some("conflicting options: metacopy=on,redirect_dir=nofollow".to_string())
        );
        // index=: off by default; used only on a writable union (the kernel ignores it
        // without an upper layer, and sets no index up for a `ro` mount).
        assert!(!mount(&["/m"]).index);
        let rw = "lowerdir=/l,upperdir=/u,workdir=/w";
        assert!(mount(&["-o", &format!("{rw},index=on"), "/m"]).index_on());
        assert!(!mount(&["-o", &format!("{rw},index=off"), "/m"]).index_on());
        assert!(!mount(&["-o", &format!("{rw},index=on,ro"), "/m"]).index_on());
        assert!(mount(&["-o", "lowerdir=/l,index=on", "/m"]).index);
        assert!(!mount(&["-o", "lowerdir=/l,index=on", "/m"]).index_on());
        assert!(mount(&["-o", &format!("{rw},index=on,userxattr"), "/m"]).index_on());
        assert_eq!(bad_key(&["-o", "index=yes", "/m"]), "index");
        assert_eq!(mount(&["/m"]).markers, Markers::Auto);
        assert_eq!(mount(&["/m"]).passthrough, Passthrough::All);
        for (v, want) in [
            ("all", Passthrough::All),
            ("upper", Passthrough::Upper),
            ("off", Passthrough::Off),
        ] {
            let opt = format!("passthrough={v}");
            assert_eq!(mount(&["-o", &opt, "/m"]).passthrough, want);
        }
        assert_eq!(mount(&["/m"]).io_uring, Uring::Auto);
        assert_eq!(mount(&["-o", "io_uring", "/m"]).io_uring, Uring::On);
        assert_eq!(mount(&["-o", "io_uring=on", "/m"]).io_uring, Uring::On);
        assert_eq!(mount(&["-o", "io_uring=auto", "/m"]).io_uring, Uring::Auto);
        assert_eq!(mount(&["-o", "io_uring=off", "/m"]).io_uring, Uring::Off);
        for (v, want) in [
            ("auto", Markers::Auto),
            ("kernel", Markers::Kernel),
            ("fuse-overlayfs", Markers::FuseOverlayfs),
        ] {
            let opt = format!("markers={v}");
            assert_eq!(mount(&["-o", &opt, "/m"]).markers, want);
        }

        for (opt, key) in [
            ("fsync=2", "fsync"),
            ("fsync", "fsync"),
            ("fsync=yes", "fsync"),
            ("threaded=", "threaded"),
            ("writeback=true", "writeback"),
            ("fast_ino=-1", "fast_ino"),
            ("noxattrs=2", "noxattrs"),
            ("xattr_permissions=3", "xattr_permissions"),
            ("xino=maybe", "xino"),
            ("redirect_dir=yes", "redirect_dir"),
            ("markers=aufs", "markers"),
            ("passthrough=1", "passthrough"),
            ("io_uring=1", "io_uring"),
            ("markers", "markers"),
            ("ro=1", "ro"),
            ("debug=1", "debug"),
            ("volatile=0", "volatile"),
            ("lowerdir=", "lowerdir"),
            ("lowerdir", "lowerdir"),
            ("upperdir=", "upperdir"),
            ("workdir", "workdir"),
        ] {
            assert_eq!(bad_key(&["-o", opt, "/m"]), key, "{opt}");
        }
    }

    #[test]
    fn volatile_wins_over_fsync() {
        let cfg = mount(&["-o", "volatile,fsync=1", "/m"]);
        assert!(cfg.volatile);
        assert!(!cfg.fsync);
        let cfg = mount(&["-o", "fsync=1", "/m"]);
        assert!(cfg.fsync);
    }

    #[test]
    fn udba_values() {
        let d = mount(&["/m"]);
        assert_eq!(
            (d.udba, d.udba_watches),
            (Udba::None, crate::config::UDBA_WATCHES)
        );
        let n = mount(&["-o", "udba=notify,udba_watches=4", "/m"]);
        assert_eq!((n.udba, n.udba_watches), (Udba::Notify, 4));
        assert_eq!(mount(&["-o", "udba=none", "/m"]).udba, Udba::None);
        for bad in ["udba=reval", "udba=", "udba", "udba=on"] {
            assert_eq!(bad_key(&["-o", bad, "/m"]), "udba", "{bad}");
        }
        for bad in ["udba_watches=0", "udba_watches=x", "udba_watches"] {
            assert_eq!(bad_key(&["-o", bad, "/m"]), "udba_watches", "{bad}");
        }
    }

    #[test]
    fn timeout_values() {
        assert_eq!(
            mount(&["-o", "timeout=0.5", "/m"]).timeout,
            Duration::from_millis(500)
        );
        assert_eq!(mount(&["-o", "timeout=0", "/m"]).timeout, Duration::ZERO);
        assert_eq!(
            mount(&["-o", "timeout=30", "/m"]).timeout,
            Duration::from_secs(30)
        );
        for bad in [
            "timeout=-1",
            "timeout=NaN",
            "timeout=inf",
            "timeout=abc",
            "timeout=",
            "timeout",
            "timeout=1e300",
        ] {
            assert_eq!(bad_key(&["-o", bad, "/m"]), "timeout", "{bad}");
        }
        for bad in [
            "node_limit=",
            "node_limit=x",
            "node_limit=3",
            "node_limit=-1",
        ] {
            assert_eq!(bad_key(&["-o", bad, "/m"]), "node_limit", "{bad}");
        }
    }

    #[test]
    fn lowerdir_colon_errors_are_the_kernels() {
        for (bad, why) in [
            ("lowerdir=:/a", "cannot append lower layer"),
            ("lowerdir=:", "cannot append lower layer"),
            ("lowerdir=/a:", "unescaped trailing colons"),
            ("lowerdir=/a::", "unescaped trailing colons"),
            ("lowerdir=/a:::/b", "only single ':' or double '::'"),
            (
                "lowerdir=/a::/d:/b",
                "regular lower layers cannot follow data",
            ),
        ] {
            match parse(&["-o", bad, "/m"]) {
                Err(ConfigError::BadValue { key, reason }) => {
                    assert_eq!(key, "lowerdir");
                    assert!(reason.contains(why), "{bad}: {reason}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn data_only_layers_after_double_colons() {
        let cfg = mount(&["-o", r"lowerdir=/l1:/l2::/d1::/d\:2", "/m"]);
        assert_eq!(cfg.lowerdirs, vec![pb("/l1"), pb("/l2")]);
        assert_eq!(cfg.datadirs, vec![pb("/d1"), pb("/d:2")]);
        // A later lowerdir= replaces both.
        let cfg = mount(&["-o", "lowerdir=/a::/b,lowerdir=/c", "/m"]);
        assert_eq!(cfg.lowerdirs, vec![pb("/c")]);
        assert!(cfg.datadirs.is_empty());
    }

    #[test]
    fn lowerdir_plus_and_datadir_plus_append_as_the_kernel_allows() {
        let cfg = mount(&[
            "-o",
            "lowerdir+=/l1,lowerdir+=/l:2,datadir+=/d1",
            "-o",
            "datadir+=/d2",
            "/m",
        ]);
        assert_eq!(cfg.lowerdirs, vec![pb("/l1"), pb("/l:2")]);
        assert_eq!(cfg.datadirs, vec![pb("/d1"), pb("/d2")]);
        // lowerdir= after them replaces them all.
        let cfg = mount(&["-o", "lowerdir+=/l1,datadir+=/d1,lowerdir=/x", "/m"]);
        assert_eq!((cfg.lowerdirs, cfg.datadirs), (vec![pb("/x")], vec![]));
        for (opts, why) in [
            (
                "lowerdir=/x,lowerdir+=/l1",
                "lowerdir+ and datadir+ cannot follow lowerdir",
            ),
            (
                "lowerdir=/x,datadir+=/d",
                "lowerdir+ and datadir+ cannot follow lowerdir",
            ),
            (
                "datadir+=/d,lowerdir+=/l",
                "regular lower layers cannot follow data layers",
            ),
        ] {
            match parse(&["-o", opts, "/m"]) {
                Err(ConfigError::Usage(m)) => assert_eq!(m, why, "{opts}"),
                other => panic!("{opts}: {other:?}"),
            }
        }
        assert!(matches!(
            parse(&["-o", "lowerdir+=", "/m"]),
            Err(ConfigError::BadValue { .. })
        ));
    }

    #[test]
    fn debug_forms() {
        let cfg = mount(&["-o", "debug", "/m"]);
        assert!(cfg.debug && cfg.foreground);
        let cfg = mount(&["-d", "/m"]);
        assert!(cfg.debug && cfg.foreground);
        let cfg = mount(&["/m", "--debug"]);
        assert!(cfg.debug && cfg.foreground);
        let cfg = mount(&["-f", "/m"]);
        assert!(!cfg.debug && cfg.foreground);
    }

    #[test]
    fn noise_is_silent_unknown_collected() {
        let cfg = mount(&[
            "-o",
            "fsname=myfs,subtype=stratafs,nonempty,auto_unmount,defaults,_netdev,nofail,user,users",
            "-o",
            "noauto,auto,relatime,strictatime,nodiratime,x-systemd.requires=/x,comment=hello,x-gvfs-hide",
            "-o",
            "frobnicate,frobnicate=3,lazytime,user=bob",
            "/m",
        ]);
        assert_eq!(cfg.unknown, vec!["frobnicate", "frobnicate=3"]);
        assert_eq!(cfg.source.as_deref(), Some("myfs"));
        assert!(cfg.kernel_flags.is_empty());
    }

    #[test]
    fn fsname_does_not_override_source_positional() {
        let cfg = mount(&["overlay", "/m", "-o", "fsname=other"]);
        assert_eq!(cfg.source.as_deref(), Some("overlay"));
        // An empty fsname is ignored; the last non-empty one wins.
        let cfg = mount(&["/m", "-o", "fsname=a,fsname=b,fsname="]);
        assert_eq!(cfg.source.as_deref(), Some("b"));
    }

    #[test]
    fn all_kernel_flags_in_order() {
        let cfg = mount(&[
            "-o",
            "ro,rw,dev,nodev,suid,nosuid,exec,noexec,atime,noatime,dirsync,sync,async",
            "/m",
        ]);
        assert_eq!(
            cfg.kernel_flags,
            vec![
                KernelFlag::ReadOnly,
                KernelFlag::ReadWrite,
                KernelFlag::Dev,
                KernelFlag::NoDev,
                KernelFlag::Suid,
                KernelFlag::NoSuid,
                KernelFlag::Exec,
                KernelFlag::NoExec,
                KernelFlag::Atime,
                KernelFlag::NoAtime,
                KernelFlag::DirSync,
                KernelFlag::Sync,
                KernelFlag::Async,
            ]
        );
    }

    #[test]
    fn help_version_demo() {
        assert_eq!(parse(&["-h"]), Ok(Invocation::Help));
        assert_eq!(parse(&["--help"]), Ok(Invocation::Help));
        assert_eq!(parse(&["-V"]), Ok(Invocation::Version));
        assert_eq!(parse(&["--version"]), Ok(Invocation::Version));
        assert_eq!(parse(&["--demo"]), Ok(Invocation::Demo));
        // They win over positionals, bad values and command-line errors.
        assert_eq!(
            parse(&["/m", "-o", "fsync=9", "--help"]),
            Ok(Invocation::Help)
        );
        assert_eq!(parse(&["a", "b", "c", "-V"]), Ok(Invocation::Version));
        assert_eq!(parse(&["--bogus", "--demo"]), Ok(Invocation::Demo));
        assert_eq!(parse(&["--demo", "-o"]), Ok(Invocation::Demo));
        // The first one given wins.
        assert_eq!(parse(&["-V", "-h"]), Ok(Invocation::Version));
        // After `--` they are positionals.
        let cfg = mount(&["--", "--help"]);
        assert_eq!(cfg.mountpoint, cwd().join("--help"));
    }

    #[test]
    fn usage_errors() {
        assert!(usage(&[]).contains("missing mount point"));
        assert!(usage(&["-o", "lowerdir=/a", "-f"]).contains("missing mount point"));
        assert!(usage(&["a", "b", "c"]).contains("too many"));
        assert_eq!(usage(&["-x", "/m"]), "unknown flag '-x'");
        assert_eq!(usage(&["/m", "--frob"]), "unknown flag '--frob'");
        assert!(usage(&["/m", "-o"]).contains("'-o'"));
        assert!(usage(&[""]).contains("empty"));
    }

    #[test]
    fn double_dash_ends_options() {
        let cfg = mount(&["-o", "lowerdir=/a", "--", "-weird", "-o"]);
        assert_eq!(cfg.source.as_deref(), Some("-weird"));
        assert_eq!(cfg.mountpoint, cwd().join("-o"));
        // A lone dash is a positional.
        assert_eq!(mount(&["-"]).mountpoint, cwd().join("-"));
    }

    #[test]
    fn relative_paths_made_absolute_not_resolved() {
        let cfg = mount(&[
            "-o",
            "lowerdir=l1:./l2:../up/l3,upperdir=u/,workdir=w",
            "mnt/",
        ]);
        let here = cwd();
        assert_eq!(cfg.mountpoint, here.join("mnt"));
        assert_eq!(
            cfg.lowerdirs,
            vec![here.join("l1"), here.join("l2"), here.join("../up/l3")]
        );
        assert_eq!(cfg.upperdir, Some(here.join("u")));
        assert_eq!(cfg.workdir, Some(here.join("w")));
        let cfg = mount(&["-o", "lowerdir=/a//b/./c/", "/m/./n//"]);
        assert_eq!(cfg.lowerdirs, vec![pb("/a/b/c")]);
        assert_eq!(cfg.mountpoint, pb("/m/n"));
    }

    #[test]
    fn missing_lowerdir_is_left_to_validate() {
        let cfg = mount(&["-o", "upperdir=/u,workdir=/w", "/m"]);
        assert!(cfg.lowerdirs.is_empty());
    }

    #[test]
    fn non_utf8_paths_survive() {
        let mut group = b"lowerdir=/a\xff:/b".to_vec();
        group.extend_from_slice(b",noacl");
        let argv = vec![
            OsString::from("-o"),
            OsString::from_vec(group),
            OsString::from_vec(b"/m\xfe".to_vec()),
        ];
        let Ok(Invocation::Mount(cfg)) = parse_args(argv) else {
            panic!("expected a mount");
        };
        assert_eq!(
            cfg.lowerdirs,
            vec![
                PathBuf::from(OsString::from_vec(b"/a\xff".to_vec())),
                pb("/b")
            ]
        );
        assert_eq!(
            cfg.mountpoint,
            PathBuf::from(OsString::from_vec(b"/m\xfe".to_vec()))
        );
        assert!(cfg.noacl);
        // Non-path values must be UTF-8.
        let argv = vec![
            OsString::from("-o"),
            OsString::from_vec(b"context=\xff".to_vec()),
            OsString::from("/m"),
        ];
        assert!(matches!(
            parse_args(argv),
            Err(ConfigError::BadValue { key, .. }) if key == "context"
        ));
    }

    #[test]
    fn every_listed_key_is_handled() {
        for &key in OPTION_KEYS
            .iter()
            .chain(KERNEL_FLAG_KEYS)
            .chain(IGNORED_KEYS)
        {
            for elem in [key.to_string(), format!("{key}=1"), format!("{key}=/x")] {
                let argv = ["-o", elem.as_str(), "/m"];
                match parse(&argv) {
                    Ok(Invocation::Mount(cfg)) => assert!(cfg.unknown.is_empty(), "{elem}"),
                    Err(ConfigError::BadValue { key: k, .. }) => assert_eq!(k, key, "{elem}"),
                    other => panic!("{elem}: {other:?}"),
                }
            }
            assert_eq!(
                kernel_flag(key).is_some(),
                KERNEL_FLAG_KEYS.contains(&key),
                "{key}"
            );
        }
        let all: Vec<_> = OPTION_KEYS
            .iter()
            .chain(KERNEL_FLAG_KEYS)
            .chain(IGNORED_KEYS)
            .collect();
        let unique: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len(), "a key is listed twice");
        assert!(mount(&["-o", "x-systemd.automount", "/m"])
            .unknown
            .is_empty());
        assert_eq!(mount(&["-o", "frob=1", "/m"]).unknown, vec!["frob=1"]);
    }

    #[test]
    fn error_messages_are_one_line() {
        let err = parse(&["-o", "fsync=2", "/m"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("fsync") && !msg.contains('\n'), "{msg}");
    }
}
