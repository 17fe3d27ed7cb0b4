//! `stratafs-mount`: the layer store and container helper around the stratafs daemon.
//!
//! It imports OCI images and docker-archives into a store of shared, content-addressed
//! layers, prepares an upper/work pair per container, mounts containers with the daemon,
//! and turns a container's changes back into an image layer (`diff`, `commit`, `export`).
//! Every error is one line, `stratafs-mount: COMMAND: PROBLEM`, and exit status 1 (2 for a
//! bad command line).
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

mod cli;
mod commit;
mod containers;
mod diff;
mod digest;
mod error;
mod export;
mod images;
mod import;
mod inspect;
mod limits;
mod mounts;
mod source;
mod store;
mod tree;
mod unpack;
mod view;

use clap::Parser;

use cli::{Cli, Cmd};
use error::Result;
use store::{Access, Store};

fn access(cmd: &Cmd) -> Access {
    match cmd {
        Cmd::Ls | Cmd::Diff { .. } | Cmd::Export { .. } | Cmd::Inspect { .. } => Access::Read,
        _ => Access::Write,
    }
}

fn run(cli: &Cli) -> Result<Vec<String>> {
    let rootless = cli.rootless || !rustix::process::geteuid().is_root();
    let root = cli
        .store
        .clone()
        .unwrap_or_else(|| store::default_root(rootless));
    // Each command locks the store when it opens it; import first reads and checks its
    // source, so that a source that fails or blocks holds up no other command.
    let open = || Store::open(&root, access(&cli.command), rootless);
    Ok(match &cli.command {
        Cmd::Import {
            path,
            tag,
            reference,
            max_layer_size,
        } => {
            let prepared = import::prepare(path, tag.as_deref(), reference.as_deref())?;
            let (img, tag) = import::run(&open()?, prepared, *max_layer_size)?;
            vec![match tag {
                Some(t) => format!("imported {} as {t}", img.id),
                None => format!("imported {}", img.id),
            }]
        }
        Cmd::Create { name, image } => {
            let c = containers::create(&open()?, name, image)?;
            vec![format!("created {} from {}", c.name, c.image)]
        }
        Cmd::Mount {
            name,
            target,
            suid,
            dev,
            redirect_dir,
            metacopy,
        } => {
            let flags = mounts::MountFlags {
                suid: *suid,
                dev: *dev,
                redirect_dir: *redirect_dir,
                metacopy: *metacopy,
            };
            let t = mounts::mount(
                &open()?,
                name,
                target.as_deref(),
                cli.daemon.as_deref(),
                flags,
            )?;
            vec![t.display().to_string()]
        }
        Cmd::Umount { name } => {
            mounts::umount(&open()?, name)?;
            Vec::new()
        }
        Cmd::Rm { name } => {
            containers::remove(&open()?, name)?;
            Vec::new()
        }
        Cmd::Ls => images::ls(&open()?)?,
        Cmd::Rmi { image } => vec![images::rmi(&open()?, image)?],
        Cmd::Gc => vec![images::gc(&open()?)?],
        Cmd::Diff { name } => diff::run(&open()?, name)?,
        Cmd::Commit { name, tag } => {
            let id = commit::run(&open()?, name, tag)?;
            vec![format!("committed {id} as {tag}")]
        }
        Cmd::Export { image, oci } => {
            export::run(&open()?, image, oci)?;
            Vec::new()
        }
        Cmd::Inspect { target, path } => inspect::run(&open()?, target, path)?,
    })
}

/// The longest error line printed (characters after the command's name).
const MAX_ERROR_LINE: usize = 1000;

/// An error as one short line: any line breaks become spaces and a message longer than
/// [`MAX_ERROR_LINE`] is cut. Names from an archive are cut where they are quoted already;
/// this also bounds what other layers (JSON parsers, the system) put in a message.
fn one_line(e: &error::Error) -> String {
    let s: String = e
        .to_string()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() <= MAX_ERROR_LINE {
        return s;
    }
    let cut: String = s.chars().take(MAX_ERROR_LINE).collect();
    format!("{cut}... (cut)")
}

fn main() {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
        }
        Err(e) => {
            eprintln!("stratafs-mount: {}: {}", cli.command.name(), one_line(&e));
            std::process::exit(1);
        }
    }
}
