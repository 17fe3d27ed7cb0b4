//! containerd's snapshots API, generated at build time from the vendored protos
//! (`proto/`, compiled by `build.rs`), in modules nested as the protobuf packages are (the
//! generated code names `containerd.types` relative to its own package).
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// The `containerd.*` packages.
pub mod containerd {
    /// `containerd.types`: the `Mount` every snapshotter call returns.
    pub mod types {
        tonic::include_proto!("containerd.types");
    }
    /// `containerd.services.*`.
    pub mod services {
        /// `containerd.services.snapshots`.
        pub mod snapshots {
            /// `containerd.services.snapshots.v1`: the service and its messages.
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
    }
}

pub use containerd::services::snapshots::v1 as snapshots;
pub use containerd::types;
