//! Everything one core owns: its connections' sessions, its subscription trie, its view of
//! which other shards want which filters, and its replica of the retained messages.
//!
//! Shard state is `!Send` and never leaves its thread; other shards reach it only through
//! `MeshMsg`s, which `Shard::on_message` hands to the module of their concept.
//!
//! Module map, one line per submodule:
//! - `message`: `Message`, a PUBLISH as the broker routes it.
//! - `msg`: `MeshMsg`, everything one shard can tell another, one struct per message.
//! - `cluster`: what the shard tells the NATS thread and takes from it (`crate::cluster`).
//! - `routing`: a publish to local subscribers, interested shards and retained replicas.
//! - `shared`: shared subscriptions (`$share/group/filter`): groups, one member per message.
//! - `subscriptions`: subscribe, unsubscribe, and the interest other shards are told of.
//! - `takeover`: client-id claims at the home shard, eviction, the session handed over.
//! - `handoff`: what is published while a session moves between shards, held until it lands.
//! - `moving`: a session given up to another cluster node, or dropped because it moved.
//! - `carry`: a session written out for another node in the store's record schema.
//! - `lifecycle`: disconnect, session expiry, wills, shutdown.
//! - `lazy`: a collection allocated only while it holds something; a boxed slice grown by one.
//! - `session`: a client's session: subscriptions, the QoS 1/2 window, the queue behind it.
//! - `subscription`: one subscription's options as sessions, the trie and the store keep them.
//! - `persist`: what the store's records mean (the schema) and the journal that writes them.
//! - `replay`: a store file's records applied back into retained messages and sessions.
//! - `restore`: start-up placement of what replay found; the live state for compaction.
//! - `overflow`: what happens to a message at one subscriber's bound.
//! - `backpressure`: when the shard's publishers wait (ceiling share, lagging subscribers).
//! - `outbox`: the encoded frames waiting for one socket.
//! - `encoder`: a fanned-out PUBLISH encoded once per (version, QoS, retain).
//! - `trie`: topic filters with `+` and `#`, matched without allocating.
//! - `retained`: the retained messages by topic level.
//! - `cursor`: where a new subscription's retained delivery stands, and the walk over them.
//! - `feeder`: feeding a session its retained messages as its connection makes room.
//! - `requests`: answers this shard waits for from other shards.
//! - `query`: operators' questions to every shard and the answers, as plain data.
//! - `inspect`: asking every shard a `query`, and answering one.
//! - `sys`: the `$SYS` topics.

pub mod backpressure;
pub mod carry;
pub mod cluster;
pub mod cursor;
pub mod encoder;
mod feeder;
mod handoff;
mod inspect;
mod lazy;
mod lifecycle;
pub mod message;
mod moving;
pub mod msg;
pub mod outbox;
pub mod overflow;
pub mod persist;
pub mod query;
pub mod replay;
pub mod requests;
pub mod restore;
pub mod retained;
mod routing;
pub mod session;
mod shared;
pub mod subscription;
mod subscriptions;
pub mod sys;
mod takeover;
pub mod trie;

pub use message::Message;
pub use shared::SHARE_PREFIX;
pub use takeover::Superseded;

use crate::config::reload::LiveLimits;
use crate::config::Limits;
use crate::mesh::{Mesh, ShardId};
use crate::metrics::Metrics;
use crate::protocol::{Packet, Version, Will};
use backpressure::Pressure;
use encoder::Encoder;
use handoff::{Held, Stub};
use msg::{Evict, MeshMsg, StubRef};
use requests::{Answer, Requests};
use retained::Retained;
use routing::Routes;
use session::{Session, Subscription};
use shared::Group;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use takeover::Owner;
use trie::Trie;

/// The shard's hash map: aHash, keyed per process, so crafted client ids and topic levels
/// cannot collide on purpose; several times faster than the standard SipHash on the
/// per-subscriber session lookups of a fan-out.
pub type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

/// Local handle of a session in this shard.
pub type SessionKey = u64;

/// The mutable state of a shard.
#[derive(Default)]
pub struct State {
    /// Boxed: a hash table keeps about as many empty slots as full ones, each of the size of
    /// its value.
    sessions: HashMap<SessionKey, Box<Session>>,
    by_client: HashMap<Rc<str>, SessionKey>,
    next_key: SessionKey,
    trie: Trie<SessionKey, Subscription>,
    /// Shared subscriptions by `$share/group/filter`, with every member on every shard.
    groups: HashMap<String, Group>,
    /// Filter part of each shared subscription → its `$share/group/filter` name.
    group_trie: Trie<String, ()>,
    /// Filters other shards subscribe to.
    interest: Trie<ShardId, ()>,
    retained: Retained,
    /// Home-shard role: where each client id homed here is held.
    registry: HashMap<Box<str>, Owner>,
    enc: Encoder,
    matched: trie::Matched<SessionKey, Subscription>,
    /// Pending will publications (delayed by Will Delay Interval), by connection token.
    pending_wills: HashMap<u64, (Will, std::time::Instant)>,
    /// What the subscriptions of sessions moving between shards matched meanwhile: a stub's
    /// on the shard the session left, an arrival's on the shard it came to.
    held: HashMap<SessionKey, Held>,
    /// Sessions handed to another shard, until the new holder settles.
    stubs: HashMap<SessionKey, Stub>,
    /// Sessions installed here from another shard's stub, until settled, with their token.
    arrivals: HashMap<SessionKey, (StubRef, u64)>,
    /// Tasks waiting for arrivals to settle (`arrivals_settled`), woken at each settle.
    settle_waiters: Vec<std::task::Waker>,
    /// Claims answered with a stub, by connection token, until the session is installed.
    arriving: HashMap<u64, StubRef>,
}

/// One shard.
pub struct Shard {
    /// Shard count.
    pub shards: usize,
    /// Messages to other shards.
    pub mesh: Rc<Mesh<MeshMsg>>,
    /// Limits from the configuration.
    pub limits: Limits,
    /// Counters.
    pub metrics: Metrics,
    /// Requests waiting on other shards.
    pub requests: Requests,
    /// Bytes held for this shard's subscribers against its ceiling share; drop counters.
    pub pressure: Rc<Pressure>,
    state: RefCell<State>,
    next_token: Cell<u64>,
    /// Routes under way, so a handoff's `Settle` waits for those that started before it.
    routes: RefCell<Routes>,
    /// Claims of this shard's connections (by token) not yet answered (or whose session has
    /// not settled its stub yet); holds the eviction once a newer claim of the same client id
    /// superseded them.
    claims: RefCell<HashMap<u64, Option<Evict>>>,
    open_connections: Arc<AtomicUsize>,
    /// The limits SIGHUP may change, for connections that start from now on.
    live: Option<Arc<LiveLimits>>,
    connection_limits: RefCell<Arc<Limits>>,
    live_seen: Cell<u64>,
    /// The way to the NATS thread on a cluster node (`cluster`).
    cluster: Option<crate::cluster::Uplink>,
    /// This shard's journal over its store, when persistence is on.
    pub persist: Option<Rc<persist::Persist>>,
    /// Per shard: whether it has stored a session since start (set once, never cleared), so
    /// a QoS 1/2 publish waits for durable answers only from shards that may store it.
    pub journaled: Option<Arc<[std::sync::atomic::AtomicBool]>>,
}

impl Shard {
    /// A shard with no clients yet.
    pub fn new(
        mesh: Rc<Mesh<MeshMsg>>,
        shards: usize,
        limits: Limits,
        open_connections: Arc<AtomicUsize>,
        pressure: Pressure,
    ) -> Shard {
        Shard {
            shards,
            mesh,
            connection_limits: RefCell::new(Arc::new(limits.clone())),
            live: None,
            live_seen: Cell::new(0),
            limits,
            metrics: Metrics::default(),
            requests: Requests::default(),
            pressure: Rc::new(pressure),
            state: RefCell::new(State::default()),
            next_token: Cell::new(0),
            routes: RefCell::default(),
            claims: RefCell::default(),
            open_connections,
            cluster: None,
            persist: None,
            journaled: None,
        }
    }

    /// This shard, taking the limits of new connections from `live` (reloaded on SIGHUP).
    pub fn following(mut self, live: Arc<LiveLimits>) -> Shard {
        self.connection_limits = RefCell::new(live.current());
        self.live = Some(live);
        self
    }

    /// The limits a connection starting now gets (a reload is picked up here; otherwise it
    /// costs one atomic load).
    pub fn connection_limits(&self) -> Arc<Limits> {
        if let Some(live) = &self.live {
            let seen = live.refresh(
                self.live_seen.get(),
                &mut self.connection_limits.borrow_mut(),
            );
            self.live_seen.set(seen);
        }
        self.connection_limits.borrow().clone()
    }

    /// The shard of a cluster node: it tells the NATS thread through `uplink`.
    pub fn with_cluster(mut self, uplink: Option<crate::cluster::Uplink>) -> Shard {
        self.cluster = uplink;
        self
    }

    /// Bit set of the shards that have stored a session since start.
    pub fn journaled_shards(&self) -> u64 {
        let Some(flags) = &self.journaled else {
            return 0;
        };
        flags
            .iter()
            .enumerate()
            .filter(|(_, f)| f.load(Ordering::Acquire))
            .fold(0, |bits, (i, _)| bits | 1 << i)
    }

    /// Whether more connections are open than `limits.connections_max` allows.
    pub fn is_over_connection_limit(&self) -> bool {
        let max = self.connection_limits().connections_max;
        self.open_connections.load(Ordering::Relaxed) > max
    }

    /// A connection of this shard has ended.
    pub fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// This shard's id.
    pub fn id(&self) -> ShardId {
        self.mesh.id()
    }

    /// A connection token unique across shards.
    pub fn new_token(&self) -> u64 {
        let n = self.next_token.get() + 1;
        self.next_token.set(n);
        (n << 16) | self.id() as u64
    }

    /// Runs `f` on a session of this shard, if it still belongs to connection `token`.
    pub fn with_session<R>(
        &self,
        key: SessionKey,
        token: u64,
        f: impl FnOnce(&mut Session, &Limits, &mut Encoder) -> R,
    ) -> Option<R> {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let session = st
            .sessions
            .get_mut(&key)
            .filter(|s| s.conn_token == token)?;
        Some(f(session, &self.limits, &mut st.enc))
    }

    /// Encodes a control packet into `outbox` through the shard's scratch buffer: one per
    /// shard, so an idle connection holds no encoding buffer of its own.
    pub fn push_packet(&self, outbox: &outbox::Outbox, packet: &Packet, version: Version) {
        self.state
            .borrow_mut()
            .enc
            .push_packet(outbox, packet, version);
    }

    /// Handles a message from another shard (or from this one).
    pub async fn on_message(self: &Rc<Self>, msg: MeshMsg) {
        match msg {
            MeshMsg::Publish(message) => self.on_publish(message).await,
            MeshMsg::PublishRun(run) => self.on_publish_run(run).await,
            MeshMsg::PublishDurable(message, from, request) => {
                self.on_publish_durable(message, from, request).await
            }
            MeshMsg::Retain(retain) => self.on_retain(retain),
            MeshMsg::ShareJoin(join) => self.on_share_join(join),
            MeshMsg::ShareLeave(leave) => self.on_share_leave(leave),
            MeshMsg::ShareDeliver(deliver) => self.on_share_deliver(deliver),
            MeshMsg::InterestAdd(add) => self.on_interest_add(add),
            MeshMsg::InterestRemove(remove) => self.on_interest_remove(remove),
            MeshMsg::InterestAck(ack) => self.requests.answer(ack.request, Answer::default()),
            MeshMsg::Claim(claim) => self.on_claim(claim),
            MeshMsg::Evict(evict) => self.on_evict(evict).await,
            MeshMsg::Handoff(handoff) => self.on_handoff(handoff),
            MeshMsg::Release(release) => self.on_release(release),
            MeshMsg::Settle(settle) => self.on_settle(settle),
            MeshMsg::Settled(settle) => self.on_settled(settle),
            MeshMsg::Inspect(inspect) => self.on_inspect(*inspect),
            MeshMsg::Reported(reported) => self.on_reported(*reported),
            // Placing a connection is the server's (`server::dispatch`); never routed here.
            MeshMsg::Accepted(..) => {}
        }
    }
}
