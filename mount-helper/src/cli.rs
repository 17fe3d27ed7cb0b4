//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Keep image layers in a shared store, arrange them for containers, and mount them with
/// the stratafs daemon.
#[derive(Parser, Debug)]
#[command(name = "stratafs-mount", version, about)]
pub struct Cli {
    /// The store directory [default: /var/lib/stratafs as root, else
    /// $XDG_DATA_HOME/stratafs].
    #[arg(long, global = true, env = "STRATAFS_STORE")]
    pub store: Option<PathBuf>,
    /// The stratafs daemon to mount with [default: next to this program, else on PATH].
    #[arg(long, global = true, env = "STRATAFS_DAEMON")]
    pub daemon: Option<PathBuf>,
    /// Write the unprivileged formats even as root: `.wh.` whiteouts, no device nodes, no
    /// owners (what an ordinary user gets anyway).
    #[arg(long, global = true)]
    pub rootless: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Import an image: an OCI layout directory, an OCI archive or a docker-archive tar.
    Import {
        /// The layout directory or archive.
        path: PathBuf,
        /// Tag the image with this name (default: the name the archive gives it).
        #[arg(long)]
        tag: Option<String>,
        /// Which image of a source holding several (its ref name or repo tag).
        #[arg(long = "ref")]
        reference: Option<String>,
        /// The most a layer may unpack to (`20GiB`, `500MB`, bytes): its uncompressed tar,
        /// and its files with sparse holes counted [default: 100 times the layer's blob,
        /// at least 1 GiB].
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_layer_size: Option<u64>,
    },
    /// Create a container from an image.
    Create {
        /// The container's name.
        name: String,
        /// A tag or an image id.
        image: String,
    },
    /// Mount a container's root filesystem (at TARGET, or the container's own directory).
    Mount {
        /// The container.
        name: String,
        /// Where to mount it.
        target: Option<PathBuf>,
        /// Let setuid and setgid bits and file capabilities of the image take effect (the
        /// default is `nosuid`).
        #[arg(long)]
        suid: bool,
        /// Let device nodes be opened (the default is `nodev`).
        #[arg(long)]
        dev: bool,
        /// Rename directories of the image in place (`redirect_dir=on`): `mv` of an image
        /// directory costs one rename instead of a copy of its tree. `commit` and `diff`
        /// write such a directory out in full.
        #[arg(long)]
        redirect_dir: bool,
        /// Copy up the metadata alone when a file of the image has its mode, owner, times
        /// or xattrs changed (`metacopy=on`, which turns `redirect_dir=on` too): `chown -R`
        /// over an image copies no data. `commit` writes such a file with its data.
        #[arg(long)]
        metacopy: bool,
    },
    /// Unmount a container.
    Umount {
        /// The container.
        name: String,
    },
    /// Remove a container (not while mounted).
    Rm {
        /// The container.
        name: String,
    },
    /// List images and containers (a mounted container with its daemon: pid, uptime,
    /// requests, nodes, open handles, copy-ups, memory).
    Ls,
    /// Remove an image, or one of its tags.
    Rmi {
        /// A tag or an image id.
        image: String,
    },
    /// Remove layers and blobs that nothing uses.
    Gc,
    /// Show what a container changed: A(dded), C(hanged), D(eleted) paths.
    Diff {
        /// The container.
        name: String,
    },
    /// Turn a container's changes into a new image.
    Commit {
        /// The container.
        name: String,
        /// The new image's tag.
        #[arg(long)]
        tag: String,
    },
    /// Write an image as an OCI image layout directory.
    Export {
        /// A tag or an image id.
        image: String,
        /// The directory to write (must not exist, or be empty).
        #[arg(long)]
        oci: PathBuf,
    },
    /// Show which layer provides a path, and what it shadows.
    Inspect {
        /// A container or an image.
        target: String,
        /// A path in its root filesystem.
        path: String,
    },
}

impl Cmd {
    /// The command's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Cmd::Import { .. } => "import",
            Cmd::Create { .. } => "create",
            Cmd::Mount { .. } => "mount",
            Cmd::Umount { .. } => "umount",
            Cmd::Rm { .. } => "rm",
            Cmd::Ls => "ls",
            Cmd::Rmi { .. } => "rmi",
            Cmd::Gc => "gc",
            Cmd::Diff { .. } => "diff",
            Cmd::Commit { .. } => "commit",
            Cmd::Export { .. } => "export",
            Cmd::Inspect { .. } => "inspect",
        }
    }
}

/// A size: bytes, or a number with a unit (`KB`, `MiB`, `GiB`, `TiB`...; `K`, `M`, `G` are
/// powers of 1000).
fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size: {e}"))
}
