// SPDX-License-Identifier: MIT OR Apache-2.0
//! The man pages: clap_mangen's sections from the clap definitions, with written sections
//! (mount options, commands, exit status, environment, files, examples, semantics, see also).

use clap::CommandFactory;
use clap_mangen::roff::{bold, italic, roman, Roff};
use clap_mangen::Man;

use crate::daemon_cli;

/// A block of a written section.
enum Block {
    /// A paragraph.
    P(&'static str),
    /// A tagged paragraph: the tag in bold, then its text.
    Item(&'static str, &'static str),
    /// Lines shown as they are (commands, file contents).
    Code(&'static [&'static str]),
}
use Block::{Code, Item, P};

/// A written section: its heading and blocks.
type Section = (&'static str, &'static [Block]);

const DAEMON_SECTIONS: &[Section] = &[
    (
        "EXIT STATUS",
        &[
            Item(
                "0",
                "The mount is live (without -f: the daemon serving it runs on in the \
                 background), or -h, -V or --demo succeeded. In the foreground, 0 once the \
                 filesystem was unmounted.",
            ),
            Item(
                "1",
                "The mount failed (a layer that cannot be used, a mount point that is not a \
                 directory, no access to /dev/fuse...). Nothing is mounted. For stratafs \
                 stats and stratafs refresh: the path is no stratafs mount point (or a PATH \
                 is not inside it), or its daemon refused (the caller is neither the user \
                 who mounted it nor root) or is gone.",
            ),
            Item(
                "2",
                "A bad command line: an unknown flag, no mount point, a bad value for a known \
                 option (fsync=2).",
            ),
            P("Every failure prints one line on stderr, starting with stratafs:, naming the \
               problem. An unknown -o key gets a warning on stderr and is ignored."),
        ],
    ),
    (
        "ENVIRONMENT",
        &[Item(
            "RUST_LOG",
            "What the daemon logs to stderr (a tracing-subscriber filter such as \
             stratafs=debug); the default is warnings, or everything with -d.",
        )],
    ),
    (
        "FILES",
        &[
            Item(
                "/dev/fuse",
                "The FUSE device; the daemon needs read and write access to it.",
            ),
            Item(
                "/usr/bin/fusermount3",
                "Mounts and unmounts for a daemon run by an ordinary user (package fuse3). \
                 Root mounts with mount(2) itself.",
            ),
            Item(
                "/sbin/mount.fuse.stratafs",
                "The helper mount(8) runs for filesystems of type fuse.stratafs (a link to \
                 mount.fuse3, which runs stratafs SOURCE MOUNTPOINT -o OPTS), so that mount -t \
                 fuse.stratafs and /etc/fstab work.",
            ),
            Item(
                "WORKDIR/work",
                "Where copy-ups are staged and the shared whiteout is kept while mounted; left \
                 empty at unmount, as the kernel's overlayfs leaves it.",
            ),
        ],
    ),
    (
        "EXAMPLES",
        &[
            P("Mount two read-only layers under a writable one, then unmount:"),
            Code(&[
                "stratafs /srv/merged -o lowerdir=/srv/l1:/srv/l2,upperdir=/srv/u,workdir=/srv/w",
                "fusermount3 -u /srv/merged",
            ]),
            P("A read-only union of image layers, in the foreground with every request logged:"),
            Code(&["stratafs -d /mnt -o lowerdir=/layers/top:/layers/base"]),
            P("Through mount(8), and the same as an /etc/fstab line:"),
            Code(&[
                "mount -t fuse.stratafs overlay /srv/merged \\",
                "    -o lowerdir=/srv/l1:/srv/l2,upperdir=/srv/u,workdir=/srv/w",
                "",
                "overlay /srv/merged fuse.stratafs lowerdir=/srv/l1:/srv/l2,upperdir=/srv/u,workdir=/srv/w,nofail 0 0",
            ]),
            P("As the mount program of podman, buildah and CRI-O, in \
               /etc/containers/storage.conf:"),
            Code(&[
                "[storage.options.overlay]",
                "mount_program = \"/usr/bin/stratafs\"",
            ]),
            P("See what the daemon is doing, then make it show a layer changed behind its \
               back:"),
            Code(&[
                "stratafs stats /srv/merged",
                "cp new.conf /srv/l2/etc/",
                "stratafs refresh /srv/merged etc",
            ]),
            P("Mount the sample layer stack and show where each file comes from:"),
            Code(&["stratafs --demo"]),
        ],
    ),
    (
        "SEMANTICS",
        &[
            P("A name is looked up in the layers from the top: the first non-directory wins, a \
               directory merges with the directories of the same name below it until an opaque \
               one, and a whiteout (a char 0/0 device, or a .wh.NAME file as OCI layers hold \
               them) hides the name in the layers below. Writing to a file of a lower layer \
               first copies it up to the upper layer (staged in the work directory); deleting \
               a name a lower layer shows leaves a whiteout; a directory made where a lower one \
               was deleted is opaque."),
            P("stratafs behaves as the kernel's overlayfs with redirect_dir=off, index=off, \
               metacopy=off and xino=auto: renaming a directory that has parts in a lower \
               layer fails with EXDEV, a copy-up of one name of a lower hard link breaks the \
               link, and redirects the kernel wrote in layers are followed. \
               Where it deliberately differs (names starting with \
               .wh. are reserved, the overlay's private xattrs are hidden, the root's inode \
               number is 1, lower hard links, files open on a lower copy in FUSE passthrough, \
               layers changed behind the mount), docs/SEMANTICS.md in the sources (installed \
               as /usr/share/doc/stratafs/SEMANTICS.md) lists each difference and the test that \
               pins it."),
            P("Changing the layers of a mounted union behind its back is undefined, as with the \
               kernel's overlayfs: the mount may not show the change until it is mounted \
               again, or until stratafs refresh names what changed. After a refresh, open \
               files keep the object they opened, and a name whose object is gone answers \
               ENOENT (or ESTALE, after which the kernel looks it up again), never with \
               another object."),
        ],
    ),
    (
        "SEE ALSO",
        &[P("stratafs-mount(1), mount.fuse3(8), fusermount3(1), mount(8), fstab(5), \
             fuse-overlayfs(1), podman(1), containers-storage.conf(5)")],
    ),
];

/// The DESCRIPTION of stratafs-mount(1) (its --help has the one-line about).
const MOUNT_HELPER_DESCRIPTION: &str = "\
stratafs-mount keeps a store of container image layers, imports images from docker save / \
podman save archives and OCI layouts (skopeo copy docker://alpine oci:alpine-oci), and mounts \
a container's root filesystem over the shared, read-only layers with the stratafs daemon, \
with a writable upper layer of the container's own.

What a container changed can be listed (diff), turned into a new image layer (commit) and \
written out as an OCI image layout (export) that podman pull oci:DIR and skopeo read. \
Every error is one line on stderr.";

const MOUNT_HELPER_SECTIONS: &[Section] = &[
    (
        "EXIT STATUS",
        &[
            Item("0", "The command succeeded."),
            Item(
                "1",
                "It failed; one line on stderr, stratafs-mount: COMMAND: PROBLEM, says why.",
            ),
            Item("2", "A bad command line."),
        ],
    ),
    (
        "FILES",
        &[
            Item(
                "/var/lib/stratafs",
                "The store as root: content-addressed blobs, unpacked layers, images, tags \
                 and containers (their upper and work directories).",
            ),
            Item(
                "$XDG_DATA_HOME/stratafs",
                "The store of an ordinary user (~/.local/share/stratafs when XDG_DATA_HOME is \
                 not set).",
            ),
            Item(
                "/usr/bin/stratafs",
                "The daemon that mounts containers: the one next to stratafs-mount, else the \
                 one on PATH (--daemon or STRATAFS_DAEMON to choose another).",
            ),
        ],
    ),
    (
        "EXAMPLES",
        &[
            P(
                "Import an image saved by docker or podman, create a container from it and mount \
               its root filesystem:",
            ),
            Code(&[
                "docker save alpine > alpine.tar",
                "stratafs-mount import alpine.tar --tag alpine",
                "stratafs-mount create web alpine",
                "stratafs-mount mount web /srv/web",
                "chroot /srv/web /bin/sh",
            ]),
            P("See what the container changed, and turn it into an image again:"),
            Code(&[
                "stratafs-mount diff web",
                "stratafs-mount umount web",
                "stratafs-mount commit web --tag alpine:mine",
                "stratafs-mount export alpine:mine --oci ./out",
            ]),
            P("Which layer a file comes from, and cleaning up:"),
            Code(&[
                "stratafs-mount inspect web /etc/passwd",
                "stratafs-mount rm web",
                "stratafs-mount rmi alpine:mine",
                "stratafs-mount gc",
            ]),
        ],
    ),
    (
        "SECURITY",
        &[P(
            "Image archives are untrusted input: digests and sizes are verified, layers are \
             unpacked confined to their directory (entries that would land outside it are \
             refused), and each layer's unpacked size is bounded (--max-layer-size). \
             Containers are mounted nosuid and nodev unless --suid or --dev is given.",
        )],
    ),
    (
        "SEE ALSO",
        &[P("stratafs(8), podman-save(1), skopeo-copy(1), chroot(8)")],
    ),
];

/// Renders one page from its parts.
struct Page {
    out: Vec<u8>,
}

impl Page {
    fn new() -> Page {
        Page { out: Vec::new() }
    }

    /// Appends rendered roff, dropping the apostrophe preamble every render repeats.
    fn push(&mut self, rendered: &[u8]) {
        let text = String::from_utf8_lossy(rendered);
        for line in text.lines() {
            let preamble = line.starts_with(".ie \\n(.g .ds Aq") || line == ".el .ds Aq '";
            if preamble && !self.out.is_empty() {
                continue;
            }
            self.out.extend_from_slice(line.as_bytes());
            self.out.push(b'\n');
        }
    }

    fn clap(
        &mut self,
        render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut buf = Vec::new();
        render(&mut buf)?;
        self.push(&buf);
        Ok(())
    }

    fn roff(&mut self, roff: &Roff) -> std::io::Result<()> {
        let mut buf = Vec::new();
        roff.to_writer(&mut buf)?;
        self.push(&buf);
        Ok(())
    }

    /// A COMMANDS section: every subcommand of `cmd` (run as `program NAME`) with its own
    /// synopsis, description and options. Nothing when `cmd` has none.
    fn commands(&mut self, cmd: &clap::Command, program: &str) -> std::io::Result<()> {
        let mut subs = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .peekable();
        if subs.peek().is_none() {
            return Ok(());
        }
        self.roff(Roff::new().control("SH", ["COMMANDS"]))?;
        for sub in subs {
            let name = format!("{program} {}", sub.get_name());
            let sub = sub.clone().bin_name(&name).disable_help_flag(true);
            let sub_man = Man::new(sub.clone());
            let mut roff = Roff::new();
            roff.control("SS", [name.as_str()]);
            self.roff(&roff)?;
            let mut synopsis = Vec::new();
            sub_man.render_synopsis_section(&mut synopsis)?;
            self.push(&drop_headings(&synopsis));
            let mut roff = Roff::new();
            roff.control("PP", []);
            if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
                roff.text([roman(about.to_string())]);
            }
            self.roff(&roff)?;
            if sub.get_arguments().any(|a| !a.is_hide_set()) {
                let mut options = Vec::new();
                sub_man.render_options_section(&mut options)?;
                self.push(&drop_headings(&options));
            }
        }
        Ok(())
    }

    fn written(&mut self, sections: &[Section]) -> std::io::Result<()> {
        let mut roff = Roff::new();
        for (title, blocks) in sections {
            roff.control("SH", [*title]);
            blocks_to_roff(&mut roff, blocks);
        }
        self.roff(&roff)
    }
}

fn blocks_to_roff(roff: &mut Roff, blocks: &[Block]) {
    for (i, block) in blocks.iter().enumerate() {
        match block {
            P(text) => {
                if i > 0 {
                    roff.control("PP", []);
                }
                roff.text([roman(*text)]);
            }
            Item(tag, text) => {
                roff.control("TP", []);
                roff.text([bold(*tag)]);
                roff.text([roman(*text)]);
            }
            Code(lines) => {
                roff.control("PP", []);
                roff.control("RS", ["4"]);
                roff.control("nf", []);
                for line in *lines {
                    roff.text([roman(*line)]);
                }
                roff.control("fi", []);
                roff.control("RE", []);
            }
        }
    }
}

/// The MOUNT OPTIONS section of stratafs(8), from [`daemon_cli::MOUNT_OPTIONS`].
fn mount_options_section() -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["MOUNT OPTIONS"]);
    roff.text([roman(
        "Given to -o as a comma-separated list. In path values \\: is a literal colon, \\, a \
         literal comma and \\\\ a backslash; \"...\" protects commas. Relative paths are taken \
         from the current directory; symlinked layer paths are followed. Empty elements are \
         ignored. A bad value for a known key is an error; an unknown key gets a warning and \
         is ignored.",
    )]);
    for opt in daemon_cli::MOUNT_OPTIONS {
        roff.control("TP", []);
        let mut tag = Vec::new();
        for (i, key) in opt.keys.iter().enumerate() {
            if i > 0 {
                tag.push(roman(", "));
            }
            tag.push(bold(*key));
            if let Some(value) = opt.value {
                tag.push(roman("="));
                tag.push(italic(value));
            }
        }
        roff.text(tag);
        roff.text([roman(opt.help)]);
    }
    roff
}

/// A section 8 page of `cmd`: clap's sections, then `extra` (if any) and the written
/// `sections`, then the version.
fn admin_page(
    cmd: clap::Command,
    extra: Option<Roff>,
    sections: &[Section],
) -> std::io::Result<Vec<u8>> {
    let man = Man::new(cmd.clone())
        .section("8")
        .manual("System Administration");
    let mut page = Page::new();
    page.clap(|w| man.render_title(w))?;
    page.clap(|w| man.render_name_section(w))?;
    page.clap(|w| man.render_synopsis_section(w))?;
    page.clap(|w| man.render_description_section(w))?;
    page.clap(|w| man.render_options_section(w))?;
    if let Some(extra) = extra {
        page.roff(&extra)?;
    }
    let program = cmd.get_name().to_string();
    page.commands(&cmd, &program)?;
    page.written(sections)?;
    page.clap(|w| man.render_version_section(w))?;
    Ok(page.out)
}

/// stratafs(8).
pub fn daemon_page() -> std::io::Result<Vec<u8>> {
    admin_page(
        daemon_cli::command(),
        Some(mount_options_section()),
        DAEMON_SECTIONS,
    )
}

/// stratafs-mount(1).
pub fn mount_helper_page() -> std::io::Result<Vec<u8>> {
    let cmd = stratafs_mount::cli::Cli::command().long_about(MOUNT_HELPER_DESCRIPTION);
    let man = Man::new(cmd.clone()).manual("User Commands");
    let mut page = Page::new();
    page.clap(|w| man.render_title(w))?;
    page.clap(|w| man.render_name_section(w))?;
    page.clap(|w| man.render_synopsis_section(w))?;
    page.clap(|w| man.render_description_section(w))?;
    page.clap(|w| man.render_options_section(w))?;
    page.commands(&cmd, "stratafs-mount")?;
    page.written(MOUNT_HELPER_SECTIONS)?;
    page.clap(|w| man.render_version_section(w))?;
    Ok(page.out)
}

const SNAPSHOTTER_SECTIONS: &[Section] = &[
    (
        "EXIT STATUS",
        &[
            Item(
                "0",
                "Stopped cleanly on SIGTERM or SIGINT (the socket removed), or -h or -V.",
            ),
            Item(
                "1",
                "It could not start: the root cannot be made or is held by another \
                 snapshotter, the socket cannot be bound, the metadata cannot be opened. One \
                 line on stderr says why.",
            ),
            Item("2", "A bad command line."),
        ],
    ),
    (
        "FILES",
        &[
            Item(
                "ROOT/metadata.db",
                "The snapshots' records (redb): one transaction per change, so a crash leaves \
                 the old state or the new one.",
            ),
            Item(
                "ROOT/snapshots/ID/fs",
                "A snapshot's layer directory (ROOT/snapshots/ID/work its work directory).",
            ),
            Item(
                "/run/stratafs-snapshotter/grpc.sock",
                "The default socket as root; an ordinary user's is under $XDG_RUNTIME_DIR.",
            ),
        ],
    ),
    (
        "EXAMPLES",
        &[Code(&[
            "# /etc/containerd/config.toml",
            "[proxy_plugins.stratafs]",
            "  type = \"snapshot\"",
            "  address = \"/run/stratafs-snapshotter/grpc.sock\"",
            "",
            "stratafs-snapshotter &",
            "ctr images import --snapshotter stratafs image.tar",
            "ctr run --rm --snapshotter stratafs docker.io/library/busybox:latest c1 true",
        ])],
    ),
    (
        "SEE ALSO",
        &[P(
            "stratafs(8), stratafs-mount(1), containerd(8), ctr(8); docs/SNAPSHOTTER.md.",
        )],
    ),
];

/// stratafs-snapshotter(8).
pub fn snapshotter_page() -> std::io::Result<Vec<u8>> {
    admin_page(
        stratafs_mount::snapshotter::cli::Cli::command(),
        None,
        SNAPSHOTTER_SECTIONS,
    )
}

/// Drops the `.SH` lines of a section clap_mangen rendered, to nest it under a `.SS`.
fn drop_headings(rendered: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(rendered);
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with(".SH ")) {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}
