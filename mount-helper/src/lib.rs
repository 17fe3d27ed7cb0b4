// SPDX-License-Identifier: MIT OR Apache-2.0
//! The library of the `mount-helper` crate: the command-line definition of `stratafs-mount`,
//! shared with the workspace's `xtask`, which generates the man page and the shell
//! completions from it (`cargo xtask docs`), and the containerd snapshotter that the second
//! binary, `stratafs-snapshotter`, serves (a library so that its tests can drive the gRPC
//! service with the generated client). `stratafs-mount` itself is `main.rs`.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod cli;
pub mod snapshotter;
