//! Drains a connection's outbox into its transport, then closes the connection so that the
//! client can read the last packets (a DISCONNECT with its reason) instead of a reset.

use super::transport::{Shutdown, Writer};
use crate::shard::outbox::Outbox;
use crate::shard::persist::Persist;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

/// How long the client gets, once everything was written and our side is shut, to close
/// its side before reading stops too.
pub const LINGER: Duration = Duration::from_secs(1);

/// Drains `outbox` into `writer` until the outbox closes (and is flushed) or the transport
/// fails. Then shuts down the write side only, so what was sent is read before end of stream,
/// and, unless the reader has finished (`Outbox::reader_done`), gives the client `LINGER` to
/// close before reading stops too. An aborted outbox (a slow subscriber disconnected) shuts
/// both sides at once.
/// With persistence, nothing is written before the records the queued frames acknowledge
/// (or depend on: a PUBLISH's packet id, a PUBREL) are durable (`Outbox::hold_until`), nor
/// before the other shards answered for what they stored or replicated of it
/// (`Outbox::hold_for_shards`).
// Deliberately not an `async fn`: see the comment on the block.
#[allow(clippy::manual_async_fn)]
pub fn run(
    writer: &mut Writer,
    outbox: Rc<Outbox>,
    persist: Option<Rc<Persist>>,
) -> impl Future<Output = ()> + '_ {
    // An async block, not an async fn, whose arguments the task would keep twice; the rare
    // waits are boxed while they last. It lives as long as the connection.
    async move {
        loop {
            if !writer.has_pending() {
                std::future::poll_fn(|cx| writer.poll_ready(&outbox, cx)).await;
                if outbox.is_empty() && !writer.has_pending() {
                    break; // closing, and everything was flushed
                }
            }
            if outbox.is_held_for_shards() {
                std::future::poll_fn(|cx| outbox.poll_shards_released(cx)).await;
                continue;
            }
            if let Some(persist) = &persist {
                let at = outbox.held_until();
                if !persist.is_durable(at) {
                    Box::pin(persist.wait_durable(at)).await;
                    continue;
                }
            }
            if writer.write_some(&outbox).await.is_err() {
                break;
            }
        }
        outbox.close();
        if outbox.is_aborted() {
            writer.shutdown(Shutdown::Both);
            return;
        }
        writer.shutdown(Shutdown::Write);
        let _ = Box::pin(glommio::timer::timeout(LINGER, async {
            std::future::poll_fn(|cx| outbox.poll_reader_done(cx)).await;
            Ok(())
        }))
        .await;
        writer.shutdown(Shutdown::Read);
    }
}
