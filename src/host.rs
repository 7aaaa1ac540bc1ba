//! Start-up checks of the host, each failing with one sentence that says what to do.
//!
//! glommio's own failures mislead (an io_uring blocked by seccomp reads "kernel too old", and
//! later executors panic on a poisoned `Once`), so the broker checks first.

use std::net::{SocketAddr, TcpListener};

/// The soft RLIMIT_MEMLOCK glommio refuses to start below.
pub const MEMLOCK_MIN_BYTES: u64 = 512 << 10;

/// Checks that io_uring can be set up and RLIMIT_MEMLOCK is high enough.
pub fn check() -> Result<(), String> {
    check_memlock()?;
    check_io_uring()
}

fn check_memlock() -> Result<(), String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Ok(()); // cannot tell; let glommio decide
    }
    if limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < MEMLOCK_MIN_BYTES {
        return Err(format!(
            "the locked-memory limit (RLIMIT_MEMLOCK) is {} KiB but io_uring needs at least {} KiB: raise it with `ulimit -l 8192` (or LimitMEMLOCK= in a systemd unit, --ulimit memlock= in Docker)",
            limit.rlim_cur / 1024,
            MEMLOCK_MIN_BYTES / 1024
        ));
    }
    Ok(())
}

fn check_io_uring() -> Result<(), String> {
    // io_uring_params is 120 bytes; zeroed asks for defaults.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes the params buffer we own; the returned fd is
    // closed below.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        return Err(format!(
            "io_uring is unavailable ({err}): the kernel may be older than 5.8, or a seccomp profile blocks it (Docker's default profile and some container runtimes do: run with --security-opt seccomp=deploy/seccomp.json from the ringcast sources, which allows io_uring; see docs/DEPLOY.md)"
        ));
    }
    // SAFETY: fd was just returned by io_uring_setup and is ours.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// Raises the soft open-file limit to the hard limit: each connection is a file, and the
/// default soft limit (often 1024) would cap the broker far below what the host allows.
pub fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Binds a listening socket without SO_REUSEPORT, so a port held by any other process (even
/// one that set SO_REUSEPORT, as glommio always does) is reported instead of shared.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    let listener = TcpListener::bind(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "cannot listen on {addr}: the address is in use by another process (perhaps another broker); stop it or choose another port with --listen"
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "cannot listen on {addr}: permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE"
        ),
        _ => format!("cannot listen on {addr}: {e}"),
    })?;
    // std listens with a backlog of 128, which drops SYNs when thousands of clients reconnect
    // at once (say, after a network blip); the kernel caps this at net.core.somaxconn.
    // SAFETY: listen on the socket we just bound; calling it again only resizes the backlog.
    unsafe {
        libc::listen(
            std::os::unix::io::AsRawFd::as_raw_fd(&listener),
            LISTEN_BACKLOG,
        )
    };
    Ok(listener)
}

/// Binds `count` listening sockets on one address, one per shard: the kernel spreads incoming
/// connections over them by a hash of each connection's addresses and ports, so every shard
/// accepts its share without a hop through another shard.
///
/// The address is first bound alone, without SO_REUSEPORT, so a port held by any other
/// process (even one that set SO_REUSEPORT, as glommio always does, or a stale broker) is
/// reported instead of silently shared; that socket is then closed and the shards' sockets
/// bound with SO_REUSEPORT on the port it got. One shard keeps that first socket.
pub fn bind_group(addr: SocketAddr, count: usize) -> Result<Vec<TcpListener>, String> {
    let probe = bind(addr)?;
    if count <= 1 {
        return Ok(vec![probe]);
    }
    let addr = probe.local_addr().map_err(|e| e.to_string())?;
    drop(probe);
    (0..count).map(|_| bind_reuse_port(addr)).collect()
}

/// One member of a SO_REUSEPORT group on `addr`.
fn bind_reuse_port(addr: SocketAddr) -> Result<TcpListener, String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let why = |e: std::io::Error| format!("cannot listen on {addr}: {e}");
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(why)?;
    // As std does: a restarted broker binds while its old connections sit in TIME_WAIT.
    socket.set_reuse_address(true).map_err(why)?;
    socket.set_reuse_port(true).map_err(why)?;
    socket.bind(&addr.into()).map_err(why)?;
    socket.listen(LISTEN_BACKLOG).map_err(why)?;
    Ok(socket.into())
}

/// Whether this host can listen on IPv6 loopback (containers often have IPv6 off).
pub fn has_ipv6_loopback() -> bool {
    TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// Pending connections the kernel may hold per listener.
const LISTEN_BACKLOG: i32 = 4096;

/// Gives the pages of the heap that are wholly free back to the kernel: those of this
/// thread's mimalloc heap (the broker's allocator, `mi_collect`), and those of glibc's heap
/// (`malloc_trim`, which also releases free pages inside the heap, not only at its top; it
/// does nothing with other C libraries). A connection storm leaves such pages behind: its
/// short-lived allocations (CONNECT packets, login state, requests to other shards) sit
/// between the long-lived ones of the connections that stay.
pub fn give_back_free_heap() {
    // SAFETY: mi_collect frees only memory that no allocation holds, of this thread's heap
    // (an unused heap when mimalloc is not the global allocator).
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns memory that no allocation holds; it changes nothing
    // any live allocation can see.
    unsafe {
        libc::malloc_trim(0);
    }
}
