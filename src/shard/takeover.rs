//! Client-id takeover. The home shard of a client id (`home_shard`) records which shard holds
//! it, so a second connection with the same id on any shard takes over the first: the new
//! connection's shard sends `Claim` to the home, the home sends `Evict` to the holder, the
//! holder closes the old connection and sends `Handoff` (with the session state when it is
//! persistent) to the new one.
//!
//! Races are settled by connection tokens: `Evict` names the holder's token; a holder whose own
//! claim is still unanswered hands what it receives on to the newer claimant and closes; a
//! connection is attached only if its session was not taken over while it was announcing its
//! subscriptions. So of any number of simultaneous connects with one client id exactly one
//! survives, with the session.

use super::carry::arrived;
use super::msg::{Claim, Evict, Handoff, MeshMsg, Release, StubRef};
use super::requests::Answer;
use super::session::{Session, SessionState};
use super::subscriptions::{add_subscription, drop_subscriptions, forget_session};
use super::{SessionKey, Shard};
use crate::cluster::Claimed;
use crate::mesh::ShardId;
use crate::protocol::{ReasonCode, Will};

/// Which shard keeps the registry entry of a client id.
pub fn home_shard(client_id: &str, shards: usize) -> ShardId {
    crate::mesh::shard_of(client_id, shards)
}

/// A claim lost to a newer connection with the same client id, made while it was pending.
#[derive(Debug)]
pub struct Superseded;

/// Who holds a client id, as its home shard records it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Owner {
    pub(super) shard: ShardId,
    pub(super) token: u64,
}

impl Shard {
    /// Takes the client id: first in the cluster (the node that held it hands its session
    /// over, or drops it), then on this node through the id's home shard. Returns the old
    /// session's state when it was persistent and `wants_state` is set; any other holder is
    /// closed. Of the cluster and this node, the owner record decides whose copy counts: a
    /// session that another node held replaces whatever this node still had for the id.
    ///
    /// The caller installs what this returns before its next await (`install`): the cluster
    /// holds another node's newer claim of the id until this returns, so that claim finds the
    /// session on the shard that holds it then, not between two shards.
    pub async fn claim(
        &self,
        client_id: &str,
        token: u64,
        wants_state: bool,
    ) -> Result<Option<Box<SessionState>>, Superseded> {
        // Tells the cluster the session is installed: dropped when this returns, on every path
        // (the connection gone included). Made only with a cluster: a channel per CONNECT.
        let mut _installing = None;
        // Boxed, as the rare wait below: every CONNECT's future holds this one's state.
        let claimed = match self.cluster {
            None => Claimed::Kept,
            Some(_) => {
                let (installing, installed) = tokio::sync::oneshot::channel();
                _installing = Some(installing);
                Box::pin(self.cluster_claim(client_id, wants_state, installed)).await
            }
        };
        let moved = match claimed {
            Claimed::Kept => None,
            Claimed::Moved(session) => Some(session),
            Claimed::Superseded => return Err(Superseded),
        };
        let home = home_shard(client_id, self.shards);
        if home == self.id() && moved.is_none() && self.claim_unheld_here(client_id, token) {
            return Ok(None);
        }
        let request = self.requests.open(1);
        self.claims.borrow_mut().insert(token, None);
        let claim = Claim {
            client_id: client_id.to_string(),
            from: self.id(),
            token,
            request,
            wants_state: wants_state && moved.is_none(),
        };
        self.mesh.send(home, MeshMsg::Claim(claim)).await;
        let mut answer = self.requests.wait(request).await;
        if let Some(session) = moved {
            let wanted = session.filter(|_| wants_state);
            answer.state = wanted.and_then(|bytes| arrived(&bytes, client_id));
        }
        let newer = self.claims.borrow_mut().remove(&token).flatten();
        if let Some(newer) = newer {
            Box::pin(self.hand_on(newer, answer)).await;
            return Err(Superseded);
        }
        if let Some(stub) = answer.stub {
            // Until `announce` settles the stub, a newer claim waits as for an open claim.
            self.claims.borrow_mut().insert(token, None);
            self.state.borrow_mut().arriving.insert(token, stub);
        }
        Ok(answer.state)
    }

    /// Records `token` as the holder of `client_id` at once when this shard is the id's home,
    /// no connection holds the id and none of this shard's claims is pending; false
    /// otherwise. The home's answer to such a claim is "nothing to hand over", which the mesh
    /// round trip to itself gave a task switch later: in a storm of connections thousands of
    /// CONNECTs' states (a 2.3 KB future each) then waited at once, and once freed left holes
    /// between the sessions made meanwhile (glibc's malloc_info after a storm of 19,000:
    /// 12,629 free chunks of ~2.4 KB). A claim of this shard still in flight keeps the order:
    /// the later connection must win.
    fn claim_unheld_here(&self, client_id: &str, token: u64) -> bool {
        if !self.claims.borrow().is_empty() {
            return false;
        }
        let mut st = self.state.borrow_mut();
        if st.registry.contains_key(client_id) {
            return false;
        }
        let owner = Owner {
            shard: self.id(),
            token,
        };
        st.registry.insert(client_id.into(), owner);
        true
    }

    /// Passes what a superseded claim was handed on to the newer claimant, so a persistent
    /// session survives the race; a stub the newer one does not want is settled (emptied).
    async fn hand_on(&self, newer: Evict, answer: Answer) {
        let (state, stub) = match newer.wants_state {
            true => (answer.state, answer.stub),
            false => (None, None),
        };
        let handoff = Handoff {
            request: newer.request,
            state,
            stub,
        };
        self.mesh.post(newer.to, MeshMsg::Handoff(handoff));
        if let (false, Some(stub)) = (newer.wants_state, answer.stub) {
            self.settle(stub).await;
        }
    }

    /// The answer to a claim (or to a `Settle`).
    pub(super) fn on_handoff(&self, handoff: Handoff) {
        let Handoff {
            request,
            state,
            stub,
        } = handoff;
        self.requests.answer(
            request,
            Answer {
                state,
                stub,
                ..Answer::default()
            },
        );
    }

    /// Installs a session for a new connection and returns its key, with the filters its
    /// restored subscriptions add to this shard (for `announce`).
    pub fn install(
        &self,
        mut session: Session,
        state: Option<Box<SessionState>>,
    ) -> (SessionKey, Vec<String>) {
        let mut st = self.state.borrow_mut();
        st.next_key += 1;
        let key = st.next_key;
        let mut new_filters = Vec::new();
        session.pressure = self.pressure.clone();
        let mut is_arriving = false;
        if let Some(state) = state {
            if let Some(stub) = st.arriving.remove(&session.conn_token) {
                self.hold_arrival(&mut st, key, session.conn_token, &state, stub);
                is_arriving = true;
            }
            session.restore(*state);
            for (filter, sub) in &session.subscriptions {
                if add_subscription(&mut st, self.id(), key, filter, *sub) {
                    new_filters.push(filter.clone());
                }
            }
        }
        // An arriving session is recorded once it settles (`handoff::open_journal`).
        let is_unstored = session.is_persistent && session.journal.is_none() && !is_arriving;
        if let Some(persist) = self.persist.as_ref().filter(|_| is_unstored) {
            session.open_journal(persist);
        }
        st.by_client.insert(session.client_id.clone(), key);
        st.sessions.insert(key, Box::new(session));
        (key, new_filters)
    }

    /// Home-shard role: record the new holder and have the old one evicted.
    pub(super) fn on_claim(&self, claim: Claim) {
        let Claim {
            client_id,
            from,
            token,
            request,
            wants_state,
        } = claim;
        let owner = Owner { shard: from, token };
        let mut st = self.state.borrow_mut();
        let Some(old) = st.registry.insert(client_id.as_str().into(), owner) else {
            let handoff = Handoff {
                request,
                state: None,
                stub: None,
            };
            self.mesh.post(from, MeshMsg::Handoff(handoff));
            return;
        };
        let evict = Evict {
            client_id,
            token: old.token,
            to: from,
            request,
            wants_state,
        };
        self.mesh.post(old.shard, MeshMsg::Evict(evict));
    }

    /// Closes this shard's session of the evicted client id (a newer connection took it
    /// over) and hands its state to the new connection's shard when asked and the session
    /// was persistent.
    pub(super) async fn on_evict(&self, evict: Evict) {
        if let Some(pending) = self.claims.borrow_mut().get_mut(&evict.token) {
            // The holder is still waiting for its own claim's answer: the newer claim wins,
            // and the holder hands on what it receives when that answer arrives.
            *pending = Some(evict);
            return;
        }
        let (state, stub, will) = self.evict_session(&evict);
        let handoff = Handoff {
            request: evict.request,
            state,
            stub,
        };
        self.mesh.post(evict.to, MeshMsg::Handoff(handoff));
        if let Some(will) = will {
            self.publish_will(will).await;
        }
    }

    /// Removes the session `evict` names, if this shard still holds it: its connection gets
    /// DISCONNECT 0x8E (5.0) and closes. Returns its state and the stub left for what is
    /// published until the new holder settles (when asked for and the session was
    /// persistent), and the will due now.
    fn evict_session(
        &self,
        evict: &Evict,
    ) -> (Option<Box<SessionState>>, Option<StubRef>, Option<Will>) {
        let mut st = self.state.borrow_mut();
        let token = evict.token;
        // A will waiting for its delay is cancelled by the reconnect [MQTT-3.1.3-9].
        st.pending_wills.remove(&token);
        let key = st.by_client.get(evict.client_id.as_str()).copied();
        let key = key.filter(|k| st.sessions.get(k).is_some_and(|s| s.conn_token == token));
        let Some(key) = key else {
            return (None, None, None);
        };
        let Some(mut session) = forget_session(&mut st, key) else {
            return (None, None, None);
        };
        let keeps_state = evict.wants_state && session.is_persistent;
        let (gone, stub) = if keeps_state {
            let (gone, stub) = self.leave_stub(&mut st, key, &session);
            (gone, Some(stub))
        } else {
            let filters = session.subscriptions.keys();
            (drop_subscriptions(&mut st, self.id(), key, filters), None)
        };
        drop(st);
        self.withdraw(key, gone);
        let will = self.close_taken_over(&mut session);
        if keeps_state {
            // No `End`: the session lives on at its new shard, whose `Open` stamps later.
            return (Some(Box::new(session.take_state())), stub, will);
        }
        session.note_end();
        self.requeue_shared(session.take_unfinished_shared());
        (None, None, will)
    }

    /// Closes the connection of a session taken over; returns its will if due now.
    pub(super) fn close_taken_over(&self, session: &mut Session) -> Option<Will> {
        let enc = &mut self.state.borrow_mut().enc;
        if !session.close_connection(ReasonCode::SESSION_TAKEN_OVER, enc) {
            return None;
        }
        // A will with a delay is not due: the client is back within it.
        session
            .will
            .take()
            .map(|w| *w)
            .filter(|w| w.properties.will_delay_interval.unwrap_or(0) == 0)
    }

    /// Home-shard role: the session of connection `token` ended, so the client id is free
    /// (unless a newer connection holds it already).
    pub(super) fn on_release(&self, release: Release) {
        let mut st = self.state.borrow_mut();
        let registry = &mut st.registry;
        if registry
            .get(release.client_id.as_str())
            .is_some_and(|o| o.token == release.token)
        {
            registry.remove(release.client_id.as_str());
        }
    }
}
