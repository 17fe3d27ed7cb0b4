//! The commands of the `stratafs` binary that talk to a live daemon: `stratafs stats` and
//! `stratafs refresh`. Their
//! clap definitions are used both to parse them and, by xtask, for the man page and the
//! shell completions.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{value_parser, Arg, ArgAction, ArgMatches, Command, ValueHint};

use super::{Channel, ControlError};

/// The names of the commands: `stratafs NAME ...` is one of them unless an `-o` follows
/// (then it is a mount whose SOURCE is that word).
pub const COMMANDS: &[&str] = &["stats", "refresh"];

fn mountpoint_arg() -> Arg {
    Arg::new("mountpoint")
        .value_name("MOUNTPOINT")
        .required(true)
        .value_parser(value_parser!(PathBuf))
        .value_hint(ValueHint::DirPath)
        .help("The mount point of a stratafs mount.")
}

/// `stratafs stats MOUNTPOINT [--json] [--watch SECONDS]`.
pub fn stats_command() -> Command {
    Command::new("stats")
        .about("Show the counters and gauges of the daemon serving a mount")
        .long_about(
            "Asks the daemon serving MOUNTPOINT (through an ioctl on the mount: only the user \
             who mounted it, or root, may ask) for its statistics and prints them as a \
             table: the transport and passthrough state, resident memory, the node table \
             and its prunes, open files, the directory-fd, listing and negative caches with \
             their hit rates, copy-ups, and per operation the requests, errors and latency \
             percentiles since the mount (taken from power-of-two buckets: a percentile is \
             the bucket's upper bound). SIGUSR1 makes the daemon write the same table to its \
             log.",
        )
        .arg(mountpoint_arg())
        .arg(
            Arg::new("json")
                .long("json")
                .action(ArgAction::SetTrue)
                .help("Print JSON instead of the table (one object per line with --watch)."),
        )
        .arg(
            Arg::new("watch")
                .long("watch")
                .value_name("SECONDS")
                .value_parser(parse_interval)
                .help(
                    "Print what happened in every SECONDS (rates per second, latencies of \
                     the interval) until interrupted.",
                ),
        )
}

/// `stratafs refresh MOUNTPOINT [PATH...]`.
pub fn refresh_command() -> Command {
    Command::new("refresh")
        .about("Make a mount show layers changed behind its back")
        .long_about(
            "Makes the daemon serving MOUNTPOINT and the kernel forget what they cache about \
             the PATHs and everything below them (the whole mount without PATH): entries, \
             attributes, listings, names cached as missing, directory fds; the next access \
             then sees the layers as they are now. Each node is resolved again: one whose \
             object is gone from its name answers ENOENT (or ESTALE, and the kernel looks \
             the name up again), never another object; open files keep the object they \
             opened. Waits until both are done; only the user who mounted it, or root, may \
             ask. docs/SEMANTICS.md has the details.",
        )
        .arg(mountpoint_arg())
        .arg(
            Arg::new("paths")
                .value_name("PATH")
                .num_args(0..)
                .value_parser(value_parser!(PathBuf))
                .value_hint(ValueHint::AnyPath)
                .help(
                    "What to refresh: a path in the mount, relative to its root (or absolute, \
                     under MOUNTPOINT).",
                ),
        )
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.01..=86400.0).contains(&v) => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("{s:?} is not a number of seconds (0.01 to 86400)")),
    }
}

/// Runs the command `args` (without argv\[0\]) names, if it names one (see [`COMMANDS`]);
/// `None` for a mount's command line.
pub fn run(args: &[OsString]) -> Option<ExitCode> {
    let first = args.first()?.to_str()?;
    if !COMMANDS.contains(&first) {
        return None;
    }
    let mount_option = |a: &OsString| a.as_encoded_bytes().starts_with(b"-o");
    if args.iter().any(mount_option) {
        return None;
    }
    let cmd = if first == "refresh" {
        refresh_command()
    } else {
        stats_command()
    };
    let cmd = cmd.bin_name(format!("stratafs {first}"));
    let m = match cmd.try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return Some(ExitCode::from(if e.use_stderr() { 2 } else { 0 }));
        }
    };
    let r = if first == "refresh" {
        refresh(&m)
    } else {
        stats(&m)
    };
    Some(match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "stratafs: {first}: {}",
                crate::config::one_line(&e.to_string())
            );
            ExitCode::FAILURE
        }
    })
}

fn stats(m: &ArgMatches) -> Result<(), ControlError> {
    let mountpoint = m
        .get_one::<PathBuf>("mountpoint")
        .cloned()
        .unwrap_or_default();
    let json = m.get_flag("json");
    let ch = Channel::open(&mountpoint)?;
    let mut last = ch.stats()?;
    let Some(every) = m.get_one::<Duration>("watch").copied() else {
        if json {
            let text = serde_json::to_string_pretty(&last).unwrap_or_default();
            println!("{text}");
        } else {
            print!("{}", last.table());
        }
        return Ok(());
    };
    let mut out = std::io::stdout();
    loop {
        std::thread::sleep(every);
        let now = ch.stats()?;
        let text = if json {
            serde_json::to_string(&now).unwrap_or_default() + "\n"
        } else {
            now.rates_since(&last)
        };
        // A closed pipe (`| head`) ends the watch.
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok(());
        }
        last = now;
    }
}

fn refresh(m: &ArgMatches) -> Result<(), ControlError> {
    let mountpoint = m
        .get_one::<PathBuf>("mountpoint")
        .cloned()
        .unwrap_or_default();
    let ch = Channel::open(&mountpoint)?;
    let mut paths = Vec::new();
    for p in m.get_many::<PathBuf>("paths").into_iter().flatten() {
        paths.push(in_mount(&mountpoint, p)?);
    }
    ch.refresh(&paths)?;
    Ok(())
}

/// `path` as the control channel names it: relative to the mount's root, `/`-separated.
/// A relative path is taken from the root; an absolute one must lie under `mountpoint`.
/// `..` is resolved by name, and may not climb above the root.
fn in_mount(mountpoint: &std::path::Path, path: &std::path::Path) -> Result<Vec<u8>, ControlError> {
    use std::path::Component;
    let outside = || ControlError::Open {
        path: path.to_path_buf(),
        error: std::io::Error::other(format!("not inside the mount {}", mountpoint.display())),
    };
    let rel = if path.is_absolute() {
        let root = std::fs::canonicalize(mountpoint).map_err(|error| ControlError::Open {
            path: mountpoint.to_path_buf(),
            error,
        })?;
        let abs = normalize(path).ok_or_else(outside)?;
        abs.strip_prefix(&root)
            .map_err(|_| outside())?
            .to_path_buf()
    } else {
        normalize(path).ok_or_else(outside)?
    };
    let mut out: Vec<u8> = Vec::new();
    for c in rel.components() {
        if let Component::Normal(n) = c {
            if !out.is_empty() {
                out.push(b'/');
            }
            out.extend_from_slice(n.as_encoded_bytes());
        }
    }
    Ok(out)
}

/// `path` with `.` and `..` resolved by name; `None` when `..` climbs above its start.
fn normalize(path: &std::path::Path) -> Option<PathBuf> {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() || out.as_os_str().is_empty() && path.is_absolute() {
                    return None;
                }
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_are_named_from_the_mount_root() {
        let m = std::env::temp_dir();
        let root = std::fs::canonicalize(&m).unwrap();
        let rel =
            |p: &str| String::from_utf8(in_mount(&m, std::path::Path::new(p)).unwrap()).unwrap();
        assert_eq!(rel("etc/passwd"), "etc/passwd");
        assert_eq!(rel("./a/../b/"), "b");
        assert_eq!(rel(""), "");
        assert_eq!(rel(&root.join("x/y").display().to_string()), "x/y");
        assert_eq!(rel(&root.display().to_string()), "");
        assert!(in_mount(&m, std::path::Path::new("/elsewhere/x")).is_err());
        assert!(in_mount(&m, std::path::Path::new("../x")).is_err());
    }
}
