//! `stratafs-snapshotter`: containerd's snapshots API served as a proxy plugin, with
//! snapshot records in redb and `fuse3.stratafs` union mounts (docs/SNAPSHOTTER.md).
//!
//! `store` holds the snapshots and their semantics, `filter` parses `List`'s filters,
//! `service` is the gRPC front, and [`serve`] runs it on a unix socket until SIGTERM.

pub mod api;
pub mod cli;
pub mod error;
pub mod filter;
pub mod service;
pub mod store;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::Path;
use std::sync::Arc;

use error::{Context, Error, Result};

/// Serves `store` on the unix socket `address` until SIGTERM or SIGINT; removes the socket
/// on the way out.
pub async fn serve(store: Arc<Store>, address: &Path) -> Result<()> {
    if let Some(dir) = address.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .ctx(|| format!("create {}", dir.display()))?;
    }
    // A socket left by a snapshotter that did not stop cleanly; the root's lock (held by
    // now) says no other snapshotter of this root is serving, but another root's could
    // be: refuse then.
    if let Ok(m) = fs::symlink_metadata(address) {
        if !m.file_type().is_socket() {
            return Err(Error::InvalidArgument(format!(
                "{} exists and is not a socket",
                address.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(address).is_ok() {
            return Err(Error::AlreadyExists(format!(
                "{}: another process serves on this socket",
                address.display()
            )));
        }
        fs::remove_file(address).ctx(|| format!("remove the old {}", address.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(address)
        .ctx(|| format!("listen on {}", address.display()))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .ctx(|| "catch SIGTERM".to_string())?;
    tracing::info!(
        root = %store.root().display(),
        address = %address.display(),
        snapshots = store.len().unwrap_or(0),
        "serving containerd's snapshots API"
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(api::snapshots::snapshots_server::SnapshotsServer::new(
                service::Service::new(store),
            ))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                async {
                    let _ = stop_rx.await;
                },
            ),
    );
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    // No new connections from here; calls under way get a grace period. containerd keeps
    // its connection open for good, so the stop does not wait for clients to hang up.
    let _ = fs::remove_file(address);
    let _ = stop_tx.send(());
    match tokio::time::timeout(STOP_GRACE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(Error::Meta(format!("serving: {e}"))),
        Ok(Err(e)) => return Err(Error::Meta(format!("the server task failed: {e}"))),
        Err(_) => tracing::info!("clients still connected after {STOP_GRACE:?}: closing them"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long calls under way may take to finish after SIGTERM.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

pub use store::Store;
