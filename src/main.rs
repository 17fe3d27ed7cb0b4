//! The `stratafs` daemon: `stratafs [SOURCE] MOUNTPOINT -o lowerdir=...[,upperdir=...,workdir=...]`.
#![warn(missing_docs, missing_debug_implementations)]

use std::process::ExitCode;

use stratafs::config::{self, Invocation};

const USAGE: &str = "\
usage: stratafs [SOURCE] MOUNTPOINT -o lowerdir=DIR[:DIR...][,upperdir=DIR,workdir=DIR][,OPTS]
       stratafs stats MOUNTPOINT [--json] [--watch SECONDS]
       stratafs --demo

Mounts the union of the lower layers (topmost first) under the optional writable upper layer,
with the semantics and on-disk format of the kernel's overlayfs.

  -o OPTS        comma-separated options (may be repeated); see README.md for the list
  -f             stay in the foreground
  -d, -o debug   log every request (implies -f); RUST_LOG also selects what is logged
  -o log=PATH    log to a file once detached (log=syslog: to /dev/log); warnings by default
  -h, --help     this text
  -V, --version  print the version
  --demo         mount the sample layer stack shipped with the sources and show it
";

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    // `stratafs stats ...`: a command to a live daemon, not a mount.
    if let Some(code) = stratafs::control::cli::run(&args) {
        return code;
    }
    let inv = match config::parse_args(args) {
        Ok(inv) => inv,
        Err(e) => {
            eprintln!("stratafs: {e}");
            return ExitCode::from(2);
        }
    };
    match inv {
        Invocation::Help => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Invocation::Version => {
            println!("stratafs version {}", env!("CARGO_PKG_VERSION"));
            println!("FUSE library: fuser 0.18 (pure Rust)");
            ExitCode::SUCCESS
        }
        Invocation::Demo => {
            let _ = stratafs::logging::init(false, &config::LogTarget::Stderr);
            match stratafs::demo::run() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!(
                        "stratafs: demo: {}",
                        config::one_line(&config::strip_os_error_codes(&e.to_string()))
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Invocation::Mount(cfg) => {
            for key in &cfg.unknown {
                eprintln!(
                    "stratafs: warning: unknown option '{}' ignored",
                    config::one_line(key)
                );
            }
            if let Some(line) = stratafs::daemon::clear_dead_mount(&cfg.mountpoint) {
                eprintln!("stratafs: {}", config::one_line(&line));
            }
            // Error lines carry the strerror text only: the messages are built so, and this
            // keeps any OS error text that slipped through to that form.
            if let Err(e) = config::validate(&cfg) {
                eprintln!("stratafs: {}", config::strip_os_error_codes(&e.to_string()));
                return ExitCode::FAILURE;
            }
            if let Err(e) = stratafs::logging::init(cfg.debug, &cfg.log) {
                eprintln!("stratafs: {}", config::one_line(&e));
                return ExitCode::FAILURE;
            }
            if cfg.log != config::LogTarget::Stderr {
                // Into the log as well, where an operator of a detached daemon looks.
                for key in &cfg.unknown {
                    tracing::warn!(option = %config::one_line(key), "unknown option ignored");
                }
            }
            match stratafs::daemon::run(&cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("stratafs: {}", config::strip_os_error_codes(&e.to_string()));
                    ExitCode::FAILURE
                }
            }
        }
    }
}
