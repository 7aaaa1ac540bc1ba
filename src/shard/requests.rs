//! Requests this shard sent to other shards and is waiting on: a tiny one-shot rendezvous
//! keyed by request id, resolved by the shard's mesh receiver.

use super::msg::StubRef;
use super::query::Report;
use super::session::SessionState;
use crate::mesh::RequestId;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// What the answers to a request carried back.
#[derive(Debug, Default)]
pub struct Answer {
    /// A session's state (`Handoff`).
    pub state: Option<Box<SessionState>>,
    /// Where that session's stub holds what was published since (`Handoff`).
    pub stub: Option<StubRef>,
    /// Every shard's answer to an operator's question (`Reported`), in arrival order.
    pub reports: Vec<Report>,
}

/// Room the table of pending requests keeps once they are all answered.
const SLOTS_KEPT: usize = 64;

#[derive(Default)]
struct Slot {
    remaining: usize,
    answer: Answer,
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

    /// Records one answer, keeping what it carries, if anything.
    pub fn answer(&self, id: RequestId, answer: Answer) {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(&id) else {
            return;
        };
        slot.remaining = slot.remaining.saturating_sub(1);
        slot.answer.reports.extend(answer.reports);
        if answer.state.is_some() || answer.stub.is_some() {
            slot.answer.state = answer.state;
            slot.answer.stub = answer.stub;
        }
        if slot.remaining == 0 {
            if let Some(waker) = slot.waker.take() {
                waker.wake();
            }
        }
    }

    /// Waits until every answer came; returns what one of them carried.
    pub async fn wait(&self, id: RequestId) -> Answer {
        poll_fn(|cx| {
            let mut slots = self.slots.borrow_mut();
            let Some(slot) = slots.get_mut(&id) else {
                return Poll::Ready(Answer::default());
            };
            if slot.remaining == 0 {
                let answer = slots.remove(&id).map(|s| s.answer).unwrap_or_default();
                if slots.is_empty() && slots.capacity() > SLOTS_KEPT {
                    // A connection storm opens a claim per client at once; the table would
                    // keep that room for the life of the shard (120 bytes per client).
                    *slots = HashMap::new();
                }
                return Poll::Ready(answer);
            }
            slot.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}
