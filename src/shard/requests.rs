//! Requests this shard sent to other shards and is waiting on: a tiny one-shot rendezvous
//! keyed by request id, resolved by the shard's mesh receiver.

use super::session::SessionState;
use crate::mesh::RequestId;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Default)]
struct Slot {
    remaining: usize,
    state: Option<Box<SessionState>>,
    waker: Option<Waker>,
}

/// Pending requests of one shard.
#[derive(Default)]
pub struct Requests {
    next: Cell<RequestId>,
    slots: RefCell<HashMap<RequestId, Slot>>,
}

impl Requests {
    /// Opens a request that completes after `replies` answers.
    pub fn open(&self, replies: usize) -> RequestId {
        let id = self.next.get() + 1;
        self.next.set(id);
        let slot = Slot {
            remaining: replies,
            ..Slot::default()
        };
        self.slots.borrow_mut().insert(id, slot);
        id
    }

    /// Records one answer, keeping the session state if it carries one.
    pub fn answer(&self, id: RequestId, state: Option<Box<SessionState>>) {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(&id) else {
            return;
        };
        slot.remaining = slot.remaining.saturating_sub(1);
        if state.is_some() {
            slot.state = state;
        }
        if slot.remaining == 0 {
            if let Some(waker) = slot.waker.take() {
                waker.wake();
            }
        }
    }

    /// Waits until every answer came; returns the session state one of them carried.
    pub async fn wait(&self, id: RequestId) -> Option<Box<SessionState>> {
        poll_fn(|cx| {
            let mut slots = self.slots.borrow_mut();
            let Some(slot) = slots.get_mut(&id) else {
                return Poll::Ready(None);
            };
            if slot.remaining == 0 {
                let state = slots.remove(&id).and_then(|s| s.state);
                return Poll::Ready(state);
            }
            slot.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}
