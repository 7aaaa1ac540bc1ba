//! The only socket code: accepting and placing connections, reading packets into sessions,
//! and writing outboxes to sockets, over plain TCP, TLS or WebSocket (with HTTP beside it).

pub mod arena;
pub mod conn;
pub mod gate;
pub mod http;
pub mod keepalive;
pub mod refusals;
pub mod socket;
pub mod sockio;
pub mod tls;
pub mod transport;
pub mod websocket;
pub mod writer;

use crate::config::reload::LiveLimits;
use crate::shard::msg::MeshMsg;
use crate::shard::Shard;
use gate::Gate;
use glommio::net::TcpListener;
use std::os::unix::io::FromRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Connections beyond `connections_max` that still get a CONNACK saying why.
const REFUSAL_MARGIN: usize = 1024;

/// Accepts connections on this shard's socket of listener `index` (a bound std socket handed
/// over as an fd) and serves them here. Every shard has a socket of its own on each listener
/// address (SO_REUSEPORT, see `host::bind_group`), so a storm of connections is accepted by all
/// shards at once, and a connection never crosses a ring before its first read; where its
/// session must live elsewhere, the CONNECT's claim goes through the mesh as for any takeover.
pub async fn accept_loop((fd, index): (std::os::unix::io::RawFd, usize), to: Placing) {
    let Placing {
        shard,
        gate,
        open,
        live,
        turn,
    } = to;
    // SAFETY: fd is a bound, listening TCP socket that this loop alone owns from now on.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    let refusals = refusals::RefusalLog::default();
    let (mut limits, mut seen) = (live.current(), 0);
    loop {
        let stream = match listener.shared_accept().await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        // Up to the limit plus a margin, connections are served and refused with a CONNACK
        // (return code 3) by their shard; past the margin they are closed at once so a flood
        // cannot exhaust file descriptors.
        seen = live.refresh(seen, &mut limits);
        let max = limits.connections_max;
        if open.load(Ordering::Relaxed) >= max.saturating_add(REFUSAL_MARGIN) {
            let stream = stream.bind_to_executor();
            let peer = stream.peer_addr().ok().map(|a| a.ip());
            let why = format!("closed at once: limits.connections_max ({max}) reached and {REFUSAL_MARGIN} more already waiting for their CONNACK");
            refusals.refused(peer, why, std::time::Instant::now());
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        shard.metrics.count_accepted();
        // One turn counter for the whole broker: shards get connections in turn whichever
        // shard's socket the kernel picked, so even a handful of busy connections is spread
        // evenly (the kernel's hash can put 4 of 4 on one shard).
        let to = turn.fetch_add(1, Ordering::Relaxed) % shard.shards;
        if to == shard.id() {
            conn::spawn(
                shard.clone(),
                stream.bind_to_executor(),
                gate.clone(),
                index,
            );
        } else {
            shard.mesh.send(to, MeshMsg::Accepted(stream, index)).await;
        }
    }
}

/// Where an accept loop places what it accepts, and what it counts.
pub struct Placing {
    /// This shard.
    pub shard: Rc<Shard>,
    /// This shard's view of the listeners.
    pub gate: Rc<Gate>,
    /// Connections open in the whole broker (for `connections_max`).
    pub open: Arc<AtomicUsize>,
    /// The limits of new connections.
    pub live: Arc<LiveLimits>,
    /// Connections accepted by the whole broker: whose turn the next one is.
    pub turn: Arc<AtomicUsize>,
}
