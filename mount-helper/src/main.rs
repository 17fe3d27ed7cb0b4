//! `stratafs-mount`: the layer store and container helper around the stratafs daemon.
//!
//! It imports OCI images and docker-archives into a store of shared, content-addressed
//! layers, prepares an upper/work pair per container, mounts containers with the daemon,
//! and turns a container's changes back into an image layer (`diff`, `commit`, `export`).
//! Every error is one line, `stratafs-mount: COMMAND: PROBLEM`, and exit status 1 (2 for a
//! bad command line).

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
mod mounts;
mod source;
mod store;
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
    let store = Store::open(&root, access(&cli.command), rootless)?;
    Ok(match &cli.command {
        Cmd::Import {
            path,
            tag,
            reference,
        } => {
            let (img, tag) = import::run(&store, path, tag.as_deref(), reference.as_deref())?;
            vec![match tag {
                Some(t) => format!("imported {} as {t}", img.id),
                None => format!("imported {}", img.id),
            }]
        }
        Cmd::Create { name, image } => {
            let c = containers::create(&store, name, image)?;
            vec![format!("created {} from {}", c.name, c.image)]
        }
        Cmd::Mount { name, target } => {
            let t = mounts::mount(&store, name, target.as_deref(), cli.daemon.as_deref())?;
            vec![t.display().to_string()]
        }
        Cmd::Umount { name } => {
            mounts::umount(&store, name)?;
            Vec::new()
        }
        Cmd::Rm { name } => {
            containers::remove(&store, name)?;
            Vec::new()
        }
        Cmd::Ls => images::ls(&store)?,
        Cmd::Rmi { image } => vec![images::rmi(&store, image)?],
        Cmd::Gc => vec![images::gc(&store)?],
        Cmd::Diff { name } => diff::run(&store, name)?,
        Cmd::Commit { name, tag } => {
            let id = commit::run(&store, name, tag)?;
            vec![format!("committed {id} as {tag}")]
        }
        Cmd::Export { image, oci } => {
            export::run(&store, image, oci)?;
            Vec::new()
        }
        Cmd::Inspect { target, path } => inspect::run(&store, target, path)?,
    })
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
            eprintln!("stratafs-mount: {}: {e}", cli.command.name());
            std::process::exit(1);
        }
    }
}
