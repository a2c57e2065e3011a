//! A xenstored serving the Unix socket protocol of libxenstore.
//!
//! ```text
//! cargo run --release -p pv-backend --example xenstored -- --socket /tmp/xs.sock
//! XENSTORED_PATH=/tmp/xs.sock xenstore-ls /
//! ```

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Parser;
use pv_backend::xenstore::server::UnixServer;
use pv_backend::xenstore::{Quotas, XenStore};

/// A xenstored for Blanket: the store of Xen 4.17's C xenstored, over a Unix socket.
#[derive(Debug, Parser)]
struct Args {
    /// The socket path clients find in XENSTORED_PATH.
    #[arg(long)]
    socket: PathBuf,
    /// Nodes per domain (C xenstored's -E).
    #[arg(long, default_value_t = Quotas::default().nodes)]
    quota_nodes: usize,
    /// Watches per domain (-W).
    #[arg(long, default_value_t = Quotas::default().watches)]
    quota_watches: usize,
    /// Transactions per connection (-t).
    #[arg(long, default_value_t = Quotas::default().transactions)]
    quota_transactions: usize,
    /// Node size in bytes (-S).
    #[arg(long, default_value_t = Quotas::default().node_size)]
    quota_node_size: usize,
    /// Memory per domain in bytes.
    #[arg(long, default_value_t = Quotas::default().memory)]
    quota_memory: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let quotas = Quotas {
        nodes: args.quota_nodes,
        watches: args.quota_watches,
        transactions: args.quota_transactions,
        node_size: args.quota_node_size,
        memory: args.quota_memory,
        ..Quotas::default()
    };
    let store = Arc::new(Mutex::new(XenStore::new(quotas)));
    let server = UnixServer::bind(&args.socket, store)?;
    server.serve()?;
    Ok(())
}
