//! Compiles `proto/*.proto` with protox (pure Rust), so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/bus.proto",
        "proto/node.proto",
        "proto/directory.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Events and results travel as `Bytes`: no copy between the HTTP body and gRPC.
        .bytes(".nimbus.node")
        .compile_fds(fds)?;
    Ok(())
}
