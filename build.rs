//! Compiles `proto/*.proto` with protox (pure Rust), so no `protoc` binary is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/hookway.proto");
    let fds = protox::compile(["hookway.proto"], ["proto"])?;
    prost_build::Config::new()
        // `bytes` fields decode as `Bytes`: slices of the receive buffer, no copy.
        .bytes(["."])
        .compile_fds(fds)?;
    Ok(())
}
