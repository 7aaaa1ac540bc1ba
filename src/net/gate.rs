//! Who gets in: each listener as its connections see it (anonymous clients or not, TLS
//! certificates), the shard's view of the password and ACL tables, and the slowing down of
//! clients that keep failing to log in.

use super::refusals::RefusalLog;
use super::tls::Certificates;
use super::websocket::Site;
use crate::security::{Shared, Tables};
use crate::shard::session::ReadFilter;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The first refusal of an address is answered after this; each further one in a row waits
/// twice as long, up to `FAILURE_DELAY_MAX`.
const FAILURE_DELAY: Duration = Duration::from_millis(100);
/// The longest a refused login waits for its CONNACK.
const FAILURE_DELAY_MAX: Duration = Duration::from_secs(5);
/// Addresses with recent failures remembered per shard, at most; past it the oldest are
/// forgotten, so a flood of addresses cannot grow the table.
const FAILING_ADDRESSES_MAX: usize = 4096;
/// Failures older than this no longer count.
const FAILURE_MEMORY: Duration = Duration::from_secs(60);

/// One listener as its connections see it.
#[derive(Clone)]
pub struct Endpoint {
    /// Whether clients without credentials are accepted.
    pub allow_anonymous: bool,
    /// The listener's certificates, if it speaks TLS.
    pub tls: Option<Arc<Certificates>>,
    /// The listener's HTTP settings, if it speaks MQTT over WebSocket.
    pub site: Option<Site>,
}

/// A shard's gate: its listeners and its copy of the security tables.
pub struct Gate {
    endpoints: Vec<Endpoint>,
    shared: Arc<Shared>,
    seen: Cell<u64>,
    tables: RefCell<Arc<Tables>>,
    failures: RefCell<HashMap<IpAddr, (u32, Instant)>>,
    /// Logins refused on this shard.
    pub refused: Cell<u64>,
    /// Refused connections, logged once per address per interval.
    pub refusals: RefusalLog,
}

impl Gate {
    /// A gate over `endpoints` (by listener index) checking against `shared`.
    pub fn new(endpoints: Vec<Endpoint>, shared: Arc<Shared>) -> Gate {
        let tables = shared.current();
        Gate {
            endpoints,
            seen: Cell::new(0),
            tables: RefCell::new(tables),
            shared,
            failures: RefCell::default(),
            refused: Cell::new(0),
            refusals: RefusalLog::default(),
        }
    }

    /// The listener with index `index`.
    pub fn endpoint(&self, index: usize) -> Option<&Endpoint> {
        self.endpoints.get(index)
    }

    /// Runs `f` on the tables as they are now: a reload is picked up here, and otherwise it
    /// costs one atomic load (no reference count is touched, so shards never share a cache
    /// line per check).
    pub fn with_tables<R>(&self, f: impl FnOnce(&Tables) -> R) -> R {
        let seen = self
            .shared
            .refresh(self.seen.get(), &mut self.tables.borrow_mut());
        self.seen.set(seen);
        f(&self.tables.borrow())
    }

    /// The current password and ACL tables, to keep (an HTTP request checks its credentials
    /// against them).
    pub fn tables(&self) -> Arc<Tables> {
        self.with_tables(|_| ());
        self.tables.borrow().clone()
    }

    /// What a new session's deliveries are checked against: the current ACL and the
    /// client's username; None without an ACL.
    pub fn read_filter(&self, username: Option<String>) -> Option<ReadFilter> {
        self.with_tables(|t| t.acl.is_some()).then(|| ReadFilter {
            tables: self.tables.borrow().clone(),
            username,
        })
    }

    /// A refused login from `from`: counted, and how long to wait before answering it, so
    /// that guessing passwords from one address gets slower the longer it goes on.
    pub fn note_refusal(&self, from: Option<IpAddr>, now: Instant) -> Duration {
        self.refused.set(self.refused.get() + 1);
        let Some(ip) = from else {
            return FAILURE_DELAY;
        };
        let mut failures = self.failures.borrow_mut();
        if failures.len() >= FAILING_ADDRESSES_MAX {
            failures.retain(|_, (_, at)| now.duration_since(*at) < FAILURE_MEMORY);
            if failures.len() >= FAILING_ADDRESSES_MAX {
                failures.clear();
            }
        }
        let entry = failures.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= FAILURE_MEMORY {
            entry.0 = 0;
        }
        *entry = (entry.0.saturating_add(1), now);
        FAILURE_DELAY
            .saturating_mul(1 << (entry.0 - 1).min(16))
            .min(FAILURE_DELAY_MAX)
    }

    /// A login from `from` succeeded: its failures are forgotten.
    pub fn note_success(&self, from: Option<IpAddr>) {
        if let Some(ip) = from {
            self.failures.borrow_mut().remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::Files;

    #[test]
    fn repeated_refusals_from_one_address_wait_longer_up_to_the_cap() {
        let gate = Gate::new(
            Vec::new(),
            Arc::new(Shared::load(Files::default()).unwrap()),
        );
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        let delays: Vec<Duration> = (0..8).map(|_| gate.note_refusal(Some(ip), now)).collect();
        assert_eq!(delays[0], FAILURE_DELAY);
        assert_eq!(delays[1], FAILURE_DELAY * 2);
        assert_eq!(*delays.last().unwrap(), FAILURE_DELAY_MAX);
        assert_eq!(gate.refused.get(), 8);
        let later = now + FAILURE_MEMORY;
        assert_eq!(
            gate.note_refusal(Some(ip), later),
            FAILURE_DELAY,
            "forgotten after a while"
        );
        gate.note_success(Some(ip));
        assert_eq!(gate.note_refusal(Some(ip), later), FAILURE_DELAY);
    }
}
