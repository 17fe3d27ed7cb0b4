//! Compiles containerd's snapshots API (vendored under `proto/`) into Rust with protox (a
//! protobuf compiler in Rust, so no `protoc` is needed) and tonic-prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto"];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
