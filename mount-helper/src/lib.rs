// SPDX-License-Identifier: MIT OR Apache-2.0
//! The command-line definition of `stratafs-mount`, shared with the workspace's `xtask`, which
//! generates the man page and the shell completions from it (`cargo xtask docs`). The program
//! itself is `main.rs`.
#![forbid(unsafe_code)]

pub mod cli;
