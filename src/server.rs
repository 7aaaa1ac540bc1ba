//! Starting and stopping the broker: bind listeners, start one pinned glommio executor per
//! shard, join them into a mesh, and shut them down in order.

mod durability;

use crate::bridge;
use crate::cluster::{self, Inbound, Uplink};
use crate::config::reload::LiveLimits;
use crate::config::{Config, Limits, Protocol, SHARDS_MAX};
use crate::host;
use crate::mesh::Mesh;
use crate::metrics::Board;
use crate::net;
use crate::net::gate::{Endpoint, Gate};
use crate::net::tls::Certificates;
use crate::net::websocket::Site;
use crate::protocol::ReasonCode;
use crate::security::{self, Shared};
use crate::shard::backpressure::Pressure;
use crate::shard::msg::MeshMsg;
use crate::shard::Shard;
use durability::Startup;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers};
use glommio::channels::local_channel::LocalReceiver;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use std::net::SocketAddr;
use std::os::unix::io::{IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// glommio's default io_memory (10 MiB) cannot be registered under an 8 MiB memlock limit;
/// network I/O does not use those buffers, so a small pool suffices.
const IO_MEMORY_BYTES: usize = 64 << 10;
/// Messages taken from one ring before yielding to the shard's other tasks.
const RING_MESSAGES_PER_TURN: u32 = 64;
/// How often a shard checks whether the broker is stopping.
const STOP_POLL: Duration = Duration::from_millis(50);

/// A running broker.
pub struct Server {
    addrs: Vec<SocketAddr>,
    /// The password and ACL tables, for reloads.
    security: Arc<Shared>,
    /// Each TLS listener's certificates, for reloads.
    certificates: Vec<Arc<Certificates>>,
    /// The limits of new connections, for reloads.
    live: Arc<LiveLimits>,
    stop: Arc<AtomicBool>,
    handles: Vec<ExecutorJoinHandle<()>>,
    /// Holds the data directory's lock while the broker runs.
    _startup: Option<Arc<Startup>>,
}

impl Server {
    /// Checks the host, binds every listen address and starts the shards.
    pub fn start(config: &Config) -> Result<Server, String> {
        config.validate().map_err(|e| e.to_string())?;
        host::check()?;
        host::raise_open_files();
        let security = Arc::new(Shared::load(security::Files::of(config))?);
        let cpus = cpu_list(config)?;
        let shards = shard_count(config, &cpus)?;
        let Bound {
            addrs,
            mut fds,
            endpoints,
        } = bind_listeners(config, shards)?;
        let certificates = endpoints.iter().filter_map(|e| e.tls.clone()).collect();
        let bridges = bridge::prepare(&config.bridge)?;
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let turn = Arc::new(AtomicUsize::new(0));
        let board = Arc::new(Board::new(shards));
        let live = Arc::new(LiveLimits::new(config.limits.clone()));
        let ring_capacity = config.mesh.ring_capacity_for(shards);
        let mesh = (shards > 1).then(|| MeshBuilder::full(shards, ring_capacity));
        let (uplink, mut inbound) = start_cluster(config, shards)?;
        let startup = match config.persistence.enabled {
            true => Some(Arc::new(Startup::new(&config.persistence, shards)?)),
            false => None,
        };
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let mut handles = Vec::new();
        for id in 0..shards {
            let ctx = ShardStart {
                shards,
                config: config.clone(),
                mesh: mesh.clone(),
                fds: std::mem::take(&mut fds[id]),
                stop: stop.clone(),
                open: open.clone(),
                turn: turn.clone(),
                board: board.clone(),
                endpoints: endpoints.clone(),
                security: security.clone(),
                live: live.clone(),
                // Bridges run on shard 0.
                bridges: if id == 0 { bridges.clone() } else { Vec::new() },
                uplink: uplink.clone(),
                inbound: inbound.get_mut(id).and_then(Option::take),
                startup: startup.clone(),
                ready: Ready::new(ready_tx.clone()),
            };
            let handle = LocalExecutorBuilder::new(Placement::Fixed(cpus[id % cpus.len()]))
                .name(&format!("shard-{id}"))
                .io_memory(IO_MEMORY_BYTES)
                .spawn(move || run_shard(ctx))
                .map_err(|e| format!("cannot start shard {id}: {e}"))?;
            handles.push(handle);
        }
        // Only the shards hold senders now: one that ends without a word is seen as a failure.
        drop(ready_tx);
        let handles = wait_until_ready(handles, &ready, &stop, startup.as_deref())?;
        Ok(Server {
            addrs,
            live,
            security,
            certificates,
            stop,
            handles,
            _startup: startup,
        })
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Reads the password file, the ACL and the TLS certificates again (SIGHUP). New logins
    /// and handshakes use them; open connections keep theirs. A file that does not parse
    /// keeps the old one: returns why, one sentence per file.
    pub fn reload(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(e) = self.security.reload() {
            errors.push(e);
        }
        for certificates in &self.certificates {
            if let Err(e) = certificates.reload() {
                errors.push(e);
            }
        }
        errors
    }

    /// Gives connections that start from now on these limits (SIGHUP); see
    /// `config::reload::LIVE_KEYS` for those that take effect.
    pub fn reload_limits(&self, limits: Limits) {
        self.live.replace(limits);
    }

    /// Asks every shard to close its connections (sending wills) and stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for every shard to finish.
    pub fn join(mut self) {
        for handle in std::mem::take(&mut self.handles) {
            let _ = handle.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connections are answered only once every shard has replayed its store: waits for each
/// shard's word; when one cannot start, stops them all and says why.
fn wait_until_ready(
    handles: Vec<ExecutorJoinHandle<()>>,
    ready: &std::sync::mpsc::Receiver<bool>,
    stop: &AtomicBool,
    startup: Option<&Startup>,
) -> Result<Vec<ExecutorJoinHandle<()>>, String> {
    if (0..handles.len()).all(|_| ready.recv().unwrap_or(false)) {
        return Ok(handles);
    }
    stop.store(true, Ordering::SeqCst);
    for handle in handles {
        let _ = handle.join();
    }
    let why = startup.and_then(|s| s.error());
    Err(why.unwrap_or_else(|| "a shard failed to start".to_string()))
}

/// The listeners, bound.
struct Bound {
    /// The addresses actually bound.
    addrs: Vec<SocketAddr>,
    /// Each shard's listening sockets, each with its listener's index.
    fds: Vec<Vec<(RawFd, usize)>>,
    /// What connections need to know of each listener (its TLS certificates loaded).
    endpoints: Vec<Endpoint>,
}

/// Binds every listener, a socket per shard on each address (`host::bind_group`).
fn bind_listeners(config: &Config, shards: usize) -> Result<Bound, String> {
    let mut addrs = Vec::new();
    let mut fds = vec![Vec::new(); shards];
    let mut endpoints = Vec::new();
    for listener in config.listeners() {
        // A host without IPv6 serves the default loopback on 127.0.0.1 alone.
        if listener.is_default && listener.address.is_ipv6() && !host::has_ipv6_loopback() {
            continue;
        }
        let tls = listener.tls.as_ref().map(Certificates::load).transpose()?;
        let group = host::bind_group(listener.address, shards)?;
        let first = group.first().ok_or("no shards to listen with")?;
        addrs.push(first.local_addr().map_err(|e| e.to_string())?);
        for (shard, socket) in group.into_iter().enumerate() {
            fds[shard].push((socket.into_raw_fd(), endpoints.len()));
        }
        let site = (listener.protocol == Protocol::Websocket).then(|| Site {
            path: listener.path.clone(),
            has_api: listener.http_api,
            allowed_origins: listener.allowed_origins.clone(),
        });
        endpoints.push(Endpoint {
            allow_anonymous: listener.allow_anonymous,
            tls: tls.map(Arc::new),
            site,
        });
    }
    Ok(Bound {
        addrs,
        fds,
        endpoints,
    })
}

/// The CPUs to pin to: the configured list, or every online CPU.
fn cpu_list(config: &Config) -> Result<Vec<usize>, String> {
    if !config.cpus.is_empty() {
        return Ok(config.cpus.clone());
    }
    let online = core_affinity::get_core_ids()
        .ok_or("cannot read the online CPUs; pass --cpus explicitly")?;
    Ok(online.into_iter().map(|c| c.id).collect())
}

/// What a shard thread starts with (all `Send`).
struct ShardStart {
    shards: usize,
    config: Config,
    mesh: Option<MeshBuilder<MeshMsg, Full>>,
    fds: Vec<(RawFd, usize)>,
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    /// Connections accepted by the whole broker, for placing them in turn.
    turn: Arc<AtomicUsize>,
    board: Arc<Board>,
    endpoints: Vec<Endpoint>,
    security: Arc<Shared>,
    live: Arc<LiveLimits>,
    bridges: Vec<bridge::Prepared>,
    /// On a cluster node: the way to the NATS thread, and what it hands this shard.
    uplink: Option<Uplink>,
    inbound: Option<tokio::sync::mpsc::Receiver<Inbound>>,
    /// The stores' start-up, when persistence is on.
    startup: Option<Arc<Startup>>,
    /// Told once this shard is ready (false: it cannot start).
    ready: Ready,
}

/// A shard's one word to `Server::start`: whether it is ready. A shard that ends without
/// saying (an early return, a panic) says "cannot start" as it is dropped, so the start-up
/// never waits for a word that will not come.
struct Ready {
    tx: std::sync::mpsc::Sender<bool>,
    said: bool,
}

impl Ready {
    fn new(tx: std::sync::mpsc::Sender<bool>) -> Self {
        Ready { tx, said: false }
    }

    fn say(&mut self, ready: bool) {
        if !self.said {
            self.said = true;
            let _ = self.tx.send(ready);
        }
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        self.say(false);
    }
}

/// The life of one shard.
async fn run_shard(mut ctx: ShardStart) {
    let Some((mesh, receivers, local)) = join_mesh(ctx.mesh.take(), &ctx.stop).await else {
        ctx.ready.say(false);
        return;
    };
    let persist = match &ctx.startup {
        Some(startup) => match startup.open(mesh.id()).await {
            Some(persist) => Some(Rc::new(persist)),
            None => {
                ctx.ready.say(false);
                return;
            }
        },
        None => None,
    };
    let shard = build_shard(&mut ctx, &mesh, persist);
    let gate = Rc::new(Gate::new(
        std::mem::take(&mut ctx.endpoints),
        ctx.security.clone(),
    ));
    receive(&shard, &gate, receivers, local);
    if let Some(startup) = ctx.startup.take() {
        if !startup.restore(&shard).await {
            ctx.ready.say(false);
            return;
        }
        glommio::spawn_local(durability::compact_when_grown(shard.clone())).detach();
    }
    ctx.ready.say(true);
    let sys_interval = (ctx.config.sys_interval_secs > 0)
        .then(|| Duration::from_secs(ctx.config.sys_interval_secs));
    let sys = sys_interval.map(|interval| {
        glommio::spawn_local(crate::shard::sys::run(
            shard.clone(),
            ctx.board.clone(),
            interval,
        ))
    });
    let bridges = bridge::start(&shard, std::mem::take(&mut ctx.bridges), sys_interval);
    let acceptors: Vec<_> = ctx
        .fds
        .iter()
        .map(|&fd| {
            let to = net::Placing {
                shard: shard.clone(),
                gate: gate.clone(),
                open: ctx.open.clone(),
                live: ctx.live.clone(),
                turn: ctx.turn.clone(),
            };
            glommio::spawn_local(net::accept_loop(fd, to))
        })
        .collect();
    while !ctx.stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(STOP_POLL).await;
    }
    drop(acceptors); // stop accepting
    drop(sys);
    drop(bridges);
    shut_down(&shard).await;
}

/// The shard itself: its share of the memory ceiling, its limits, its store and, on a cluster
/// node, its way to the NATS thread and the task that takes what NATS hands it.
fn build_shard(
    ctx: &mut ShardStart,
    mesh: &Rc<Mesh<MeshMsg>>,
    persist: Option<Rc<crate::shard::persist::Persist>>,
) -> Rc<Shard> {
    // Each shard holds its share of the broker-wide ceiling: no cross-core counter to touch.
    let bp = &ctx.config.backpressure;
    let high = (bp.memory_ceiling_bytes / ctx.shards).max(1);
    let pressure = Pressure::new(high, (bp.memory_resume_bytes / ctx.shards).min(high - 1));
    let mut shard = Shard::new(
        mesh.clone(),
        ctx.shards,
        ctx.config.limits.clone(),
        ctx.open.clone(),
        pressure,
    )
    .following(ctx.live.clone())
    .with_cluster(ctx.uplink.take());
    shard.persist = persist;
    shard.journaled = ctx.startup.as_ref().map(|s| s.journaled.clone());
    let shard = Rc::new(shard);
    if let Some(inbound) = ctx.inbound.take() {
        glommio::spawn_local(from_cluster(shard.clone(), inbound)).detach();
    }
    shard
}

/// The NATS thread, when `[cluster]` names servers, and each shard's receiver of what it hands
/// that shard (by shard id).
type ClusterStart = (
    Option<Uplink>,
    Vec<Option<tokio::sync::mpsc::Receiver<Inbound>>>,
);

/// Starts the NATS thread when the config asks for a cluster.
fn start_cluster(config: &Config, shards: usize) -> Result<ClusterStart, String> {
    if !config.cluster.is_enabled() {
        return Ok((None, Vec::new()));
    }
    let (uplink, inbound) = cluster::start(&config.cluster, shards)?;
    Ok((Some(uplink), inbound.into_iter().map(Some).collect()))
}

/// How many shards to run: `shards`, or one per CPU in the list.
fn shard_count(config: &Config, cpus: &[usize]) -> Result<usize, String> {
    let shards = if config.shards == 0 {
        cpus.len()
    } else {
        config.shards
    };
    if shards > SHARDS_MAX {
        return Err(format!(
            "{shards} CPUs would make {shards} shards, more than the {SHARDS_MAX} a broker runs; pass --shards or --cpus"
        ));
    }
    Ok(shards)
}

/// This shard's ends of the mesh: the mesh, the receivers of the rings from other shards
/// (None with one shard) and the receiver of messages to itself.
async fn join_mesh(
    builder: Option<MeshBuilder<MeshMsg, Full>>,
    stop: &AtomicBool,
) -> Option<(
    Rc<Mesh<MeshMsg>>,
    Option<Receivers<MeshMsg>>,
    LocalReceiver<MeshMsg>,
)> {
    let (senders, receivers) = match builder {
        Some(builder) => {
            // A shard that failed before joining never will: give up once the start-up stops.
            let joined = futures_lite::future::or(async { builder.join().await.ok() }, async {
                while !stop.load(Ordering::SeqCst) {
                    glommio::timer::sleep(STOP_POLL).await;
                }
                None
            });
            let (senders, receivers) = joined.await?;
            (Some(senders), Some(receivers))
        }
        None => (None, None),
    };
    // The mesh numbers peers in the order they joined: that number is the shard's id.
    let id = senders.as_ref().map_or(0, |s| s.peer_id());
    let (mesh, local) = Mesh::new(id, senders);
    Some((Rc::new(mesh), receivers, local))
}

/// Starts one task per ring toward this shard and one for its messages to itself.
fn receive(
    shard: &Rc<Shard>,
    gate: &Rc<Gate>,
    receivers: Option<Receivers<MeshMsg>>,
    local: LocalReceiver<MeshMsg>,
) {
    let streams = receivers.map_or_else(Vec::new, |mut r| r.streams());
    for (_, stream) in streams {
        let shard = shard.clone();
        let gate = gate.clone();
        glommio::spawn_local(async move {
            let mut handled = 0u32;
            while let Some(msg) = stream.recv().await {
                dispatch(&shard, &gate, msg).await;
                // Bounded work per loop turn, as for a connection's reads.
                handled += 1;
                if handled % RING_MESSAGES_PER_TURN == 0 {
                    futures_lite::future::yield_now().await;
                }
            }
        })
        .detach();
    }
    let shard = shard.clone();
    let gate = gate.clone();
    glommio::spawn_local(async move {
        while let Some(msg) = local.recv().await {
            dispatch(&shard, &gate, msg).await;
        }
    })
    .detach();
}

/// Closes every connection (5.0 clients get DISCONNECT 0x8B), publishes the wills due and
/// lets the writers flush.
async fn shut_down(shard: &Rc<Shard>) {
    let wills = shard.close_all(ReasonCode::SERVER_SHUTTING_DOWN);
    for will in wills {
        let _ = glommio::timer::timeout(Duration::from_millis(500), async {
            shard.publish_will(will).await;
            Ok(())
        })
        .await;
    }
    // Let writers flush the DISCONNECTs.
    glommio::timer::sleep(Duration::from_millis(200)).await;
    durability::close(shard).await;
}

/// Handles a message from another shard (or from this one): a placed connection gets its
/// task here, everything else is the shard's.
async fn dispatch(shard: &Rc<Shard>, gate: &Rc<Gate>, msg: MeshMsg) {
    match msg {
        MeshMsg::Accepted(stream, listener) => {
            let stream = stream.bind_to_executor();
            net::conn::spawn(shard.clone(), stream, gate.clone(), listener);
        }
        msg => shard.on_message(msg).await,
    }
}

/// Hands what the NATS thread receives for this shard to the shard, in order.
async fn from_cluster(shard: Rc<Shard>, mut inbound: tokio::sync::mpsc::Receiver<Inbound>) {
    let mut handled = 0u32;
    while let Some(message) = inbound.recv().await {
        shard.on_cluster(message).await;
        // Bounded work per loop turn, as for a ring from another shard.
        handled += 1;
        if handled % RING_MESSAGES_PER_TURN == 0 {
            futures_lite::future::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Ready;

    #[test]
    fn a_shard_that_ends_without_a_word_says_it_cannot_start() {
        let (tx, rx) = std::sync::mpsc::channel();
        drop(Ready::new(tx));
        assert_eq!(rx.recv(), Ok(false));
    }

    #[test]
    fn a_ready_shard_says_so_once() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut ready = Ready::new(tx);
        ready.say(true);
        drop(ready);
        assert_eq!(rx.recv(), Ok(true));
        assert!(rx.recv().is_err(), "nothing more after the first word");
    }
}
