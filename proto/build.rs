//! Compiles the `.proto` files with a pure-Rust protobuf compiler (protox),
//! so building Cairn needs no system `protoc` for its own protocols.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["cairn/v1/kv.proto", "cairn/internal/v1/internal.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // A merge carries a whole descriptor: boxed, every command (and the store's
        // message queue, a slot per command) stays small.
        .boxed(".cairn.internal.v1.RaftCommand.cmd.merge")
        .compile_fds(fds)?;
    Ok(())
}
