//! Plain TCP sockets that wait for input through one epoll instance per shard thread, whose
//! own readiness the shard waits for through glommio (io_uring).
//!
//! Why not glommio's `TcpStream`: while a read of it waits, glommio holds a readiness request
//! for its socket (a `POLL_ADD` and its source, ~500 bytes of heap), and an idle connection
//! always has a read waiting; that was a fifth of what an idle connection held. Here a socket
//! is registered once, edge-triggered, in the shard's epoll set (kernel memory, as glommio's
//! request was), and a waiting read costs a waker in the shard's table (16 bytes). Reads are
//! non-blocking `recv`s; a read that finds nothing parks the connection's waker under the
//! socket's slot, and the shard's poller task wakes it when the kernel reports input.
//!
//! Edge-triggered is enough because a connection waits only after a `recv` found the socket
//! empty, or took less than it asked for (all the socket had): input that arrives later
//! raises a new edge, which marks the socket ready again. The edges are taken by the poller
//! task of the same thread, so none falls between a `recv` and the mark it leaves. An edge
//! for input a connection already read wakes it once for nothing (its next `recv` finds
//! nothing and it parks again).

use glommio::net::TcpStream;
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Events taken from the epoll set per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 256;
/// Rounds in a row that find the epoll set ready but without events before the poller
/// pauses a millisecond between rounds.
const EMPTY_ROUNDS_MAX: u32 = 3;

/// A plain TCP connection's socket, registered in its shard's epoll set.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    /// Its place in the shard's table of waiting reads.
    slot: u32,
}

impl Socket {
    /// Takes over an accepted stream's socket: glommio's stream is given up (its fd
    /// duplicated, then closed with it), so no readiness request of glommio's is held.
    pub fn new(stream: TcpStream) -> io::Result<Socket> {
        let fd = dup_cloexec(stream.as_raw_fd())?;
        drop(stream);
        let slot = POLLER.with_borrow_mut(|p| p.register(fd.as_raw_fd()))?;
        Ok(Socket { fd, slot })
    }

    /// The socket's fd, open as long as the `Socket` lives.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether the socket may have input; if not, the waker is parked until it may (so a
    /// caller can skip preparing a buffer for a read that would find nothing).
    pub fn is_ready_or_park(&self, cx: &Context<'_>) -> bool {
        POLLER.with_borrow_mut(|p| p.is_ready_or_park(self.slot, cx.waker()))
    }

    /// Reads what the socket has into `buf` without waiting; Pending (the waker parked) when
    /// it has nothing. 0 at end of stream.
    pub fn poll_read(&mut self, cx: &Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            if !self.is_ready_or_park(cx) {
                return Poll::Pending;
            }
            // SAFETY: `buf` is writable for its length; the fd is open (owned by self).
            let n = unsafe {
                libc::recv(
                    self.fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                let n = n as usize;
                if n > 0 && n < buf.len() {
                    // All the socket had: wait for the edge of what comes next rather than
                    // ask again (a `recv` that finds nothing costs a system call).
                    POLLER.with_borrow_mut(|p| p.ready[self.slot as usize] = false);
                }
                return Poll::Ready(Ok(n));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    POLLER.with_borrow_mut(|p| p.ready[self.slot as usize] = false);
                }
                _ => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Reads what the client sent into `buf`, waiting for it; 0 at end of stream.
    pub fn read<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + 'a {
        std::future::poll_fn(move |cx| self.poll_read(cx, buf))
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // Taken out of the set before the fd closes: a dup of it (a writer waiting on a full
        // socket) would otherwise keep the registration, and its events, alive.
        let fd = self.fd();
        let _ = POLLER.try_with(|p| p.borrow_mut().release(self.slot, fd));
    }
}

/// The shard's epoll set and the wakers of the reads that wait on it.
struct Poller {
    /// None until the first socket (or when it could not be made).
    epoll: Option<OwnedFd>,
    wakers: Vec<Option<Waker>>,
    /// Per slot: whether the socket may have input, that is, no `recv` has found it empty
    /// since its last event. A read of a socket that is not ready parks without a `recv`.
    ready: Vec<bool>,
    free: Vec<u32>,
    is_running: bool,
}

thread_local! {
    /// The poller of this shard's thread (shards are pinned threads, `!Send` state).
    static POLLER: RefCell<Poller> = const {
        RefCell::new(Poller {
            epoll: None,
            wakers: Vec::new(),
            ready: Vec::new(),
            free: Vec::new(),
            is_running: false,
        })
    };
}

impl Poller {
    /// The epoll set, made on first use.
    fn epoll(&mut self) -> io::Result<RawFd> {
        if let Some(epoll) = &self.epoll {
            return Ok(epoll.as_raw_fd());
        }
        // SAFETY: plain syscall; the fd returned is owned from here on.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(self.epoll.insert(epoll).as_raw_fd())
    }

    /// Adds `fd` to the set under a free slot; starts the poller task on first need.
    fn register(&mut self, fd: RawFd) -> io::Result<u32> {
        let epoll = self.epoll()?;
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.wakers.push(None);
                self.ready.push(true);
                (self.wakers.len() - 1) as u32
            }
        };
        // A new connection's CONNECT may be there already.
        self.ready[slot as usize] = true;
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: u64::from(slot),
        };
        // SAFETY: both fds are open; `event` is a valid epoll_event.
        if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            self.free.push(slot);
            return Err(io::Error::last_os_error());
        }
        if !std::mem::replace(&mut self.is_running, true) {
            glommio::spawn_local(run(epoll)).detach();
        }
        Ok(slot)
    }

    /// Whether the socket of `slot` may have input; if not, parks `waker` until it may.
    fn is_ready_or_park(&mut self, slot: u32, waker: &Waker) -> bool {
        if self.ready[slot as usize] {
            return true;
        }
        let parked = &mut self.wakers[slot as usize];
        match parked {
            Some(w) if w.will_wake(waker) => {}
            _ => *parked = Some(waker.clone()),
        }
        false
    }

    fn release(&mut self, slot: u32, fd: RawFd) {
        if let Some(epoll) = &self.epoll {
            // SAFETY: both fds are open; DEL ignores the event.
            let mut event = libc::epoll_event { events: 0, u64: 0 };
            unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut event) };
        }
        self.wakers[slot as usize] = None;
        self.free.push(slot);
    }

    /// Takes the wakers of the slots in `events` into `due`.
    fn take_due(&mut self, events: &[libc::epoll_event], due: &mut Vec<Waker>) {
        for event in events {
            let slot = event.u64 as usize;
            if let Some(ready) = self.ready.get_mut(slot) {
                *ready = true;
            }
            if let Some(waker) = self.wakers.get_mut(slot).and_then(Option::take) {
                due.push(waker);
            }
        }
    }
}

/// The shard's poller task: waits until the epoll set has events, wakes the reads they are
/// for, and waits again, for as long as the shard runs.
async fn run(epoll: RawFd) {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
    let mut due = Vec::new();
    // Rounds in a row that found no events: readiness that keeps coming with nothing behind
    // it (not seen; a failing readiness request would) must not spin the shard.
    let mut empty_rounds = 0u32;
    loop {
        if empty_rounds >= EMPTY_ROUNDS_MAX {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        if let Err(e) = readable(epoll).await {
            tracing::warn!("waiting for the shard's sockets failed: {e}");
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        }
        loop {
            // SAFETY: `events` is writable for EVENTS_PER_WAIT entries; a zero timeout never
            // blocks the shard.
            let n =
                unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), EVENTS_PER_WAIT as i32, 0) };
            let n = match n {
                n if n >= 0 => n as usize,
                _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
                _ => break,
            };
            POLLER.with_borrow_mut(|p| p.take_due(&events[..n], &mut due));
            // Woken outside the borrow: a woken read parks itself again when it is polled.
            for waker in due.drain(..) {
                waker.wake();
            }
            empty_rounds = if n == 0 { empty_rounds + 1 } else { 0 };
            if n < EVENTS_PER_WAIT {
                break;
            }
        }
    }
}

/// Waits until `epoll` has events, through glommio: a glommio stream made on an fd asks
/// io_uring for that fd's readiness at once (a `POLL_ADD`), and its read stays pending until
/// the fd is readable; the epoll fd is no socket, so that read then fails (ENOTSOCK), which
/// here means ready. A stream serves one wait (glommio asks for readiness again only after a
/// read that succeeded), so each wait takes a fresh one, on a duplicate of the fd, which the
/// stream closes when dropped.
async fn readable(epoll: RawFd) -> io::Result<()> {
    let copy = dup_cloexec(epoll)?;
    // SAFETY: `copy` is a fresh fd owned by the stream from here on.
    let mut stream = unsafe { TcpStream::from_raw_fd(copy.into_raw_fd()) };
    let mut byte = [0u8; 1];
    let _ = std::future::poll_fn(|cx| {
        futures_lite::AsyncRead::poll_read(Pin::new(&mut stream), cx, &mut byte)
    })
    .await;
    Ok(())
}

/// A duplicate of `fd`, closed on exec like every fd the broker opens.
fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall on an open fd.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::AsyncWriteExt;
    use glommio::net::TcpListener;
    use glommio::{LocalExecutorBuilder, Placement};

    /// Runs `test` on a fresh glommio executor thread, as a shard would.
    fn on_executor<Fut: Future<Output = ()> + 'static>(test: fn() -> Fut) {
        LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(64 << 10)
            .spawn(move || async move { test().await })
            .expect("executor starts")
            .join()
            .expect("the test's executor finished");
    }

    /// A connected pair on loopback: the client's glommio stream and the server's `Socket`.
    async fn pair() -> (TcpStream, Socket) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let client = TcpStream::connect(addr).await.expect("connect");
        let accepted = listener.accept().await.expect("accept");
        (client, Socket::new(accepted).expect("registered"))
    }

    #[test]
    fn a_read_that_finds_nothing_waits_and_is_woken_by_input() {
        on_executor(|| async {
            let (mut client, mut socket) = pair().await;
            let mut buf = [0u8; 16];
            let mut read = Box::pin(socket.read(&mut buf));
            assert!(
                futures_lite::future::poll_once(&mut read).await.is_none(),
                "nothing was sent yet"
            );
            client.write_all(b"hello").await.expect("write");
            assert_eq!(read.await.expect("read"), 5);
            assert_eq!(&buf[..5], b"hello");
        });
    }

    #[test]
    fn a_waiting_read_ends_with_zero_when_the_client_closes() {
        on_executor(|| async {
            let (client, mut socket) = pair().await;
            let mut buf = [0u8; 16];
            let mut read = Box::pin(socket.read(&mut buf));
            assert!(futures_lite::future::poll_once(&mut read).await.is_none());
            drop(client);
            assert_eq!(read.await.expect("end of stream"), 0);
        });
    }

    #[test]
    fn slots_of_closed_sockets_are_used_again() {
        on_executor(|| async {
            let (_client, first) = pair().await;
            let slot = first.slot;
            drop(first);
            let (_client, second) = pair().await;
            assert_eq!(second.slot, slot);
        });
    }
}
