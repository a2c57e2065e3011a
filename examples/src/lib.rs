//! Runnable examples of the Blanket workspace. Run the example hypervisor with
//! `cargo run --release --example blanket -- --help`.
