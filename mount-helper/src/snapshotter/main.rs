//! `stratafs-snapshotter`: containerd's snapshots API for stratafs, as a proxy plugin.
//! The work is in the library (`stratafs_mount::snapshotter`); this parses the command line,
//! sets up logging and the async runtime, and reports a failure as one line on stderr.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use stratafs_mount::snapshotter::{self, cli::Cli, store::Options, Store};

fn run(cli: &Cli) -> Result<(), String> {
    let rootless = !rustix::process::geteuid().is_root();
    let root = cli
        .root_dir(rootless)
        .ok_or("no --root given, and neither XDG_DATA_HOME nor HOME is set")?;
    let address = cli
        .socket(rootless)
        .ok_or("no --address given, and XDG_RUNTIME_DIR is not set")?;
    let opts = Options {
        redirect_dir: cli.redirect_dir,
        metacopy: cli.metacopy,
    };
    let store = Store::open(&root, opts).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("start the async runtime: {e}"))?;
    runtime
        .block_on(snapshotter::serve(Arc::new(store), &address))
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("stratafs-snapshotter: {e}");
            ExitCode::FAILURE
        }
    }
}
