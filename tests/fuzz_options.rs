//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Fuzzing of the command-line parser (`config::parse_args`) with proptest, on stable Rust:
//! random argv, random `-o` groups built from the characters the grammar cares about
//! (escapes, commas, colons, quotes, `=`, unicode, control characters), and random bytes.
//!
//! Properties: the parser never panics; an error displays as one non-empty line without
//! control characters or ` (os error N)`; an accepted configuration is sane (absolute paths,
//! `volatile` implies no fsync, ...); paths and id mappings rendered with the documented
//! escapes come back as they were.
//!
//! Cases per property: a CI-sized default, or `STRATAFS_FUZZ_CASES=N` for long runs
//! (`STRATAFS_FUZZ_CASES=1000000 cargo test --release --test fuzz_options`).

mod common;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use common::fuzz_config;
use stratafs::config::{self, ConfigError, IdMapping, Invocation, MountConfig};

/// The checks every outcome of `parse_args` must pass.
fn check(args: Vec<OsString>) {
    match config::parse_args(args) {
        Ok(Invocation::Mount(cfg)) => check_config(&cfg),
        Ok(_) => {}
        Err(e) => check_error(&e),
    }
}

fn check_error(e: &ConfigError) {
    let line = e.to_string();
    assert!(!line.is_empty(), "empty error for {e:?}");
    assert!(
        !line.chars().any(char::is_control),
        "error is not one clean line: {line:?}"
    );
    assert!(!line.contains("(os error"), "{line:?}");
}

fn check_config(cfg: &MountConfig) {
    assert!(cfg.mountpoint.is_absolute(), "{:?}", cfg.mountpoint);
    for p in cfg
        .lowerdirs
        .iter()
        .chain(cfg.upperdir.iter())
        .chain(cfg.workdir.iter())
    {
        assert!(p.is_absolute(), "{p:?}");
    }
    if cfg.volatile {
        assert!(!cfg.fsync, "volatile with fsync");
    }
    if cfg.debug {
        assert!(cfg.foreground, "debug without foreground");
    }
    assert!(cfg.node_limit >= 16);
    assert!(cfg.xattr_permissions <= 2);
    for m in cfg.uid_mappings.iter().chain(cfg.gid_mappings.iter()) {
        assert!(m.len > 0);
        assert!(u64::from(m.container) + u64::from(m.len) <= 1 << 32);
        assert!(u64::from(m.host) + u64::from(m.len) <= 1 << 32);
    }
    // Unknown keys are warned about on one line each.
    for k in &cfg.unknown {
        assert!(!config::one_line(k).chars().any(char::is_control));
    }
    // What validate() says about such a configuration is one line too (the paths are
    // random: nearly always "does not exist").
    if let Err(e) = config::validate(cfg) {
        check_error(&e);
    }
}

/// Characters the option grammar treats specially, and some it does not.
const ALPHABET: &[&str] = &[
    "\\",
    ",",
    ":",
    "\"",
    "=",
    "/",
    ".",
    "..",
    "a",
    "Z",
    "0",
    "1",
    "7",
    "-",
    " ",
    "é",
    "🙂",
    "\n",
    "\t",
    "\u{1b}",
    "\u{0}",
    "x-",
    "lowerdir",
    "upperdir",
    "workdir",
    "timeout",
    "uidmapping",
    "gidmapping",
    "fsync",
    "volatile",
    "xino",
    "node_limit",
    "plugins",
    "context",
    "fsname",
    "ro",
    "debug",
    "squash_to_uid",
    "xattr_permissions",
    "markers",
    "passthrough",
    "noxattrs",
    "redirect_dir",
    "1e400",
    "inf",
    "NaN",
    "-1",
    "4294967295",
    "4294967296",
];

/// A string made of pieces of [`ALPHABET`].
fn grammar_string(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(ALPHABET), 0..max).prop_map(|v| v.concat())
}

/// One argv element: flags, `-o` groups, positionals, raw bytes.
fn arg() -> impl Strategy<Value = OsString> {
    prop_oneof![
        4 => proptest::sample::select(&[
            "-o", "-f", "-d", "--debug", "--", "-", "-x", "--demo", "-h", "-V"
        ][..])
        .prop_map(OsString::from),
        6 => grammar_string(24).prop_map(OsString::from),
        3 => grammar_string(24).prop_map(|s| OsString::from(format!("-o{s}"))),
        2 => any::<String>().prop_map(OsString::from),
        2 => proptest::collection::vec(any::<u8>(), 0..32).prop_map(OsString::from_vec),
    ]
}

proptest! {
    #![proptest_config(fuzz_config(3000))]

    /// Random argv: never a panic, errors one line.
    #[test]
    fn random_argv(args in proptest::collection::vec(arg(), 0..8)) {
        check(args);
    }

    /// `MOUNTPOINT -o GROUP` with a random group: the option stage, not cut short by flags.
    #[test]
    fn random_option_group(group in grammar_string(40), mnt in grammar_string(6)) {
        check(vec!["/m".into(), "-o".into(), group.into()]);
        check(vec![format!("/{mnt}").into(), format!("-o{mnt}").into()]);
    }

    /// Random bytes as the `-o` group.
    #[test]
    fn random_option_bytes(group in proptest::collection::vec(any::<u8>(), 0..80)) {
        check(vec!["/m".into(), "-o".into(), OsString::from_vec(group)]);
    }

    /// Paths written with the documented escapes (`\\`, `\:`, `\,`) come back unchanged.
    #[test]
    fn escaped_paths_round_trip(
        lowers in proptest::collection::vec(path(), 1..5),
        upper in path(),
        work in path(),
        mnt in path(),
    ) {
        let l: Vec<String> = lowers.iter().map(|p| escape(p)).collect();
        let group = format!(
            "lowerdir={},upperdir={},workdir={}",
            l.join(":"),
            escape(&upper),
            escape(&work)
        );
        let inv = config::parse_args(vec![
            OsString::from("-o"),
            OsString::from(group),
            OsString::from(&mnt),
        ]);
        let Ok(Invocation::Mount(cfg)) = inv else {
            panic!("refused: {inv:?}");
        };
        let want: Vec<PathBuf> = lowers.iter().map(|p| tidy(p)).collect();
        prop_assert_eq!(&cfg.lowerdirs, &want);
        prop_assert_eq!(cfg.upperdir, Some(tidy(&upper)));
        prop_assert_eq!(cfg.workdir, Some(tidy(&work)));
        prop_assert_eq!(cfg.mountpoint, tidy(&mnt));
    }

    /// `uidmapping=`/`gidmapping=` lists come back as the ranges they were made of.
    #[test]
    fn mappings_round_trip(maps in proptest::collection::vec(mapping(), 1..6), lead in any::<bool>()) {
        let text: Vec<String> = maps
            .iter()
            .map(|m| format!("{}:{}:{}", m.container, m.host, m.len))
            .collect();
        // podman writes a leading colon.
        let value = format!("{}{}", if lead { ":" } else { "" }, text.join(":"));
        let inv = config::parse_args(vec![
            OsString::from("/m"),
            OsString::from(format!("-olowerdir=/l,uidmapping={value},gidmapping={value}")),
        ]);
        let Ok(Invocation::Mount(cfg)) = inv else {
            panic!("refused: {inv:?}");
        };
        prop_assert_eq!(&cfg.uid_mappings, &maps);
        prop_assert_eq!(&cfg.gid_mappings, &maps);
    }
}

/// An absolute path of arbitrary characters but NUL and `"` (which the option grammar
/// cannot carry: quotes toggle comma protection), with `.`/`..`/empty components too.
fn path() -> impl Strategy<Value = String> {
    let component = prop_oneof![
        6 => "[^\\x00\"/]{1,8}",
        1 => Just(".".to_string()),
        1 => Just("..".to_string()),
        1 => Just(String::new()),
        2 => proptest::sample::select(&["a:b", "a,b", "a\\b", "\\", ":", ",", "é🙂", "a=b"][..])
            .prop_map(str::to_string),
    ];
    proptest::collection::vec(component, 0..5).prop_map(|c| format!("/{}", c.join("/")))
}

fn escape(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for c in p.chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What the parser does to an absolute path: `.`, doubled and trailing slashes dropped.
fn tidy(p: &str) -> PathBuf {
    Path::new(p).components().collect()
}

fn mapping() -> impl Strategy<Value = IdMapping> {
    (any::<u32>(), any::<u32>(), 1u32..=u32::MAX).prop_map(|(container, host, len)| {
        let room = (u32::MAX - container.max(host)).saturating_add(1);
        IdMapping {
            container,
            host,
            len: len.min(room).max(1),
        }
    })
}

// ---- Pinned cases: what fuzzing found, kept as named regressions. ----

/// A newline in an option value made a two-line error (found by `random_option_group`).
#[test]
fn regression_newline_in_a_value_stays_on_one_line() {
    let Err(e) = config::parse_args(vec![OsString::from("/m"), OsString::from("-otimeout=1\n2")])
    else {
        panic!("accepted");
    };
    assert_eq!(
        e.to_string(),
        "invalid value for option 'timeout': '1\\n2' is not a number of seconds"
    );
}

/// A control character in an unknown flag (found by `random_argv`).
#[test]
fn regression_escape_sequence_in_a_flag_stays_escaped() {
    let Err(e) = config::parse_args(vec![OsString::from("-\u{1b}[2J"), OsString::from("/m")])
    else {
        panic!("accepted");
    };
    assert_eq!(e.to_string(), "unknown flag '-\\u{1b}[2J'");
}

/// A path with a newline that does not exist: validate's line is one line.
#[test]
fn regression_newline_in_a_path_stays_on_one_line() {
    let Ok(Invocation::Mount(cfg)) = config::parse_args(vec![
        OsString::from("/m"),
        OsString::from("-olowerdir=/no\nsuch"),
    ]) else {
        panic!("refused");
    };
    let e = config::validate(&cfg).expect_err("validated");
    assert_eq!(e.to_string(), "lowerdir '/no\\nsuch' does not exist");
}
