//! What the client's connections have moved, as the kernel counts it: for every open
//! socket, the bytes the far end acknowledged plus the bytes received (`TCP_INFO`), and
//! the totals of sockets already closed. Unlike the bytes a client hands to its sockets,
//! this is progress on the path: an upload's bodies vanish into send buffers of up to
//! 4 MiB per connection, most of a round of parts at once. Each socket can be watched on its
//! own too, to see a request's connection stall.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The client's connections and their counts.
#[derive(Debug, Default)]
pub struct WireMeter {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    open: HashMap<u64, RawFd>,
    /// Bytes moved by connections since closed.
    closed: u64,
}

impl WireMeter {
    /// Bytes acknowledged and received over all connections so far (never decreases,
    /// except where the kernel cannot say: then a socket counts as nothing).
    pub fn total(&self) -> u64 {
        // The lock is held while reading: a socket is removed, under it, before it closes.
        let state = self.state.lock().expect("wire meter lock");
        state.closed + state.open.values().map(|&fd| count(fd).moved).sum::<u64>()
    }

    /// Socket `id`'s count now (`None` once it has closed).
    pub fn socket(&self, id: SocketId) -> Option<SocketCount> {
        let state = self.state.lock().expect("wire meter lock");
        state.open.get(&id.0).map(|&fd| count(fd))
    }

    /// Counts `io` from now until it is dropped.
    pub fn track(self: &Arc<Self>, io: TokioIo<TcpStream>) -> Metered {
        let mut state = self.state.lock().expect("wire meter lock");
        let id = state.next;
        state.next += 1;
        state.open.insert(id, io.inner().as_raw_fd());
        Metered { io, id, meter: self.clone() }
    }

    fn close(&self, id: u64) {
        let mut state = self.state.lock().expect("wire meter lock");
        if let Some(fd) = state.open.remove(&id) {
            state.closed += count(fd).moved;
        }
    }
}

/// One of a meter's connections. hyper hands it to the request that runs on it, as an
/// extra of the connection's metadata ([`Connected::extra`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketId(u64);

/// One socket, as the kernel counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketCount {
    /// Bytes the peer acknowledged plus bytes received.
    pub moved: u64,
    /// Whether bytes written to it wait for the peer's acknowledgement (queued or sent).
    pub unacked: bool,
}

/// Socket `fd`'s count (nothing if the kernel does not say).
#[cfg(target_os = "linux")]
fn count(fd: RawFd) -> SocketCount {
    // SAFETY: `tcp_info` is plain data, and getsockopt writes at most `len` bytes of it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len);
        if rc != 0 {
            return SocketCount::default();
        }
        SocketCount {
            moved: info.tcpi_bytes_acked + info.tcpi_bytes_received,
            unacked: info.tcpi_unacked > 0 || info.tcpi_notsent_bytes > 0,
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn count(_: RawFd) -> SocketCount {
    SocketCount::default()
}

/// Watches the socket one request runs on for a stall: bytes of its own waiting for the
/// peer's acknowledgement, and nothing acknowledged or received for a while. (A request
/// waiting for its response holds no unacknowledged bytes: the server is working.)
#[derive(Debug, Default)]
pub struct StallWatch {
    /// The socket, its count when last seen to change, and when that was.
    still: Option<(SocketId, u64, Instant)>,
}

impl StallWatch {
    /// How long the socket, seen at `now` with `count`, has been stalled (zero while it
    /// moves or holds nothing of the request's).
    pub fn still_for(&mut self, now: Instant, socket: Option<(SocketId, SocketCount)>) -> Duration {
        match (socket, self.still) {
            (Some((id, c)), Some((seen, moved, since))) if c.unacked && seen == id && moved == c.moved => now - since,
            (Some((id, c)), _) if c.unacked => {
                self.still = Some((id, c.moved, now));
                Duration::ZERO
            }
            _ => {
                self.still = None;
                Duration::ZERO
            }
        }
    }
}

/// A connection counted by a [`WireMeter`] until it is dropped.
pub struct Metered {
    io: TokioIo<TcpStream>,
    id: u64,
    meter: Arc<WireMeter>,
}

impl Metered {
    /// The socket.
    pub fn tcp(&self) -> &TcpStream {
        self.io.inner()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // The socket is still open here: its fields are dropped after this.
        self.meter.close(self.id);
    }
}

impl Connection for Metered {
    fn connected(&self) -> Connected {
        self.io.connected().extra(SocketId(self.id))
    }
}

impl hyper::rt::Read for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Metered {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_socket_is_stalled_while_it_holds_unacknowledged_bytes_and_nothing_moves() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let socket = |id, moved, unacked| Some((SocketId(id), SocketCount { moved, unacked }));
        let mut watch = StallWatch::default();
        assert_eq!(watch.still_for(at(0), None), Duration::ZERO, "no connection yet");
        assert_eq!(watch.still_for(at(100), socket(1, 10, true)), Duration::ZERO);
        assert_eq!(watch.still_for(at(1100), socket(1, 10, true)), Duration::from_secs(1));
        assert_eq!(watch.still_for(at(1200), socket(1, 20, true)), Duration::ZERO, "it moved");
        assert_eq!(watch.still_for(at(3200), socket(1, 20, true)), Duration::from_secs(2));
        assert_eq!(watch.still_for(at(3300), socket(1, 20, false)), Duration::ZERO, "all acknowledged: waiting");
        assert_eq!(watch.still_for(at(3400), socket(1, 20, true)), Duration::ZERO, "counted afresh");
        assert_eq!(watch.still_for(at(5400), socket(2, 20, true)), Duration::ZERO, "another socket");
        assert_eq!(watch.still_for(at(5900), socket(2, 20, true)), Duration::from_millis(500));
        assert_eq!(watch.still_for(at(6000), None), Duration::ZERO, "closed");
    }

    #[tokio::test]
    async fn a_socket_whose_peer_stops_reading_holds_unacknowledged_bytes_until_it_reads() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (read_now, told) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            told.await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got.len()
        });
        let meter = Arc::new(WireMeter::default());
        let io = meter.track(TokioIo::new(TcpStream::connect(addr).await.unwrap()));
        let id = SocketId(io.id);
        let writer = tokio::spawn(async move {
            let mut io = TokioIo::new(io);
            io.write_all(&vec![3u8; 16 << 20]).await.unwrap();
            io.shutdown().await.unwrap();
            io
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stuck = meter.socket(id).unwrap();
        assert!(stuck.unacked, "16 MiB cannot all be in the peer's buffers: {stuck:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(meter.socket(id).unwrap().moved, stuck.moved, "nothing moves while the peer does not read");
        read_now.send(()).unwrap();
        assert_eq!(server.await.unwrap(), 16 << 20);
        let io = writer.await.unwrap();
        // (The peer's last acknowledgement may still be on its way.)
        let mut done = meter.socket(id).unwrap();
        for _ in 0..100 {
            if !done.unacked {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            done = meter.socket(id).unwrap();
        }
        assert!(!done.unacked, "all acknowledged once the peer read it: {done:?}");
        assert!(done.moved >= 16 << 20, "{done:?}");
        drop(io);
        assert_eq!(meter.socket(id), None, "a closed socket is gone");
    }

    #[tokio::test]
    async fn counts_what_the_peer_acknowledged_and_what_arrived_including_closed_sockets() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = vec![0u8; 300_000];
            s.read_exact(&mut got).await.unwrap();
            s.write_all(&[7u8; 50_000]).await.unwrap();
            s.flush().await.unwrap();
        });
        let meter = Arc::new(WireMeter::default());
        let mut io = meter.track(TokioIo::new(TcpStream::connect(addr).await.unwrap()));
        // (Linux counts the SYN as one byte acknowledged.)
        let base = meter.total();
        assert!(base <= 1, "{base}");
        let (mut r, mut w) = tokio::io::split(TokioIo::new(&mut io));
        w.write_all(&[1u8; 300_000]).await.unwrap();
        let mut back = vec![0u8; 50_000];
        r.read_exact(&mut back).await.unwrap();
        server.await.unwrap();
        // The server read all 300 kB before answering, so all of it was acknowledged.
        // (And the peer's FIN as one byte received.)
        let moved = meter.total() - base;
        assert!((350_000..=350_001).contains(&moved), "{moved}");
        drop((r, w));
        drop(io);
        assert_eq!(meter.total() - base, moved, "a closed connection's bytes still count");
    }
}
