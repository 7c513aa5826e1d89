// Builds the libfabric shim when the `rdma` feature is on (needs libfabric-dev).
fn main() {
    println!("cargo:rerun-if-changed=src/rdma/shim.c");
    if std::env::var_os("CARGO_FEATURE_RDMA").is_some() {
        cc::Build::new()
            .file("src/rdma/shim.c")
            .warnings(true)
            .compile("acspeed_fabric_shim");
        println!("cargo:rustc-link-lib=fabric");
    }
}
