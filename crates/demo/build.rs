//! Compiles the greeter's proto (pure Rust protox: no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = protox::compile(["greeter.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(files)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
