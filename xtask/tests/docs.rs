// SPDX-License-Identifier: MIT OR Apache-2.0
//! Integration tests may panic: a failed assertion is how they report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The checked-in man pages and completions match the command lines, document every `-o` key
//! the daemon accepts, and render without warnings.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// As tests/common/base.rs: a missing tool skips the test, except under CI=true.
fn facility(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but {what} is missing: this test must run in CI");
    }
    eprintln!("SKIPPED: {what} is missing");
    false
}

fn has_program(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn checked_in_pages_and_completions_match_the_command_lines() {
    let root = xtask::workspace_root();
    let files = xtask::generate().unwrap();
    assert_eq!(files.len(), 12);
    let stale = xtask::stale(&root, &files);
    assert!(
        stale.is_empty(),
        "{stale:?} no longer match the command lines: run `cargo xtask docs` and commit them"
    );
}

#[test]
fn every_accepted_option_key_is_documented_and_nothing_else() {
    let documented: Vec<&str> = xtask::daemon_cli::documented_keys();
    let unique: BTreeSet<&str> = documented.iter().copied().collect();
    assert_eq!(unique.len(), documented.len(), "a key is documented twice");

    let mut accepted: BTreeSet<&str> = stratafs::config::OPTION_KEYS
        .iter()
        .chain(stratafs::config::KERNEL_FLAG_KEYS)
        .chain(stratafs::config::IGNORED_KEYS)
        .copied()
        .collect();
    // The parser ignores every key starting with `x-` (fstab's x-systemd.*, x-gvfs-*).
    accepted.insert("x-*");
    let undocumented: Vec<_> = accepted.difference(&unique).collect();
    let unknown: Vec<_> = unique.difference(&accepted).collect();
    assert!(
        undocumented.is_empty(),
        "-o keys the daemon accepts but xtask/src/daemon_cli.rs does not document: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "-o keys xtask/src/daemon_cli.rs documents but the daemon does not accept: {unknown:?}"
    );

    // And the parser agrees: each documented key is taken without an "unknown option" warning.
    for key in unique.iter().map(|k| k.replace('*', "anything")) {
        let argv = ["-o".into(), key.clone().into(), "/m".into()];
        match stratafs::config::parse_args(argv) {
            Ok(stratafs::config::Invocation::Mount(cfg)) => {
                assert!(cfg.unknown.is_empty(), "{key}: {:?}", cfg.unknown)
            }
            Ok(other) => panic!("{key}: {other:?}"),
            // A key that needs a value says so about itself.
            Err(e) => assert!(e.to_string().contains(key.as_str()), "{key}: {e}"),
        }
    }
}

#[test]
fn daemon_flags_are_described() {
    // The flags the hand-written parser takes (src/config/parse.rs, scan_argv).
    let cmd = xtask::daemon_cli::command();
    let mut flags: BTreeSet<String> = BTreeSet::new();
    for arg in cmd.get_arguments() {
        if let Some(s) = arg.get_short() {
            flags.insert(format!("-{s}"));
        }
        if let Some(l) = arg.get_long() {
            flags.insert(format!("--{l}"));
        }
    }
    let parsed = [
        "-o",
        "-f",
        "-d",
        "--debug",
        "-h",
        "--help",
        "-V",
        "--version",
        "--demo",
    ];
    assert_eq!(
        flags,
        parsed
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>()
    );
    // Each of them is one the parser knows (an unknown flag is a usage error).
    for flag in parsed.iter().filter(|f| **f != "-o") {
        let argv = [flag.to_string().into(), "/m".into()];
        assert!(
            stratafs::config::parse_args(argv).is_ok(),
            "{flag} is described but not parsed"
        );
    }
}

/// Renders a page with `man -l` and `groff -ww`, returning what either wrote to stderr.
fn render_warnings(page: &Path) -> String {
    let mut warnings = String::new();
    let man = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .output()
        .unwrap();
    assert!(man.status.success(), "man -l {}: {man:?}", page.display());
    assert!(
        !man.stdout.is_empty(),
        "man -l {} printed nothing",
        page.display()
    );
    warnings.push_str(&String::from_utf8_lossy(&man.stderr));
    let groff = Command::new("groff")
        .args(["-ww", "-z", "-man", "-Tutf8"])
        .arg(page)
        .output()
        .unwrap();
    assert!(
        groff.status.success(),
        "groff {}: {groff:?}",
        page.display()
    );
    warnings.push_str(&String::from_utf8_lossy(&groff.stderr));
    warnings
}

#[test]
fn man_pages_render_without_warnings() {
    if !facility(has_program("man"), "man (package man-db)")
        || !facility(has_program("groff"), "groff (package groff-base)")
    {
        return;
    }
    let root = xtask::workspace_root();
    for page in ["stratafs.8", "stratafs-mount.1", "stratafs-snapshotter.8"] {
        let path = root.join(xtask::MAN_DIR).join(page);
        let warnings = render_warnings(&path);
        assert!(warnings.is_empty(), "{page}:\n{warnings}");
    }
}

#[test]
fn completions_parse() {
    let root = xtask::workspace_root().join(xtask::COMPLETIONS_DIR);
    // bash is always there; zsh and fish are checked where installed.
    let shells: [(&str, &[&str], &str); 3] = [
        ("bash", &["-n"], ".bash"),
        ("zsh", &["-n"], "_"),
        ("fish", &["--no-execute"], ".fish"),
    ];
    for (shell, args, marker) in shells {
        if shell != "bash" && !has_program(shell) {
            eprintln!("{shell} is not installed: its completions are not parsed");
            continue;
        }
        for program in ["stratafs", "stratafs-mount"] {
            let file = if marker == "_" {
                format!("_{program}")
            } else {
                format!("{program}{marker}")
            };
            let out = Command::new(shell)
                .args(args)
                .arg(root.join(&file))
                .output()
                .unwrap();
            assert!(out.status.success(), "{shell} {file}: {out:?}");
        }
    }
}
