//! Logging refused connections without flooding the log: the first refusal of an address in
//! an interval is logged with its reason; later ones in the same interval are only counted,
//! and the count rides along with the next line logged for that address.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Display;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// An address's refusals are logged at most once per this interval.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Addresses remembered per shard, at most; a flood of addresses past it is logged as one
/// line per interval rather than growing the table.
const ADDRESSES_MAX: usize = 4096;

/// Who was last logged when, and how many refusals were not logged since.
#[derive(Default)]
pub struct RefusalLog {
    seen: RefCell<HashMap<Option<IpAddr>, (Instant, u64)>>,
}

impl RefusalLog {
    /// Logs (at warn) that a connection from `peer` was refused and why, unless that address
    /// was logged less than `REFUSAL_LOG_INTERVAL` ago.
    pub fn refused(&self, peer: Option<IpAddr>, why: impl Display, now: Instant) {
        if let Some(unlogged) = self.note(peer, now) {
            let from = peer.map_or_else(|| "an unknown address".to_string(), |ip| ip.to_string());
            if unlogged == 0 {
                tracing::warn!("connection from {from} refused: {why}");
            } else {
                tracing::warn!("connection from {from} refused: {why} ({unlogged} more refusals of this address not logged in the last interval)");
            }
        }
    }

    /// Records a refusal of `peer`; Some(refusals not logged since the last line) when this
    /// one is to be logged.
    pub fn note(&self, peer: Option<IpAddr>, now: Instant) -> Option<u64> {
        let mut seen = self.seen.borrow_mut();
        if seen.len() >= ADDRESSES_MAX && !seen.contains_key(&peer) {
            seen.retain(|_, (at, _)| now.duration_since(*at) < REFUSAL_LOG_INTERVAL);
            if seen.len() >= ADDRESSES_MAX {
                // Full of addresses logged within the interval: this one waits its turn.
                return None;
            }
        }
        match seen.get_mut(&peer) {
            Some((at, unlogged)) if now.duration_since(*at) < REFUSAL_LOG_INTERVAL => {
                *unlogged += 1;
                None
            }
            Some((at, unlogged)) => {
                *at = now;
                Some(std::mem::take(unlogged))
            }
            None => {
                seen.insert(peer, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_logged_once_per_interval_with_the_count_of_the_rest() {
        let log = RefusalLog::default();
        let a = Some(IpAddr::from([127, 0, 0, 1]));
        let b = Some(IpAddr::from([127, 0, 0, 2]));
        let t = Instant::now();
        assert_eq!(log.note(a, t), Some(0));
        assert_eq!(log.note(a, t + Duration::from_secs(1)), None);
        assert_eq!(log.note(a, t + Duration::from_secs(2)), None);
        // Another address is its own.
        assert_eq!(log.note(b, t + Duration::from_secs(2)), Some(0));
        assert_eq!(log.note(a, t + REFUSAL_LOG_INTERVAL), Some(2));
        assert_eq!(log.note(a, t + REFUSAL_LOG_INTERVAL * 2), Some(0));
    }

    #[test]
    fn the_table_stays_bounded_under_a_flood_of_addresses() {
        let log = RefusalLog::default();
        let t = Instant::now();
        for i in 0..(ADDRESSES_MAX as u32 + 100) {
            log.note(Some(IpAddr::from(i.to_be_bytes())), t);
        }
        assert_eq!(log.seen.borrow().len(), ADDRESSES_MAX);
        // Once the interval passed, old entries make room.
        let later = t + REFUSAL_LOG_INTERVAL;
        assert_eq!(log.note(Some(IpAddr::from([10, 0, 0, 1])), later), Some(0));
        assert_eq!(log.seen.borrow().len(), 1);
    }
}
