// SPDX-License-Identifier: MIT OR Apache-2.0
//! A clap description of the daemon's command line.
//!
//! The daemon parses its argv by hand (`src/config/parse.rs`): its grammar is fuse-overlayfs's
//! (`-o` groups of `key[=value]` elements, options and positionals in any order), which clap
//! cannot parse. This [`command`] only *describes* it, for the man page and the shell
//! completions; [`MOUNT_OPTIONS`] documents every `-o` key, and the tests check that its keys
//! are exactly those the parser accepts (`stratafs::config::OPTION_KEYS`, `KERNEL_FLAG_KEYS`,
//! `IGNORED_KEYS`, and the `x-*` prefix).

use clap::builder::PossibleValue;
use clap::{Arg, ArgAction, Command, ValueHint};

/// One row of the `-o` option table: one key, or several keys documented together.
pub struct MountOption {
    /// The keys, as the parser matches them (`x-*` stands for every key starting with `x-`).
    pub keys: &'static [&'static str],
    /// What follows `key=`, if the option takes a value (`0|1`, `DIR[:DIR...]`).
    pub value: Option<&'static str>,
    /// What it does.
    pub help: &'static str,
    /// Offered by the shell completions as values of `-o` (the options mount(8) and fstab
    /// pass, which stratafs ignores, are not).
    pub complete: bool,
}

const fn opt(
    keys: &'static [&'static str],
    value: Option<&'static str>,
    help: &'static str,
) -> MountOption {
    MountOption {
        keys,
        value,
        help,
        complete: true,
    }
}

/// Every `-o` key, in the order the man page lists them.
pub const MOUNT_OPTIONS: &[MountOption] = &[
    opt(
        &["lowerdir"],
        Some("DIR[:DIR...][::DATADIR...]"),
        "The lower layers, topmost first (required). \\: is a literal colon. Layers after \
         a :: are data-only: never part of the tree, only the data of lower metacopy files \
         that redirect there by absolute path (composefs images); no ordinary layer may \
         follow one.",
    ),
    opt(
        &["lowerdir+"],
        Some("DIR"),
        "Appends one lower layer, taken as written (the kernel's new mount API form; \
         repeatable, not after lowerdir= nor after a datadir+).",
    ),
    opt(
        &["datadir+"],
        Some("DIR"),
        "Appends one data-only lower layer (repeatable, not after lowerdir=; at least one \
         ordinary lower layer is required).",
    ),
    opt(
        &["upperdir"],
        Some("DIR"),
        "The writable layer; without it the mount is read-only.",
    ),
    opt(
        &["workdir"],
        Some("DIR"),
        "An empty directory on the upper layer's filesystem, for staging copy-ups \
         (required with upperdir).",
    ),
    opt(
        &["fsync"],
        Some("0|1"),
        "0: skip fsync on copy-up and ignore fsync requests (default 1).",
    ),
    opt(
        &["volatile"],
        None,
        "Like fsync=0, whatever order they come in.",
    ),
    opt(
        &["timeout"],
        Some("SECONDS"),
        "How long the kernel may cache entries and attributes (default: practically forever).",
    ),
    opt(
        &["node_limit"],
        Some("N"),
        "How many inodes the daemon keeps before it asks the kernel (Linux 6.16 or later) to \
         forget unused ones (default 160000, about 40 MiB of daemon memory; at least 16). \
         stratafs only.",
    ),
    opt(
        &["udba"],
        Some("none|notify"),
        "What the daemon does about changes made to the layers behind the mount (aufs's name). \
         none (default): nothing; they show after 'stratafs refresh' (the kernel's overlayfs \
         calls them undefined). notify: the daemon watches the layer directories it has looked \
         into (fanotify where it may, else inotify) and refreshes the names that change \
         there, soon after each change. stratafs only.",
    ),
    opt(
        &["udba_watches"],
        Some("N"),
        "With udba=notify, the most layer directories watched at a time (default 8192); past \
         it the directories watched longest ago are no longer watched, and changes there need \
         'stratafs refresh'. stratafs only.",
    ),
    opt(
        &["xino"],
        Some("auto|on|off"),
        "How inode numbers are made unique across layers on several filesystems \
         (default auto).",
    ),
    opt(&["ino32_t"], None, "Fold inode numbers into 32 bits."),
    opt(
        &["static_nlink"],
        None,
        "Directories always report a link count of 1.",
    ),
    opt(
        &["noxattrs"],
        Some("0|1"),
        "Extended attribute requests fail with ENOTSUP (noxattrs alone or noxattrs=1; \
         noxattrs=0 keeps them).",
    ),
    opt(
        &["fsname"],
        Some("NAME"),
        "The source shown in /proc/mounts when there is no SOURCE argument.",
    ),
    opt(&["debug"], None, "The same as -d."),
    opt(
        &["log"],
        Some("PATH|syslog"),
        "Where the daemon logs once it has detached: appended to the file PATH, or sent to the \
         local syslog socket (/dev/log, facility daemon). Default: stderr, which a detached \
         daemon no longer has. RUST_LOG selects what is logged; warnings are by default.",
    ),
    opt(
        &["allow_other", "allow_root"],
        None,
        "Let other users (or root) use a mount made by an ordinary user; a mount made by root \
         is open to all.",
    ),
    opt(
        &["default_permissions"],
        None,
        "Accepted; permission checks are always done by the kernel.",
    ),
    opt(
        &[
            "ro", "rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime",
            "dirsync", "sync", "async",
        ],
        None,
        "Mount flags. As root the mount is nodev,suid unless told otherwise (as libfuse and \
         fuse-overlayfs mount); otherwise always nodev,nosuid.",
    ),
    opt(
        &["uidmapping", "gidmapping"],
        Some("C:H:S[:C:H:S...]"),
        "Ids C to C+S stored in the layers are shown as H to H+S, and mapped back for new \
         files and chown. A stored id no range covers shows as 65534; a chown to an unmapped \
         id fails with EINVAL.",
    ),
    opt(
        &["squash_to_root"],
        None,
        "Show every file as owned by root; what is stored is unchanged.",
    ),
    opt(
        &["squash_to_uid", "squash_to_gid"],
        Some("N"),
        "Show every file as owned by uid (gid) N; what is stored is unchanged.",
    ),
    opt(
        &["xattr_permissions"],
        Some("0|1|2"),
        "Keep owner and mode in an xattr instead of the files' own (1: \
         security.fuseoverlayfs.override_stat, 2: user.containers.override_stat, as podman's \
         force_mask uses it): read from any layer, written on create, chown, chmod and \
         copy-up. 0 (default) turns it on when a layer root carries such an xattr.",
    ),
    opt(
        &["redirect_dir"],
        Some("on|off|follow|nofollow"),
        "Redirects the kernel wrote (renamed directories) are followed with on, follow and \
         off (the default), as the kernel's redirect_always_follow does; nofollow refuses to \
         look such a directory up (EPERM), and is the default with userxattr. With on, \
         renaming a directory with parts in a lower layer moves its upper copy alone, with a \
         redirect in the kernel's form and a whiteout at the old name; with the other values \
         such a rename fails with EXDEV.",
    ),
    opt(
        &["metacopy"],
        Some("on|off"),
        "on: chmod, chown, utimes, setxattr, link and rename of a lower regular file copy up \
         its metadata alone, as the kernel's metacopy=on does: a sparse upper file with an \
         overlay.metacopy xattr (and an overlay.redirect where its data is elsewhere), read \
         from the data below; the data follows at the first open for writing or truncate. \
         Metacopy files the kernel made are followed to their data. Turns redirect_dir=on \
         on, and is refused, in the kernel's words, with another redirect_dir value or with \
         userxattr; an unprivileged daemon (user.overlay.* xattrs) may use it, where the \
         kernel refuses it in a user namespace. off (default): a lookup of a metacopy file \
         fails with EPERM, as the kernel's.",
    ),
    opt(
        &["index"],
        Some("on|off"),
        "on: the names of a lower hard link stay one file (one st_ino, the true st_nlink) \
         after any of them is copied up, linked, unlinked or renamed over, through the \
         kernel's inodes index in WORKDIR/index (overlay.origin file handles, overlay.nlink), \
         which the kernel's index=on reads as it is. The upper root must belong to the first \
         lower layer and the index to the upper, else the mount is refused. Refused for an \
         unprivileged daemon (the kernel uses no index in a user namespace); ignored without \
         an upper layer. off (default): a copy-up of one name breaks the link.",
    ),
    opt(
        &["verity"],
        Some("off|on|require"),
        "on: the fs-verity digest a metacopy file records (overlay.metacopy) is checked \
         against its data at every open and before a copy-up: EIO where the data has no \
         fs-verity or another digest; a metadata copy-up records the digest of data with \
         fs-verity. require: also EIO for a metacopy file that records no digest, and a \
         copy-up of data without fs-verity copies the data. off (default): digests are \
         neither checked nor recorded. Metacopy files are followed only with metacopy=on \
         (or into data-only layers), as the kernel's.",
    ),
    opt(
        &["writeback"],
        Some("0|1"),
        "1 (default): where FUSE passthrough is not used, the kernel's writeback cache gathers \
         writes in the page cache. 0: every write reaches the daemon at once.",
    ),
    opt(
        &["passthrough"],
        Some("all|upper|off"),
        "Which regular files a root daemon opens in FUSE passthrough. all (default): every \
         file. upper: only files with an upper copy (handles on lower files follow a copy-up, \
         as on the kernel's overlayfs). off: none, the writeback cache is used instead. \
         stratafs only.",
    ),
    opt(
        &["io_uring"],
        Some("auto|on|off"),
        "How requests reach the daemon. on (also io_uring alone): FUSE over io_uring \
         (Linux 6.14+, once root has written Y to \
         /sys/module/fuse/parameters/enable_uring), one ring per CPU; where the \
         kernel does not offer it, /dev/fuse, with one line in the log saying why. auto \
         (default): the same, but only where passthrough is granted (a daemon run by \
         root); without it every byte goes through the daemon, and /dev/fuse serves \
         reads faster. off: /dev/fuse only. stratafs only.",
    ),
    opt(
        &["markers"],
        Some("auto|kernel|fuse-overlayfs"),
        "Which markers the upper layer gets. kernel: the kernel's alone, so the kernel's \
         overlayfs mounts the upper as it is. fuse-overlayfs: fuse-overlayfs's as well. auto \
         (default): fuse-overlayfs where the upper is one the kernel cannot mount as it is \
         anyway, else kernel. stratafs only.",
    ),
    opt(
        &["userxattr"],
        None,
        "Use the user.overlay.* names for the overlay's own xattrs (opaque directories, \
         xattr whiteouts, redirects) even as root, as the kernel's userxattr option does, so \
         that the upper layer can be shared with rootless kernel mounts. An unprivileged \
         daemon always uses them.",
    ),
    opt(
        &["noacl"],
        None,
        "Turn POSIX ACLs off: ACL xattrs get EOPNOTSUPP and are not enforced.",
    ),
    opt(
        &["threaded", "fast_ino"],
        Some("0|1"),
        "No-op: the daemon is always multi-threaded.",
    ),
    opt(
        &["plugins"],
        Some("A:B"),
        "No-op: accepted for compatibility with fuse-overlayfs.",
    ),
    opt(
        &["context"],
        Some("\"...\""),
        "No-op: accepted for compatibility with fuse-overlayfs.",
    ),
    MountOption {
        keys: stratafs::config::IGNORED_KEYS,
        value: None,
        help: "Silently ignored, with or without a value (mount(8), mount.fuse3 and fstab pass \
               these).",
        complete: false,
    },
    MountOption {
        keys: &["x-*"],
        value: None,
        help: "Silently ignored, with or without a value: fstab's options for other programs.",
        complete: false,
    },
];

/// The daemon's command line, described for clap_mangen and clap_complete.
pub fn command() -> Command {
    // Offered by the completions (hidden from the man page's
    // OPTIONS, which lists them under MOUNT OPTIONS instead).
    let keys = MOUNT_OPTIONS
        .iter()
        .filter(|o| o.complete)
        .flat_map(|o| o.keys.iter())
        .map(|k| PossibleValue::new(*k));
    Command::new("stratafs")
        .version(env!("CARGO_PKG_VERSION"))
        .about("union filesystem in user space with the semantics of the kernel's overlayfs")
        .long_about(
            "stratafs stacks read-only lower directories and an optional writable upper \
             directory into one merged tree, served over FUSE. It follows the Linux kernel's \
             overlayfs in its semantics and its on-disk format (whiteouts, opaque directories, \
             the work directory), reads the .wh. whiteout files of OCI image layers as \
             fuse-overlayfs does, and takes fuse-overlayfs's command line, so container \
             engines such as podman can run it in fuse-overlayfs's place (as containers/storage's \
             mount_program).\n\n\
             Without -f, the command returns only once the mount is live, leaving a daemon that \
             serves it. The daemon exits when the filesystem is unmounted (fusermount3 -u or \
             umount), and unmounts cleanly on SIGTERM, SIGINT or SIGHUP. SIGUSR1 makes it write \
             the table stratafs stats shows to its log (-o log=). The layers are opened \
             before the command returns: renaming them or lazily unmounting them afterwards \
             does not affect the mount.\n\n\
             Options and positionals may come in any order; -- ends the options.\n\n\
             stratafs stats asks the daemon of a live mount for its statistics, stratafs \
             refresh makes it show layers changed behind its back (see COMMANDS). A first \
             argument naming a command is a command only when no -o follows; otherwise it \
             is a mount's SOURCE.",
        )
        .override_usage(
            "stratafs [SOURCE] MOUNTPOINT -o lowerdir=DIR[:DIR...][,upperdir=DIR,workdir=DIR][,OPTS]\n\
             stratafs stats MOUNTPOINT [--json] [--watch SECONDS]\n\
             stratafs refresh MOUNTPOINT [PATH...]\n\
             stratafs --demo",
        )
        .disable_help_flag(true)
        .disable_version_flag(true)
        .subcommand(stratafs::control::cli::stats_command())
        .subcommand(stratafs::control::cli::refresh_command())
        .args_conflicts_with_subcommands(true)
        .arg(
            Arg::new("options")
                .short('o')
                .value_name("OPTS")
                .action(ArgAction::Append)
                .value_parser(clap::builder::PossibleValuesParser::new(keys))
                .hide_possible_values(true)
                .help(
                    "Comma-separated mount options, listed under MOUNT OPTIONS; may be \
                     repeated, and a later value wins. -oOPTS works too.",
                ),
        )
        .arg(
            Arg::new("foreground")
                .short('f')
                .action(ArgAction::SetTrue)
                .help("Stay in the foreground instead of detaching."),
        )
        .arg(
            Arg::new("debug")
                .short('d')
                .long("debug")
                .action(ArgAction::SetTrue)
                .help(
                    "Log every request to stderr (implies -f); RUST_LOG also selects what is \
                     logged.",
                ),
        )
        .arg(
            Arg::new("help")
                .short('h')
                .long("help")
                .action(ArgAction::Help)
                .help("Print the usage and exit 0."),
        )
        .arg(
            Arg::new("version")
                .short('V')
                .long("version")
                .action(ArgAction::Version)
                .help("Print the version and exit 0."),
        )
        .arg(
            Arg::new("demo")
                .long("demo")
                .action(ArgAction::SetTrue)
                .help(
                    "Mount the sample layer stack shipped with the sources, print the merged \
                     tree with the layer each entry comes from and what the upper layers hide, \
                     then unmount.",
                ),
        )
        .arg(
            Arg::new("source")
                .value_name("SOURCE")
                .index(1)
                .help(
                    "Shown as the mount's source in /proc/mounts (mount.fuse3 passes one, such \
                     as overlay).",
                ),
        )
        .arg(
            Arg::new("mountpoint")
                .value_name("MOUNTPOINT")
                .index(2)
                .value_hint(ValueHint::DirPath)
                .help("Where to mount the union."),
        )
}

/// Every key [`MOUNT_OPTIONS`] documents (`x-*` included as written).
pub fn documented_keys() -> Vec<&'static str> {
    MOUNT_OPTIONS
        .iter()
        .flat_map(|o| o.keys.iter().copied())
        .collect()
}
