// SPDX-License-Identifier: MIT OR Apache-2.0
//! Development tasks of the stratafs workspace (`cargo xtask ...`, an alias for `cargo run -p
//! xtask --`).
//!
//! `docs` generates the man pages (`docs/man/`) and the shell completions (`completions/`) of
//! `stratafs`, `stratafs-mount` and `stratafs-snapshotter` from their clap definitions: the
//! helper's own (`mount-helper/src/cli.rs`, `mount-helper/src/snapshotter/cli.rs`), and for the daemon, whose fuse-overlayfs command line is
//! parsed by hand, a clap description of it ([`daemon_cli`]). The files are checked in; the
//! tests in `xtask/tests/` regenerate them and fail when one no longer matches.

pub mod daemon_cli;
pub mod man;

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

/// One generated file: its path from the workspace root, and its contents.
pub struct Generated {
    /// Relative to the workspace root.
    pub path: String,
    /// What it should hold.
    pub contents: Vec<u8>,
}

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Where the man pages go, from the workspace root.
pub const MAN_DIR: &str = "docs/man";
/// Where the completions go, from the workspace root.
pub const COMPLETIONS_DIR: &str = "completions";

/// Every generated file, rendered in memory.
///
/// # Errors
/// Only if rendering into memory fails, which it does not.
pub fn generate() -> std::io::Result<Vec<Generated>> {
    let mut out = vec![
        Generated {
            path: format!("{MAN_DIR}/stratafs.8"),
            contents: man::daemon_page()?,
        },
        Generated {
            path: format!("{MAN_DIR}/stratafs-mount.1"),
            contents: man::mount_helper_page()?,
        },
        Generated {
            path: format!("{MAN_DIR}/stratafs-snapshotter.8"),
            contents: man::snapshotter_page()?,
        },
    ];
    let programs = [
        ("stratafs", daemon_cli::command()),
        ("stratafs-mount", stratafs_mount::cli::Cli::command()),
        (
            "stratafs-snapshotter",
            stratafs_mount::snapshotter::cli::Cli::command(),
        ),
    ];
    for (name, cmd) in programs {
        for (shell, file) in [
            (Shell::Bash, format!("{name}.bash")),
            (Shell::Zsh, format!("_{name}")),
            (Shell::Fish, format!("{name}.fish")),
        ] {
            let mut contents = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), name, &mut contents);
            out.push(Generated {
                path: format!("{COMPLETIONS_DIR}/{file}"),
                contents,
            });
        }
    }
    Ok(out)
}

/// The generated files whose checked-in copy under `root` differs (or is missing).
pub fn stale(root: &Path, files: &[Generated]) -> Vec<String> {
    files
        .iter()
        .filter(|g| std::fs::read(root.join(&g.path)).ok().as_deref() != Some(&g.contents[..]))
        .map(|g| g.path.clone())
        .collect()
}
