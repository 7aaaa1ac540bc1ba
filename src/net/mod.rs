//! The only socket code: accepting and placing connections, reading packets into sessions,
//! and writing outboxes to sockets, over plain TCP, TLS or WebSocket (with HTTP beside it).

pub mod arena;
pub mod conn;
pub mod gate;
pub mod http;
pub mod refusals;
pub mod sockio;
pub mod tls;
pub mod transport;
pub mod websocket;
pub mod writer;

use crate::config::reload::LiveLimits;
use crate::mesh::Mesh;
use crate::shard::msg::MeshMsg;
use glommio::net::TcpListener;
use std::os::unix::io::FromRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Connections beyond `connections_max` that still get a CONNACK saying why.
const REFUSAL_MARGIN: usize = 1024;

/// Accepts connections on listener `index` (a bound std socket handed over as an fd) and
/// places them on shards in turn, so shards get an even share whatever the kernel's hash
/// would do.
pub async fn accept_loop(
    (fd, index): (std::os::unix::io::RawFd, usize),
    mesh: Rc<Mesh<MeshMsg>>,
    shards: usize,
    open: Arc<AtomicUsize>,
    live: Arc<LiveLimits>,
) {
    // SAFETY: fd is a bound, listening TCP socket that this loop alone owns from now on.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    let mut next = 0;
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
        // Up to the limit plus a margin, connections are placed and refused with a CONNACK
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
        mesh.send(next, MeshMsg::Accepted(stream, index)).await;
        next = (next + 1) % shards;
    }
}
