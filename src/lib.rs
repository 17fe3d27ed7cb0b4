//! stratafs: a union filesystem over FUSE with the semantics and on-disk formats of the
//! kernel's overlayfs, and the command line of fuse-overlayfs.
//!
//! Data flows one way: [`fuse`] -> [`overlay`] -> ([`inode`], [`layer`]) -> [`sys`]. Nothing
//! below `fuse` knows FUSE exists.

#![warn(missing_docs, missing_debug_implementations)]

pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod fuse;
pub mod inode;
pub mod layer;
pub mod logging;
pub mod overlay;
pub mod stats;
pub mod sys;
#[cfg(test)]
mod test_hook;
