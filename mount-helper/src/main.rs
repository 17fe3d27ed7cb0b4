//! `stratafs-mount`: the layer-store and container helper around the stratafs daemon.
//!
//! The store, import, commit and diff commands arrive with their own issue; today the
//! binary only reports what it is, so that the workspace and its packaging are in place.

use clap::Parser;

/// Arrange image layers for containers and mount them with the stratafs daemon.
#[derive(Parser, Debug)]
#[command(name = "stratafs-mount", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("stratafs-mount: no command given (see --help)");
    std::process::exit(2);
}
