//! Hard links through images: the names of a file linked in a lower layer must stay one file
//! in what podman reads through the mount program (`stat` in a container, `podman export`,
//! `COPY --from` of another stage, `podman build --squash-all`), as they do with
//! fuse-overlayfs and the kernel's overlayfs, which report the lower file's `st_ino` and
//! `st_nlink` for every name.

use std::path::Path;
use std::process::Command;

use crate::*;

const LINKS_IMAGE: &str = "localhost/strata-links:latest";
const SQUASHED_IMAGE: &str = "localhost/strata-squashed:latest";
const CONTAINERFILE_LINKS: &str = include_str!("Containerfile.links");
const CONTAINERFILE_SQUASH: &str = include_str!("Containerfile.squash");

/// The hard links a tarball holds among names under `under`, as sorted `A = B` lines
/// (names without `./`, each pair in name order), from GNU tar's `X link to Y` listing.
pub(crate) fn tar_links(tarball: &Path, under: &[&str]) -> Result<Vec<String>, String> {
    let out = exec(
        Command::new("tar").arg("-tvf").arg(tarball),
        format!("tar -tvf {}", tarball.display()),
        PODMAN_TIMEOUT,
    )
    .ok()?;
    let norm = |s: &str| s.trim_start_matches("./").to_string();
    let mut links: Vec<String> = out
        .lines()
        .filter_map(|l| {
            let (left, target) = l.split_once(" link to ")?;
            let name = norm(left.rsplit(' ').next()?);
            let target = norm(target);
            let (a, b) = if name < target {
                (name, target)
            } else {
                (target, name)
            };
            under
                .iter()
                .any(|u| a.starts_with(u))
                .then(|| format!("{a} = {b}"))
        })
        .collect();
    links.sort();
    Ok(links)
}

/// Exports a new container of `image` and returns its hard links under `under`.
fn exported_links(pm: &Podman, image: &str, under: &[&str]) -> Result<Vec<String>, String> {
    let name = "strata-links-export";
    let mut a: Vec<&str> = vec!["create", "--name", name, "--network", "none"];
    a.extend(pm.run_opts.iter().map(String::as_str));
    a.extend([image, "true"]);
    pm.ok(&a)?;
    let tarball = pm.path("work/links-export.tar");
    let exported = pm.ok(&["export", "--output", &tarball.display().to_string(), name]);
    pm.ok(&["rm", "--force", name])?;
    exported?;
    tar_links(&tarball, under)
}

fn build(
    pm: &Podman,
    dir: &str,
    containerfile: &str,
    extra: &[&str],
    tag: &str,
) -> Result<(), String> {
    let ctx = pm.path(dir);
    write(&ctx.join("Containerfile"), containerfile, 0o644);
    let ctx = ctx.display().to_string();
    let mut a = vec![
        "build",
        "--network",
        "none",
        "--pull=never",
        "--isolation",
        "oci",
    ];
    a.extend(extra);
    a.extend(["--tag", tag, ctx.as_str()]);
    pm.ok(&a).map(|_| ())
}

fn expect_links(what: &str, got: Vec<String>, want: &[&str]) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: hard links {got:?}, want {want:?}"))
    }
}

/// One way of reading the link.
type Step<'a> = dyn Fn() -> Result<(), String> + 'a;

/// `/data/hard1` and `/data/hard2` are one file in a layer of the `strata-layers` image. Every
/// way of reading it is tried, and every one that fails is reported.
pub(crate) fn check_hard_links(pm: &Podman) -> Result<(), String> {
    let pair = "data/hard1 = data/hard2";
    let steps: [(&str, &Step); 4] = [
        ("stat in a container", &|| {
            let out = pm.run_rm(
                &[],
                LAYERS_IMAGE,
                &["stat", "-c", "%i %h", "/data/hard1", "/data/hard2"],
            )?;
            let lines: Vec<&str> = out.lines().collect();
            if lines.len() == 2 && lines[0] == lines[1] && lines[0].ends_with(" 2") {
                Ok(())
            } else {
                Err(format!(
                    "stat of /data/hard1 and /data/hard2: {lines:?}, want one inode number \
                     with 2 links"
                ))
            }
        }),
        ("podman export", &|| {
            expect_links(
                "podman export of a container",
                exported_links(pm, LAYERS_IMAGE, &["data/"])?,
                &[pair],
            )
        }),
        ("COPY --from", &|| {
            build(
                pm,
                "work/build-links",
                CONTAINERFILE_LINKS,
                &[],
                LINKS_IMAGE,
            )?;
            expect_links(
                "COPY --from of a stage's hard link, exported",
                exported_links(pm, LINKS_IMAGE, &["app2/", "data/"])?,
                &["app2/a = app2/b", pair],
            )
        }),
        ("--squash-all", &|| {
            build(
                pm,
                "work/build-squash",
                CONTAINERFILE_SQUASH,
                &["--squash-all"],
                SQUASHED_IMAGE,
            )?;
            expect_links(
                "podman build --squash-all, exported",
                exported_links(pm, SQUASHED_IMAGE, &["data/"])?,
                &[pair],
            )
        }),
    ];
    let failed: Vec<String> = steps
        .iter()
        .filter_map(|(what, f)| f().err().map(|e| format!("{what}: {e}")))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("\n"))
    }
}
