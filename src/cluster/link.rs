//! The NATS thread: one async-nats client on a current-thread tokio runtime.
//!
//! - Interest: a NATS subscription per filter that some local shard subscribes to, counted
//!   across shards, so a message crosses to this node only if something here wants it.
//! - Publishes: each message of a local client goes to its topic's subject once; NATS drops
//!   it at the first server when no node subscribes, and the client's `no_echo` keeps it
//!   from coming back here (no loop).
//! - A message matching two overlapping filters of this node arrives once per filter; an id
//!   header (`Rc-Id`) lets the second arrival be dropped before any shard sees it.
//! - Retained messages: a JetStream KV bucket keyed by `subject::topic_key`, watched from
//!   its current values on, so every node's replica follows every other node's writes.

use super::bucket::open_bucket;
use super::owners::Owners;
use super::props;
use super::subject::{
    filter_subjects, key_topic, queue_group, subject_topic, topic_key, topic_subject,
};
use super::{Command, Inbound};
use crate::config::ClusterConfig;
use crate::protocol::topic::split_shared;
use crate::protocol::{MqttString, Publish, QoS};
use async_nats::jetstream::kv;
use async_nats::{Client, HeaderMap};
use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::StreamExt;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Header naming a message uniquely (`node/sequence`), to drop overlapping arrivals.
const ID_HEADER: &str = "Rc-Id";
/// Header with the QoS digit and the RETAIN flag (`1r`, `0-`).
const FLAGS_HEADER: &str = "Rc-Flags";
/// Bucket of retained messages.
const RETAINED_BUCKET: &str = "ringcast_retained";
/// Message ids remembered to drop overlapping arrivals: they arrive back to back, one per
/// matching subscription, so a short memory suffices.
const SEEN_MAX: usize = 4096;

/// How long `round_trip` waits for the server's answer before asking again.
const ROUND_TRIP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the thread until every shard's uplink is gone.
pub(super) fn run(
    config: ClusterConfig,
    commands: mpsc::Receiver<Command>,
    shards: Vec<mpsc::Sender<Inbound>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cluster: cannot start the NATS runtime: {e}");
            return;
        }
    };
    // A LocalSet: the owners' watcher shares state with the thread's main task (`Rc`).
    tokio::task::LocalSet::new().block_on(&runtime, serve(config, commands, shards));
}

/// Connects to NATS. `is_echo`: whether this connection receives what it publishes itself.
async fn connect(config: &ClusterConfig, is_echo: bool) -> Option<Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("ringcast-{}", config.node))
        .retry_on_initial_connect()
        // The first URL is this node's own NATS server (usually on its machine): keep it first.
        .retain_servers_order();
    if !is_echo {
        options = options.no_echo();
    }
    options
        .connect(config.nats.as_slice())
        .await
        .map_err(|e| tracing::error!("cluster: cannot connect to NATS: {e}"))
        .ok()
}

async fn serve(
    config: ClusterConfig,
    mut commands: mpsc::Receiver<Command>,
    shards: Vec<mpsc::Sender<Inbound>>,
) {
    // Publishes and plain subscriptions share a connection that does not echo (a message
    // never comes back to its node); queue groups need one that does, since NATS may pick
    // this node's own member of a shared subscription.
    let (Some(client), Some(queues)) =
        (connect(&config, false).await, connect(&config, true).await)
    else {
        return;
    };
    let (arrivals, arrival_rx) = mpsc::channel(config.queue_messages_max);
    tokio::spawn(dispatch(arrival_rx, shards.clone()));
    // JetStream may take seconds to come up (a new NATS cluster elects its leader first):
    // the buckets open in a task of their own, so subscriptions and publishes never wait.
    let (buckets, bucket_rx) = mpsc::channel(config.queue_messages_max);
    tokio::task::spawn_local(keep_buckets(
        client.clone(),
        config.clone(),
        shards,
        bucket_rx,
    ));
    let mut link = Link {
        client,
        queues,
        node: config.node.clone(),
        sync_subject: format!("rc.n.{}.sync", config.node),
        sequence: 0,
        subscriptions: HashMap::new(),
        arrivals,
        buckets,
        unconfirmed: Vec::new(),
    };
    let stats = link.client.statistics();
    while let Some(command) = commands.recv().await {
        let connects = stats.connects.load(Ordering::Relaxed);
        let mut acks = Vec::new();
        link.handle(command, &mut acks).await;
        // Take what queued meanwhile, so one flush answers a batch of QoS 1/2 publishes.
        while let Ok(command) = commands.try_recv() {
            link.handle(command, &mut acks).await;
        }
        if !acks.is_empty() {
            link.flush_until_received(connects).await;
            for ack in acks {
                let _ = ack.send(true);
            }
        }
    }
}

/// The NATS thread's state.
struct Link {
    client: Client,
    /// The connection of the queue groups (`$share`), which echoes.
    queues: Client,
    node: String,
    /// Where `round_trip` asks (no one answers there).
    sync_subject: String,
    sequence: u64,
    /// Per filter: how many shards subscribe, and the tasks reading its NATS subscriptions.
    subscriptions: HashMap<String, (usize, Vec<JoinHandle<()>>)>,
    /// Where the subscription tasks hand what arrives (with the shared subscription it
    /// arrived for, if any).
    arrivals: mpsc::Sender<Arrival>,
    /// Retained changes and client-id claims, for `keep_buckets`.
    buckets: mpsc::Sender<Command>,
    /// QoS 1/2 publishes of the batch being confirmed, sent again if the connection to the
    /// NATS server changed before it confirmed them (what was written to a server that died
    /// is gone, and the new server's answer to a ping says nothing about it).
    unconfirmed: Vec<Outgoing>,
}

/// One message as handed to NATS.
#[derive(Clone)]
struct Outgoing {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
}

impl Link {
    async fn handle(&mut self, command: Command, acks: &mut Vec<oneshot::Sender<bool>>) {
        match command {
            Command::Publish {
                publish,
                expires_at,
                done,
            } => {
                if let Some(outgoing) = self.outgoing(&publish, expires_at) {
                    // Only a QoS 1/2 publish may have to be sent again: QoS 0 keeps no copy.
                    if done.is_some() {
                        self.unconfirmed.push(outgoing.clone());
                    }
                    self.send(outgoing).await;
                }
                acks.extend(done);
            }
            Command::Subscribe { filters, done } => {
                for filter in filters {
                    self.subscribe(filter).await;
                }
                // The server has the subscriptions once it answered a request sent after them.
                if let Err(e) = round_trip(&self.client, &self.sync_subject).await {
                    tracing::warn!("cluster: NATS has not confirmed new subscriptions yet: {e}");
                }
                let _ = done.send(());
            }
            Command::Unsubscribe { filters } => {
                for filter in filters {
                    self.unsubscribe(&filter);
                }
            }
            command @ (Command::Retain { .. }
            | Command::Claim { .. }
            | Command::Restored { .. }) => {
                let _ = self.buckets.send(command).await;
            }
        }
    }

    /// Waits until the NATS server has everything published so far. While no server is
    /// reachable the client keeps what was published and this waits (so do the publishers
    /// behind it); when the client reconnected meanwhile, the batch is published again (the
    /// receivers drop what they already had by its id): a QoS 1/2 PUBACK is never sent for a
    /// message NATS did not take.
    async fn flush_until_received(&mut self, mut connects: u64) {
        let stats = self.client.statistics();
        loop {
            let confirmed = round_trip(&self.client, &self.sync_subject).await;
            let now = stats.connects.load(Ordering::Relaxed);
            match confirmed {
                Ok(()) if now == connects => break,
                Ok(()) => tracing::warn!("cluster: NATS reconnected, publishing the batch again"),
                Err(e) => {
                    tracing::warn!(
                        "cluster: NATS has not confirmed the last publishes, retrying: {e}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
            connects = now;
            for outgoing in self.unconfirmed.clone() {
                self.send(outgoing).await;
            }
        }
        self.unconfirmed.clear();
    }

    /// `publish` as NATS message, or None when it expired on the way.
    fn outgoing(&mut self, publish: &Publish, expires_at: Option<Instant>) -> Option<Outgoing> {
        let Ok(props) = props::encode(&publish.properties, expires_at, Instant::now()) else {
            return None; // expired on the way: not forwarded
        };
        self.sequence += 1;
        let mut headers = HeaderMap::new();
        if let Some(props) = props {
            headers.insert(props::HEADER, props.as_str());
        }
        headers.insert(
            ID_HEADER,
            format!("{}/{}", self.node, self.sequence).as_str(),
        );
        let flags = format!(
            "{}{}",
            publish.qos as u8,
            if publish.retain { 'r' } else { '-' }
        );
        headers.insert(FLAGS_HEADER, flags.as_str());
        Some(Outgoing {
            subject: topic_subject(publish.topic.as_str()),
            headers,
            payload: publish.payload.clone(),
        })
    }

    async fn send(&self, outgoing: Outgoing) {
        let Outgoing {
            subject,
            headers,
            payload,
        } = outgoing;
        if let Err(e) = self
            .client
            .publish_with_headers(subject, headers, payload)
            .await
        {
            tracing::warn!("cluster: publish to NATS failed: {e}");
        }
    }

    async fn subscribe(&mut self, filter: String) {
        if let Some((count, _)) = self.subscriptions.get_mut(&filter) {
            *count += 1;
            return;
        }
        // A shared subscription is a queue group named after all of `group/filter`: MQTT's
        // `$share/g/a` and `$share/g/b` are two subscriptions, one NATS queue name would be one.
        let shared = split_shared(&filter);
        let queue = shared.map(|(group, plain)| queue_group(&format!("{group}/{plain}")));
        let share: Option<Arc<str>> = shared.map(|_| Arc::from(filter.as_str()));
        let mut tasks = Vec::new();
        for subject in filter_subjects(shared.map_or(filter.as_str(), |(_, plain)| plain)) {
            let subscribed = match &queue {
                Some(queue) => self.queues.queue_subscribe(subject, queue.clone()).await,
                None => self.client.subscribe(subject).await,
            };
            match subscribed {
                Ok(subscriber) => {
                    let forward = forward(subscriber, share.clone(), self.arrivals.clone());
                    tasks.push(tokio::spawn(forward));
                }
                Err(e) => tracing::warn!("cluster: cannot subscribe to {filter:?}: {e}"),
            }
        }
        self.subscriptions.insert(filter, (1, tasks));
    }

    fn unsubscribe(&mut self, filter: &str) {
        let Some((count, _)) = self.subscriptions.get_mut(filter) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            // Dropping a subscriber (with its task) unsubscribes it in NATS.
            if let Some((_, tasks)) = self.subscriptions.remove(filter) {
                tasks.iter().for_each(JoinHandle::abort);
            }
        }
    }
}

/// A message from NATS, with the shared subscription whose queue group it came through.
type Arrival = (Option<Arc<str>>, async_nats::Message);

/// Hands what one NATS subscription receives to `dispatch`.
/// Waits for the NATS server to answer a request sent on `client` after everything written
/// so far. A server handles one connection's messages in order, so once it answered it has
/// taken them (`Client::flush` only writes the client's buffer into the socket: what sits in
/// the socket of a server that just died is lost). Nobody subscribes to `subject`, so the
/// server itself answers "no responders".
async fn round_trip(client: &Client, subject: &str) -> Result<(), async_nats::RequestError> {
    let request = async_nats::Request::new().timeout(Some(ROUND_TRIP_WAIT));
    match client.send_request(subject.to_string(), request).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
        Err(e) => Err(e),
    }
}

async fn forward(
    mut subscriber: async_nats::Subscriber,
    share: Option<Arc<str>>,
    arrivals: mpsc::Sender<Arrival>,
) {
    while let Some(message) = subscriber.next().await {
        if arrivals.send((share.clone(), message)).await.is_err() {
            return;
        }
    }
}

/// Hands each message that arrived from NATS to one shard (by topic, so one topic's messages
/// keep their order), once, however many of this node's subscriptions it matched (and once
/// more per shared subscription that NATS picked this node for).
async fn dispatch(mut arrivals: mpsc::Receiver<Arrival>, shards: Vec<mpsc::Sender<Inbound>>) {
    let mut seen = Seen::default();
    let mut rejected = Rejected::default();
    while let Some((share, message)) = arrivals.recv().await {
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(ID_HEADER))
            .map(|v| format!("{}|{}", v.as_str(), share.as_deref().unwrap_or("")));
        if id.is_some_and(|id| !seen.insert(id)) {
            continue;
        }
        let publish = match decode(&message) {
            Ok(publish) => publish,
            Err(why) => {
                rejected.count(&message.subject, &why);
                if shards[0].send(Inbound::Rejected).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let shard = shard_of(publish.topic.as_str(), shards.len());
        let inbound = match share {
            Some(share) => Inbound::Share {
                share: share.to_string(),
                publish,
            },
            None => Inbound::Publish(publish),
        };
        if shards[shard].send(inbound).await.is_err() {
            return;
        }
    }
}

/// The shard that takes a topic's messages from NATS.
fn shard_of(topic: &str, shards: usize) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let hasher = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
    (hasher.hash_one(topic) % shards as u64) as usize
}

/// The MQTT PUBLISH a NATS message stands for, or why it cannot be read (a message ringcast
/// did not write, or a format this node does not know).
fn decode(message: &async_nats::Message) -> Result<Publish, String> {
    let topic = subject_topic(message.subject.as_str()).ok_or("subject is not a topic")?;
    let headers = message.headers.as_ref().ok_or("no headers")?;
    let flags = headers
        .get(FLAGS_HEADER)
        .ok_or("no flags header")?
        .as_str()
        .as_bytes();
    let qos = flags
        .first()
        .and_then(|f| f.checked_sub(b'0'))
        .and_then(QoS::from_bits)
        .ok_or("bad flags header")?;
    let properties = match headers.get(props::HEADER) {
        Some(value) => props::decode(value.as_str())?,
        None => Default::default(),
    };
    Ok(Publish {
        dup: false,
        qos,
        retain: flags.get(1) == Some(&b'r'),
        topic: MqttString::from_str_checked(&topic).ok_or("topic is not valid UTF-8")?,
        pkid: 0,
        properties,
        payload: message.payload.clone(),
    })
}

/// Messages refused so far, for the log: the first of each power of two is logged, so a
/// stream of bad messages does not flood it (every one is counted on `$SYS`).
#[derive(Default)]
struct Rejected {
    count: u64,
}

impl Rejected {
    fn count(&mut self, subject: &str, why: &str) {
        self.count += 1;
        if self.count.is_power_of_two() {
            tracing::warn!(
                "cluster: refused a message on {subject:?} ({why}); {} refused so far",
                self.count
            );
        }
    }
}

/// Opens the retained and client-id buckets, then writes the retained changes and claims
/// of this node's clients into them, in order. Those wait for the buckets up to
/// `JETSTREAM_WAIT` (a new NATS cluster's JetStream takes seconds); past it, until the
/// buckets open, claims keep their client ids here and retained changes stay on this node.
async fn keep_buckets(
    client: Client,
    config: ClusterConfig,
    shards: Vec<mpsc::Sender<Inbound>>,
    mut commands: mpsc::Receiver<Command>,
) {
    let opening = async {
        let retained = open_retained(&client, &config, shards.clone()).await;
        let owners = Owners::open(&client, &config, shards).await;
        if retained.is_some() && owners.is_some() {
            tracing::info!("cluster: node {} joined, buckets open", config.node);
        }
        (retained, owners)
    };
    let patience = tokio::time::sleep(super::bucket::JETSTREAM_WAIT);
    tokio::pin!(opening, patience);
    let (mut retained, mut owners) = (None, None);
    let (mut opened, mut waiting) = (false, true);
    loop {
        tokio::select! {
            buckets = &mut opening, if !opened => {
                (retained, owners) = buckets;
                opened = true;
            }
            () = &mut patience, if waiting && !opened => {
                waiting = false;
                tracing::warn!("cluster: node {} serves its clients alone until the buckets open (client ids are not claimed across nodes, retained messages not shared)", config.node);
            }
            command = commands.recv(), if opened || !waiting => {
                let Some(command) = command else { return };
                serve_bucket_command(command, &config, &retained, &owners).await;
            }
        }
    }
}

/// Carries out one of `keep_buckets`' commands with the buckets open so far.
async fn serve_bucket_command(
    command: Command,
    config: &ClusterConfig,
    retained: &Option<kv::Store>,
    owners: &Option<std::rc::Rc<Owners>>,
) {
    match command {
        Command::Retain { topic, publish } => {
            if let Some(store) = retained {
                retain(store, &config.node, &topic, publish.as_deref()).await;
            }
        }
        Command::Claim {
            client_id,
            wants_state,
            done,
            installed,
        } => match owners {
            // A claim may wait seconds for another node's answer: others go on meanwhile.
            Some(owners) => {
                let claim = owners
                    .clone()
                    .claim(client_id, wants_state, done, installed);
                tokio::task::spawn_local(claim);
            }
            None => {
                let _ = done.send(super::Claimed::Kept);
            }
        },
        Command::Restored { client_ids } => {
            if let Some(owners) = owners {
                tokio::task::spawn_local(owners.clone().check_restored(client_ids));
            }
        }
        _ => {}
    }
}

/// Writes (or, with None, deletes) the retained message of `topic` in the bucket.
async fn retain(store: &kv::Store, node: &str, topic: &str, publish: Option<&Publish>) {
    let key = topic_key(topic);
    let result = match publish {
        Some(publish) => store
            .put(key, retained_value(node, publish))
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        None => store.delete(key).await.map_err(|e| e.to_string()),
    };
    if let Err(e) = result {
        tracing::warn!("cluster: cannot store the retained message of {topic:?}: {e}");
    }
}

/// Ids of the messages seen last.
#[derive(Default)]
struct Seen {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl Seen {
    /// Remembers `id`; false when it was seen already.
    fn insert(&mut self, id: String) -> bool {
        if self.set.contains(&id) {
            return false;
        }
        if self.order.len() == SEEN_MAX {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(id.clone());
        self.set.insert(id);
        true
    }
}

/// A retained message as the bucket holds it: QoS, the writing node, the payload.
fn retained_value(node: &str, publish: &Publish) -> Bytes {
    let mut value = BytesMut::with_capacity(2 + node.len() + publish.payload.len());
    value.put_u8(publish.qos as u8);
    value.put_u8(node.len() as u8);
    value.put_slice(node.as_bytes());
    value.put_slice(&publish.payload);
    value.freeze()
}

/// Opens (or makes) the retained bucket and starts watching it from its current values on.
async fn open_retained(
    client: &Client,
    config: &ClusterConfig,
    shards: Vec<mpsc::Sender<Inbound>>,
) -> Option<kv::Store> {
    let store = open_bucket(client, config, RETAINED_BUCKET).await;
    let watch = store
        .watch_with_history(">")
        .await
        .map_err(|e| tracing::error!("cluster: cannot watch the retained bucket: {e}"))
        .ok()?;
    tokio::spawn(follow_retained(watch, config.node.clone(), shards));
    Some(store)
}

/// Hands every other node's retained changes to shard 0, which spreads them to its peers.
async fn follow_retained(mut watch: kv::Watch, node: String, shards: Vec<mpsc::Sender<Inbound>>) {
    while let Some(entry) = watch.next().await {
        let Ok(entry) = entry else {
            continue;
        };
        let Some(topic) = key_topic(&entry.key) else {
            continue;
        };
        let publish = match entry.operation {
            kv::Operation::Put => match stored_publish(&topic, &entry.value, &node) {
                Stored::Mine => continue,
                Stored::Other(publish) => Some(publish),
                Stored::Bad => continue,
            },
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        if shards[0]
            .send(Inbound::Retain { topic, publish })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// What a retained bucket value holds, seen from node `node`.
enum Stored {
    /// This node wrote it: its replicas have it already.
    Mine,
    /// Another node's message.
    Other(Publish),
    /// Not a value ringcast wrote.
    Bad,
}

fn stored_publish(topic: &str, value: &Bytes, node: &str) -> Stored {
    let (Some(&qos), Some(&len)) = (value.first(), value.get(1)) else {
        return Stored::Bad;
    };
    let Some(writer) = value.get(2..2 + len as usize) else {
        return Stored::Bad;
    };
    if writer == node.as_bytes() {
        return Stored::Mine;
    }
    let (Some(qos), Some(topic)) = (QoS::from_bits(qos), MqttString::from_str_checked(topic))
    else {
        return Stored::Bad;
    };
    Stored::Other(Publish {
        dup: false,
        qos,
        retain: true,
        topic,
        pkid: 0,
        properties: Default::default(),
        payload: value.slice(2 + len as usize..),
    })
}
