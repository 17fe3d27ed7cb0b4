//! The gRPC front: containerd's `containerd.services.snapshots.v1.Snapshots` service over
//! the [`Store`]. Each call converts, runs the store's blocking work off the async threads,
//! and converts back; every error carries the code containerd expects (see `error.rs`).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::api::snapshots::snapshots_server::Snapshots;
use super::api::snapshots::{self as pb, Kind as PbKind};
use super::api::types;
use super::error::Result;
use super::store::{Info, Kind, Mount, Store, Time};

/// The service: shares one store between calls.
#[derive(Debug, Clone)]
pub struct Service {
    store: Arc<Store>,
}

impl Service {
    /// A service over `store`.
    pub fn new(store: Arc<Store>) -> Service {
        Service { store }
    }

    /// Runs `f` on the store on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> std::result::Result<T, Status> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(r) => r.map_err(|e| {
                tracing::debug!("call failed: {e}");
                Status::from(e)
            }),
            Err(e) => Err(Status::internal(format!("a call's thread failed: {e}"))),
        }
    }
}

fn labels(m: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

fn mounts(v: Vec<Mount>) -> Vec<types::Mount> {
    v.into_iter()
        .map(|m| types::Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn timestamp(t: Time) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.secs,
        nanos: t.nanos,
    }
}

fn to_pb(i: Info) -> pb::Info {
    pb::Info {
        name: i.name,
        parent: i.parent,
        kind: match i.kind {
            Kind::View => PbKind::View,
            Kind::Active => PbKind::Active,
            Kind::Committed => PbKind::Committed,
        } as i32,
        created_at: Some(timestamp(i.created)),
        updated_at: Some(timestamp(i.updated)),
        labels: i.labels.into_iter().collect(),
    }
}

type ListStream = Pin<
    Box<
        dyn tokio_stream::Stream<Item = std::result::Result<pb::ListSnapshotsResponse, Status>>
            + Send,
    >,
>;

/// Infos per `List` message (containerd's own service sends them in batches of 100).
const LIST_BATCH: usize = 100;

#[tonic::async_trait]
impl Snapshots for Service {
    async fn prepare(
        &self,
        req: Request<pb::PrepareSnapshotRequest>,
    ) -> std::result::Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = req.into_inner();
        let m = self
            .blocking(move |s| s.create(Kind::Active, &r.key, &r.parent, labels(r.labels)))
            .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: mounts(m),
        }))
    }

    async fn view(
        &self,
        req: Request<pb::ViewSnapshotRequest>,
    ) -> std::result::Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        let m = self
            .blocking(move |s| s.create(Kind::View, &r.key, &r.parent, labels(r.labels)))
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: mounts(m),
        }))
    }

    async fn mounts(
        &self,
        req: Request<pb::MountsRequest>,
    ) -> std::result::Result<Response<pb::MountsResponse>, Status> {
        let r = req.into_inner();
        let m = self.blocking(move |s| s.mounts(&r.key)).await?;
        Ok(Response::new(pb::MountsResponse { mounts: mounts(m) }))
    }

    async fn commit(
        &self,
        req: Request<pb::CommitSnapshotRequest>,
    ) -> std::result::Result<Response<()>, Status> {
        let r = req.into_inner();
        self.blocking(move |s| s.commit(&r.name, &r.key, labels(r.labels)))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveSnapshotRequest>,
    ) -> std::result::Result<Response<()>, Status> {
        let r = req.into_inner();
        self.blocking(move |s| s.remove(&r.key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<pb::StatSnapshotRequest>,
    ) -> std::result::Result<Response<pb::StatSnapshotResponse>, Status> {
        let r = req.into_inner();
        let i = self.blocking(move |s| s.stat(&r.key)).await?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(to_pb(i)),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateSnapshotRequest>,
    ) -> std::result::Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = req.into_inner();
        let Some(info) = r.info else {
            return Err(Status::invalid_argument("update: no info given"));
        };
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let i = self
            .blocking(move |s| s.update(&info.name, &labels(info.labels), &paths))
            .await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(to_pb(i)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> std::result::Result<Response<Self::ListStream>, Status> {
        let r = req.into_inner();
        let infos = self.blocking(move |s| s.list(&r.filters)).await?;
        let batches: Vec<std::result::Result<pb::ListSnapshotsResponse, Status>> = infos
            .chunks(LIST_BATCH)
            .map(|c| {
                Ok(pb::ListSnapshotsResponse {
                    info: c.iter().cloned().map(to_pb).collect(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(
        &self,
        req: Request<pb::UsageRequest>,
    ) -> std::result::Result<Response<pb::UsageResponse>, Status> {
        let r = req.into_inner();
        let u = self.blocking(move |s| s.usage(&r.key)).await?;
        Ok(Response::new(pb::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(
        &self,
        _req: Request<pb::CleanupRequest>,
    ) -> std::result::Result<Response<()>, Status> {
        self.blocking(|s| s.cleanup()).await?;
        Ok(Response::new(()))
    }
}
