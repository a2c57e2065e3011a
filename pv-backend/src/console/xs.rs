//! The console back end's XenStore glue, as xenconsoled does it (`tools/console/daemon/io.c`): the
//! guest's console directory (`/local/domain/<domid>/console`) gives `ring-ref` (the ring's frame),
//! `port` (the event channel), optionally `type` (a console of another type than `xenconsoled`,
//! such as `ioemu`, is someone else's) and `limit` (the most output bytes buffered for a slow sink:
//! [`ConsoleConfig::buffer_limit`]); the back end writes `tty` there when its sink is a pty.
//!
//! The page is mapped through the reserved grant entry `GNTTAB_RESERVED_CONSOLE` (as xenconsoled
//! does first, before it falls back to mapping `ring-ref` as a foreign frame), so the grant entry's
//! checks apply. Every node is read once and checked: a missing or non-numeric `ring-ref` or `port`
//! is a typed error; `limit` is a decimal number of bytes, 0 meaning "no limit" (our default, as
//! for xenconsoled), and is clamped to [`MAX_CONSOLE_LIMIT`] because the guest owns its console
//! directory and could otherwise make us buffer without bound.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use xen_abi::DomId;
use xen_abi::grant_table::GNTTAB_RESERVED_CONSOLE;
use xen_abi::xs_wire::parse_decimal;

use super::{ConsoleBackend, ConsoleConfig, ConsoleError, ConsoleSink};
use crate::backend::{
    Doorbell, EventChannel, EventChannelError, EventChannels, GrantAccess, GrantedRing,
    RingMapError, XsError, XsHandle,
};

/// The largest `console/limit` honoured (16 MiB); larger values are clamped to it.
pub const MAX_CONSOLE_LIMIT: usize = 16 << 20;

/// What can go wrong connecting a console from XenStore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleXsError {
    /// A XenStore operation failed.
    #[error(transparent)]
    Xs(#[from] XsError),
    /// A node the console needs is missing.
    #[error(
        "{path} is missing: the guest (or toolstack) must write it before the console connects"
    )]
    Missing {
        /// The node.
        path: String,
    },
    /// A node that must hold a decimal number does not.
    #[error("{path} is {value:?}, not a decimal number")]
    NotNumeric {
        /// The node.
        path: String,
        /// What it holds (lossily decoded).
        value: String,
    },
    /// The console's `type` says another back end serves it.
    #[error("{path} is {value:?}: that console is not served by this back end (type xenconsoled)")]
    NotOurs {
        /// The node.
        path: String,
        /// Its value.
        value: String,
    },
    /// The console page's grant did not map.
    #[error("console page of domain {domid} (grant {GNTTAB_RESERVED_CONSOLE}): {source}")]
    Map {
        /// The domain.
        domid: DomId,
        /// Why.
        #[source]
        source: RingMapError,
    },
    /// The event channel could not be bound.
    #[error(transparent)]
    EventChannel(#[from] EventChannelError),
    /// The console refused the page or the configuration.
    #[error(transparent)]
    Console(#[from] ConsoleError),
}

/// What a guest's console directory says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleNodes {
    /// `ring-ref`: the console page's frame.
    pub ring_ref: u32,
    /// `port`: the guest's event channel port.
    pub port: u32,
    /// `limit`, clamped to [`MAX_CONSOLE_LIMIT`] (`None` if absent or 0: no limit given).
    pub limit: Option<usize>,
}

/// The console directory of domain `domid`.
pub fn console_dir(domid: DomId) -> String {
    format!("/local/domain/{domid}/console")
}

fn read_u32(xs: &dyn XsHandle, path: String) -> Result<Option<u32>, ConsoleXsError> {
    match xs.read(&path)? {
        None => Ok(None),
        Some(v) => {
            let digits = v.strip_suffix(b"\0").unwrap_or(&v);
            parse_decimal(digits)
                .map(Some)
                .ok_or_else(|| ConsoleXsError::NotNumeric {
                    path,
                    value: String::from_utf8_lossy(&v).into_owned(),
                })
        }
    }
}

/// Reads and checks `ring-ref`, `port`, `type` and `limit` in `dir`.
pub fn read_nodes(xs: &dyn XsHandle, dir: &str) -> Result<ConsoleNodes, ConsoleXsError> {
    let require = |key: &str| -> Result<u32, ConsoleXsError> {
        let path = format!("{dir}/{key}");
        read_u32(xs, path.clone())?.ok_or(ConsoleXsError::Missing { path })
    };
    let type_path = format!("{dir}/type");
    if let Some(t) = xs.read(&type_path)? {
        let t = t.strip_suffix(b"\0").unwrap_or(&t);
        if t != b"xenconsoled" {
            return Err(ConsoleXsError::NotOurs {
                path: type_path,
                value: String::from_utf8_lossy(t).into_owned(),
            });
        }
    }
    let ring_ref = require("ring-ref")?;
    let port = require("port")?;
    let limit_path = format!("{dir}/limit");
    let limit = match xs.read(&limit_path)? {
        None => None,
        Some(v) => {
            let digits = v.strip_suffix(b"\0").unwrap_or(&v);
            let ok =
                !digits.is_empty() && digits.len() <= 20 && digits.iter().all(u8::is_ascii_digit);
            let n: Option<u64> = ok
                .then(|| std::str::from_utf8(digits).ok()?.parse().ok())
                .flatten();
            match n {
                // Twenty digits may not fit 64 bits: that is a huge limit too.
                None if ok => Some(MAX_CONSOLE_LIMIT),
                None => {
                    return Err(ConsoleXsError::NotNumeric {
                        path: limit_path,
                        value: String::from_utf8_lossy(&v).into_owned(),
                    });
                }
                Some(0) => None,
                Some(n) => Some(
                    usize::try_from(n)
                        .unwrap_or(usize::MAX)
                        .clamp(2, MAX_CONSOLE_LIMIT),
                ),
            }
        }
    };
    Ok(ConsoleNodes {
        ring_ref,
        port,
        limit,
    })
}

/// Writes `tty` in `dir`: the path of the pty a terminal program opens (`xl console` reads it).
pub fn write_tty(xs: &dyn XsHandle, dir: &str, tty: &Path) -> Result<(), ConsoleXsError> {
    xs.write(&format!("{dir}/tty"), tty.as_os_str().as_encoded_bytes())?;
    Ok(())
}

/// A bound event channel, as the console's notifier.
#[derive(Clone)]
pub struct BoundPort(pub Arc<dyn EventChannel>);

impl std::fmt::Debug for BoundPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoundPort")
    }
}

impl EventChannel for BoundPort {
    fn notify(&self) {
        self.0.notify();
    }
}

/// A console connected from XenStore.
pub type XsConsole<S> = ConsoleBackend<GrantedRing, BoundPort, S>;

/// Connects domain `domid`'s console as xenconsoled does: reads `dir` ([`read_nodes`]), maps the
/// page through `GNTTAB_RESERVED_CONSOLE`, binds `port` (its events ring `doorbell`), applies
/// `limit` to `config.buffer_limit`, and writes `tty` if the sink is a pty
/// ([`ConsoleSink::tty_path`]). Returns the console and the nodes it read.
#[allow(clippy::too_many_arguments)]
pub fn connect<S: ConsoleSink>(
    xs: &dyn XsHandle,
    domid: DomId,
    dir: &str,
    grants: &dyn GrantAccess,
    evtchns: &dyn EventChannels,
    doorbell: Arc<Doorbell>,
    sink: S,
    mut config: ConsoleConfig,
    now: Instant,
) -> Result<(XsConsole<S>, ConsoleNodes), ConsoleXsError> {
    let nodes = read_nodes(xs, dir)?;
    if let Some(l) = nodes.limit {
        config.buffer_limit = l;
    }
    let mem = GrantedRing::map(grants, domid, &[GNTTAB_RESERVED_CONSOLE])
        .map_err(|source| ConsoleXsError::Map { domid, source })?;
    let ev = evtchns.bind(domid, nodes.port, doorbell)?;
    if let Some(tty) = sink.tty_path() {
        write_tty(xs, dir, tty)?;
    }
    let console = ConsoleBackend::new(mem, BoundPort(ev), sink, domid, config, now)?;
    Ok((console, nodes))
}
