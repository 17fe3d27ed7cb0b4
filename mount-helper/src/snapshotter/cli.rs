//! The command line of `stratafs-snapshotter`.

use std::path::PathBuf;

use clap::Parser;

/// containerd's snapshots API for stratafs, as a proxy plugin.
#[derive(Debug, Parser)]
#[command(
    name = "stratafs-snapshotter",
    version,
    about = "Serve containerd's snapshots API with stratafs union mounts (a proxy plugin)",
    long_about = concat!(
        "Serve containerd's snapshots API (containerd.services.snapshots.v1) on a unix socket, ",
        "so that containerd keeps image layers and container filesystems with stratafs.\n\n",
        "Snapshots live under --root: ROOT/snapshots/ID/fs is each layer, ROOT/metadata.db ",
        "their records. A snapshot without a parent is mounted as a bind mount of its ",
        "directory, a view of one committed layer as a read-only bind mount, and everything ",
        "else as a `fuse3.stratafs` union (lowerdir=, upperdir=, workdir=), which containerd ",
        "mounts through mount.fuse3 (package fuse3): the `stratafs` daemon must be on ",
        "containerd's PATH.\n\n",
        "Tell containerd about it in /etc/containerd/config.toml:\n\n",
        "  [proxy_plugins.stratafs]\n",
        "    type = \"snapshot\"\n",
        "    address = \"/run/stratafs-snapshotter/grpc.sock\"\n\n",
        "then run `ctr run --snapshotter stratafs ...`; on a Kubernetes node, name it in the ",
        "CRI plugin:\n\n",
        "  [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n",
        "    snapshotter = \"stratafs\"\n\n",
        "It logs to stderr (RUST_LOG or --log-level) and stops cleanly on SIGTERM or SIGINT, ",
        "removing its socket. See docs/SNAPSHOTTER.md."
    ),
    after_help = concat!(
        "Examples:\n",
        "  stratafs-snapshotter                     # as root, with the defaults above\n",
        "  stratafs-snapshotter --root /srv/snapshots --address /run/stratafs-snapshotter/grpc.sock\n",
        "  stratafs-snapshotter --log-level debug   # every call that fails, and why"
    )
)]
pub struct Cli {
    /// Where snapshots and their metadata live [default: /var/lib/stratafs-snapshotter as
    /// root, else $XDG_DATA_HOME/stratafs-snapshotter]
    #[arg(long, value_name = "DIR", env = "STRATAFS_SNAPSHOTTER_ROOT")]
    pub root: Option<PathBuf>,

    /// The unix socket to serve on, the `address` of containerd's proxy_plugins entry
    /// [default: /run/stratafs-snapshotter/grpc.sock as root, else
    /// $XDG_RUNTIME_DIR/stratafs-snapshotter/grpc.sock]
    #[arg(long, value_name = "SOCK", env = "STRATAFS_SNAPSHOTTER_ADDRESS")]
    pub address: Option<PathBuf>,

    /// Add `redirect_dir=on` to every union mount (renames of lower directories; off by
    /// default, as in containerd's overlayfs snapshotter)
    #[arg(long)]
    pub redirect_dir: bool,

    /// Add `metacopy=on` to every union mount (copy-up of metadata alone; off by default)
    #[arg(long)]
    pub metacopy: bool,

    /// What to log: error, warn, info, debug or trace, or a RUST_LOG-style filter (RUST_LOG
    /// wins when set)
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
}

fn home_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(fallback)),
    }
}

impl Cli {
    /// `--root`, or the default for this user.
    pub fn root_dir(&self, rootless: bool) -> Option<PathBuf> {
        if let Some(r) = &self.root {
            return Some(r.clone());
        }
        if !rootless {
            return Some(PathBuf::from("/var/lib/stratafs-snapshotter"));
        }
        home_dir("XDG_DATA_HOME", ".local/share").map(|d| d.join("stratafs-snapshotter"))
    }

    /// `--address`, or the default for this user.
    pub fn socket(&self, rootless: bool) -> Option<PathBuf> {
        if let Some(a) = &self.address {
            return Some(a.clone());
        }
        if !rootless {
            return Some(PathBuf::from("/run/stratafs-snapshotter/grpc.sock"));
        }
        std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|v| !v.is_empty())
            .map(|d| PathBuf::from(d).join("stratafs-snapshotter/grpc.sock"))
    }
}
