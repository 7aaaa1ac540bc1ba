//! The claims of client ids this node has under way, and the hand-over requests they hold:
//! the ordering part of `owners`, apart from the bucket and NATS so it can be tested alone.
//!
//! A claim lasts from before its owner write until this node's shard has installed what the
//! claim answered (or its connection went away). A request of the claimant that replaced the
//! claim's write — a newer claim — waits for that end: answered earlier, it would find no
//! session on the shards while the one this node just took is still on its way to the new
//! connection (in a message between two shards, or in the claim's answer), and the newer
//! claimant would start empty. A request that did not replace the claim's write comes from
//! an older claimant and is answered at once: the session is still where it was. Until the
//! write's revision is known a request may be either, and waits.
//!
//! Whom a write replaced is read from the bucket's own order, not taken from the
//! compare-and-set: nats-server 2.9 (in clustered streams, up to 2.9.20) may accept two
//! writes expecting the same revision when the first is still being replicated, and each
//! writer then believes it replaced that revision. Every node watches the bucket in stream
//! order; the puts of a key seen while a claim of it runs tell which write came just before
//! the claim's own (`predecessor`), once the watch has reached it (`reached`).

use super::moves::Request;
use std::collections::HashMap;

/// Which of this node's claims: handed out by `Claims::begin`.
pub(super) type ClaimId = u64;

/// This node's claims under way, by key (several when connections with one client id came
/// to this node at once).
#[derive(Default)]
pub(super) struct Claims {
    by_key: HashMap<String, Vec<Claim>>,
    next_id: ClaimId,
}

struct Claim {
    id: ClaimId,
    write: Write,
    /// Requests of newer claimants, in their order of arrival.
    waiting: Vec<Request>,
    /// The puts of the key the watch delivered while this claim ran (revision, node), the
    /// latest `PUTS_KEPT`.
    puts: Vec<(u64, String)>,
}

/// Puts of one key kept per claim: more than a storm of claims of one id writes in the time
/// a claim takes, which `owners`' compare-and-set tries bound.
const PUTS_KEPT: usize = 64;

/// A claim's owner write.
#[derive(Clone, Copy)]
enum Write {
    Pending,
    Done {
        revision: u64,
    },
    /// Not written: no claimant can have replaced it.
    Failed,
}

impl Claim {
    /// Whether `request` waits for this claim rather than being answered now.
    fn holds(&self, request: &Request) -> bool {
        match self.write {
            Write::Pending => true,
            Write::Done { revision } => request.replaced == revision,
            Write::Failed => false,
        }
    }
}

impl Claims {
    /// A claim of `key` begins, before its write.
    pub(super) fn begin(&mut self, key: &str) -> ClaimId {
        self.next_id += 1;
        let claim = Claim {
            id: self.next_id,
            write: Write::Pending,
            waiting: Vec::new(),
            puts: Vec::new(),
        };
        self.by_key.entry(key.to_string()).or_default().push(claim);
        self.next_id
    }

    /// Claim `id` of `key` wrote `revision` (None: it could not write). Returns the requests it
    /// held that did not replace that write and no other claim of the key holds: to answer now.
    pub(super) fn written(
        &mut self,
        key: &str,
        id: ClaimId,
        revision: Option<u64>,
    ) -> Vec<Request> {
        let Some(claim) = self.claim(key, id) else {
            return Vec::new();
        };
        claim.write = match revision {
            Some(revision) => Write::Done { revision },
            None => Write::Failed,
        };
        let waiting = std::mem::take(&mut claim.waiting);
        let (held, released): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|r| claim.holds(r));
        claim.waiting = held;
        released
            .into_iter()
            .filter_map(|request| self.arrive(key, request))
            .collect()
    }

    /// A request for `key` arrived: None when one of its claims holds it, otherwise the
    /// request back, to answer now.
    pub(super) fn arrive(&mut self, key: &str, request: Request) -> Option<Request> {
        let claims = self.by_key.get_mut(key);
        match claims.and_then(|claims| claims.iter_mut().find(|c| c.holds(&request))) {
            Some(claim) => {
                claim.waiting.push(request);
                None
            }
            None => Some(request),
        }
    }

    /// Claim `id` of `key` has fetched what the owner it replaced had. Returns the requests of
    /// newer claimants it holds; with any, the claim ends here, superseded (its connection
    /// closes, and what it fetched goes on). With none, it lasts until `end`.
    pub(super) fn fetched(&mut self, key: &str, id: ClaimId) -> Vec<Request> {
        let superseded = self.claim(key, id).is_some_and(|c| !c.waiting.is_empty());
        match superseded {
            true => self.end(key, id),
            false => Vec::new(),
        }
    }

    /// Claim `id` of `key` ended: its shard installed the session, or its connection went
    /// away. Returns the requests it still held, to answer now.
    pub(super) fn end(&mut self, key: &str, id: ClaimId) -> Vec<Request> {
        let Some(claims) = self.by_key.get_mut(key) else {
            return Vec::new();
        };
        let Some(at) = claims.iter().position(|c| c.id == id) else {
            return Vec::new();
        };
        let claim = claims.remove(at);
        if claims.is_empty() {
            self.by_key.remove(key);
        }
        claim.waiting
    }

    /// The watch delivered a put of `key` (written by `node`, at `revision`): recorded for the
    /// claims of the key under way. Returns whether there were any.
    pub(super) fn put_seen(&mut self, key: &str, revision: u64, node: &str) -> bool {
        let Some(claims) = self.by_key.get_mut(key) else {
            return false;
        };
        for claim in claims.iter_mut() {
            if claim.puts.len() == PUTS_KEPT {
                claim.puts.remove(0);
            }
            claim.puts.push((revision, node.to_string()));
        }
        true
    }

    /// Whether the watch has delivered the put at `revision` of claim `id` of `key` (then
    /// every put before it too, as the watch follows the stream's order).
    pub(super) fn reached(&self, key: &str, id: ClaimId, revision: u64) -> bool {
        let claims = self.by_key.get(key).into_iter().flatten();
        let mut claim = claims.filter(|c| c.id == id);
        claim.any(|c| c.puts.iter().any(|(r, _)| *r >= revision))
    }

    /// Which write claim `id`'s write at `revision` replaced, given what its compare-and-set
    /// read (`read`: node and revision, None for a new key): the latest put of the key the
    /// watch delivered between the two, when another write got in (see the module's notes),
    /// otherwise `read`.
    pub(super) fn predecessor(
        &self,
        key: &str,
        id: ClaimId,
        revision: u64,
        read: Option<(String, u64)>,
    ) -> Option<(String, u64)> {
        let after = read.as_ref().map_or(0, |(_, r)| *r);
        let claims = self.by_key.get(key).into_iter().flatten();
        let puts = claims.filter(|c| c.id == id).flat_map(|c| c.puts.iter());
        let between = puts.filter(|(r, _)| *r > after && *r < revision);
        let latest = between.max_by_key(|(r, _)| *r);
        latest.map(|(r, node)| (node.clone(), *r)).or(read)
    }

    /// Whether a claim of `key` is under way.
    pub(super) fn contains(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }

    fn claim(&mut self, key: &str, id: ClaimId) -> Option<&mut Claim> {
        let claims = self.by_key.get_mut(key)?;
        claims.iter_mut().find(|c| c.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c";

    fn request(replaced: u64) -> Request {
        Request {
            reply: async_nats::Subject::from(format!("_INBOX.{replaced}")),
            client_id: KEY.into(),
            wants_state: true,
            replaced,
        }
    }

    fn replaced(requests: &[Request]) -> Vec<u64> {
        requests.iter().map(|r| r.replaced).collect()
    }

    #[test]
    fn an_unwritten_claim_holds_every_request_and_its_write_releases_those_it_did_not_replace() {
        let mut claims = Claims::default();
        let id = claims.begin(KEY);
        for r in [0, 6, 7] {
            assert!(
                claims.arrive(KEY, request(r)).is_none(),
                "undecided: {r} waits"
            );
        }
        assert_eq!(
            replaced(&claims.written(KEY, id, Some(7))),
            [0, 6],
            "older claimants"
        );
        assert_eq!(
            replaced(&claims.fetched(KEY, id)),
            [7],
            "the newer one supersedes it"
        );
        assert!(!claims.contains(KEY), "a superseded claim ends");
    }

    #[test]
    fn a_written_claim_holds_only_the_request_of_the_claimant_that_replaced_its_write() {
        let mut claims = Claims::default();
        let id = claims.begin(KEY);
        assert!(claims.written(KEY, id, Some(7)).is_empty());
        assert!(
            claims.arrive(KEY, request(7)).is_none(),
            "replaced this write: newer"
        );
        assert!(
            claims.arrive(KEY, request(6)).is_some(),
            "replaced an older write"
        );
        assert!(
            claims.arrive(KEY, request(0)).is_some(),
            "found no owner: older"
        );
    }

    #[test]
    fn a_newer_claimant_asking_after_the_fetch_waits_until_the_session_is_installed() {
        let mut claims = Claims::default();
        let id = claims.begin(KEY);
        claims.written(KEY, id, Some(4));
        assert!(
            claims.fetched(KEY, id).is_empty(),
            "no newer claimant yet: it goes on"
        );
        assert!(claims.contains(KEY), "until installed, the claim lasts");
        assert!(
            claims.arrive(KEY, request(4)).is_none(),
            "the session may be between two shards: the request waits"
        );
        assert_eq!(replaced(&claims.end(KEY, id)), [4], "served once installed");
        assert!(!claims.contains(KEY));
        assert!(
            claims.arrive(KEY, request(4)).is_some(),
            "later ones: at once"
        );
    }

    #[test]
    fn a_claim_that_could_not_write_holds_nothing() {
        let mut claims = Claims::default();
        let id = claims.begin(KEY);
        assert!(claims.arrive(KEY, request(0)).is_none());
        assert_eq!(replaced(&claims.written(KEY, id, None)), [0]);
        assert!(claims.arrive(KEY, request(0)).is_some());
        assert!(claims.fetched(KEY, id).is_empty());
        assert!(claims.end(KEY, id).is_empty());
    }

    #[test]
    fn a_request_one_claim_releases_waits_for_another_claim_of_the_key() {
        let mut claims = Claims::default();
        let first = claims.begin(KEY);
        let second = claims.begin(KEY);
        assert!(claims.arrive(KEY, request(9)).is_none());
        assert!(
            claims.written(KEY, first, Some(8)).is_empty(),
            "the second holds it"
        );
        assert_eq!(
            replaced(&claims.written(KEY, second, Some(9))),
            [] as [u64; 0]
        );
        assert!(claims.end(KEY, first).is_empty());
        assert!(claims.contains(KEY), "the second claim still runs");
        assert_eq!(replaced(&claims.fetched(KEY, second)), [9]);
        assert!(!claims.contains(KEY));
    }

    #[test]
    fn a_write_another_slipped_before_replaced_that_one_not_the_revision_it_expected() {
        let mut claims = Claims::default();
        let id = claims.begin(KEY);
        let read = Some(("a".to_string(), 1));
        assert!(
            claims.put_seen(KEY, 2, "b"),
            "b's write, accepted at the same expected 1"
        );
        assert!(
            !claims.reached(KEY, id, 3),
            "this claim's own put not seen yet"
        );
        claims.put_seen(KEY, 3, "a");
        assert!(claims.reached(KEY, id, 3));
        assert_eq!(
            claims.predecessor(KEY, id, 3, read.clone()),
            Some(("b".to_string(), 2)),
            "the stream's order decides"
        );
    }

    #[test]
    fn a_write_nothing_slipped_before_replaced_what_it_read() {
        let mut claims = Claims::default();
        let id = claims.begin(KEY);
        claims.put_seen(KEY, 1, "a");
        claims.put_seen(KEY, 2, "a");
        claims.put_seen(KEY, 3, "b");
        let read = Some(("a".to_string(), 1));
        assert_eq!(
            claims.predecessor(KEY, id, 2, read.clone()),
            read,
            "3 came after"
        );
        assert_eq!(claims.predecessor(KEY, id, 1, None), None, "a new key");
        assert_eq!(
            claims.predecessor(KEY, id, 2, None),
            Some(("a".to_string(), 1)),
            "a create another create slipped before"
        );
    }

    #[test]
    fn requests_for_other_keys_are_answered_at_once() {
        let mut claims = Claims::default();
        claims.begin(KEY);
        let mut other = request(0);
        other.client_id = "d".into();
        assert!(claims.arrive("d", other).is_some());
    }
}
