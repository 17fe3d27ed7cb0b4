// SPDX-License-Identifier: MIT OR Apache-2.0
//! `cargo xtask docs [--check]`: writes the man pages and shell completions (or, with
//! `--check`, fails if a checked-in one differs from what the clap definitions give).

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask docs [--check]

  docs          write docs/man/*.{1,8} and completions/* from the clap definitions
  docs --check  exit 1 if a checked-in file differs from what would be written
";

fn docs(check: bool) -> Result<bool, String> {
    let root = xtask::workspace_root();
    let files = xtask::generate().map_err(|e| format!("rendering: {e}"))?;
    let stale = xtask::stale(&root, &files);
    if check {
        for path in &stale {
            eprintln!("xtask: {path} does not match the command line: run `cargo xtask docs`");
        }
        return Ok(stale.is_empty());
    }
    for g in files.iter().filter(|g| stale.contains(&g.path)) {
        let path = root.join(&g.path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(&path, &g.contents).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", g.path);
    }
    Ok(true)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args[..] {
        ["docs"] => docs(false),
        ["docs", "--check"] => docs(true),
        ["-h" | "--help"] => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
