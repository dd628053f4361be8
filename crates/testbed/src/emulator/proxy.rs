//! The emulator's HTTP proxy: forwards S3 requests to an upstream endpoint through the
//! scenario's network (delay, shared bottleneck, per-connection cap) and faults (503
//! SlowDown above per-prefix request rates, resets, stalls, 500s, corrupted bytes).
//!
//! Delay model: a new connection waits one RTT (the TCP handshake); each request waits
//! half an RTT (plus jitter) before it is forwarded and half an RTT before its response
//! head is returned; bodies flow chunk by chunk through the connection's limiter and then
//! the shared bottleneck of their direction.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::scenario::{Params, Scenario};
use super::stats::{Event, Report, Stats};
use s3opt::network::pacing::RateLimiter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// Largest piece shaped at once.
const CHUNK: usize = 16 * 1024;

/// Receive buffer of each client connection (the kernel doubles it). Bytes a client
/// uploads wait here for the shaper, and the client's kernel counts them as delivered once
/// they are in it: with the kernel's autotuning (up to `tcp_rmem`'s 6 MiB per connection)
/// a round of 51 parts of 5 MiB was mostly "acknowledged" seconds before the shaped link
/// had carried it, which no real path does (there, bytes are acknowledged after the
/// bottleneck). This much keeps a small queue before the shaper, as a router's would.
const CLIENT_RECEIVE_BUFFER: u32 = 128 * 1024;

/// A listener whose connections have [`CLIENT_RECEIVE_BUFFER`] (set before they are
/// accepted, so the window they advertise from the handshake on is the small one).
fn listen_with_small_receive_buffers(listen: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if listen.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_recv_buffer_size(CLIENT_RECEIVE_BUFFER)?;
    socket.bind(listen)?;
    socket.listen(1024)
}

/// State shared by all connections.
struct Shared {
    scenario: Scenario,
    upstream: Uri,
    client: Client<HttpConnector, Body>,
    stats: Stats,
    up: Mutex<RateLimiter>,
    down: Mutex<RateLimiter>,
    prefixes: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Per-connection limiters.
struct Conn {
    up: Mutex<RateLimiter>,
    down: Mutex<RateLimiter>,
}

#[derive(Clone, Copy)]
enum Dir {
    Up,
    Down,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Reset,
    Stall(f64),
}

impl Shared {
    fn params(&self) -> Params {
        self.scenario.params_at(self.stats.started().elapsed().as_secs_f64())
    }

    /// Takes one request token for `prefix`; false when over the limit.
    fn admit(&self, prefix: &str, rate: f64) -> bool {
        let now = Instant::now();
        let mut map = self.prefixes.lock().expect("prefix lock");
        let (tokens, last) = map.entry(prefix.to_owned()).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate.max(1.0));
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The prefix a request's key falls under: bucket plus the key up to its `depth`-th `/`.
/// `None` for requests that name no object (bucket listings, service calls).
pub fn prefix_of(path: &str, depth: usize) -> Option<String> {
    let (bucket, key) = path.trim_start_matches('/').split_once('/')?;
    if key.is_empty() {
        return None;
    }
    let segments: Vec<&str> = key.split('/').collect();
    let keep = depth.min(segments.len() - 1);
    Some(format!("{bucket}/{}", segments[..keep].join("/")))
}

fn s3_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>emulator</RequestId></Error>"
    );
    Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .body(Full::new(Bytes::from(xml)).map_err(|never| match never {}).boxed())
        .expect("valid response")
}

fn json(value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec_pretty(value).expect("serializable");
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed())
        .expect("valid response")
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn content_length(headers: &http::HeaderMap) -> u64 {
    headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

async fn handle(shared: Arc<Shared>, conn: Arc<Conn>, req: Request<Incoming>) -> Result<Response<Body>, BoxError> {
    let path = req.uri().path().to_owned();
    if let Some(cmd) = path.strip_prefix("/__emulator/") {
        return Ok(match cmd {
            "stats" => json(&shared.stats.report(&shared.scenario.name)),
            "reset" => {
                shared.stats.reset();
                shared.prefixes.lock().expect("prefix lock").clear();
                json(&serde_json::json!({"reset": true}))
            }
            _ => s3_error(StatusCode::NOT_FOUND, "NoSuchEmulatorCommand", "try /__emulator/stats or /__emulator/reset"),
        });
    }
    let number = shared.stats.next_request();
    let p = shared.params();
    let (half_rtt, jitter) = {
        let mut rng = rand::rng();
        (secs(p.link.rtt_ms / 2000.0), secs(rng.random::<f64>() * p.link.jitter_ms / 1000.0))
    };
    tokio::time::sleep(half_rtt + jitter).await;

    let object = path.trim_start_matches('/');
    if object.contains('/') && p.faults.fail_prefixes.iter().any(|f| !f.is_empty() && object.starts_with(f.as_str())) {
        tokio::time::sleep(half_rtt).await;
        shared.stats.record(Event::Error);
        shared.stats.record(Event::Status(p.faults.fail_status));
        return Ok(if p.faults.fail_status == 503 {
            s3_error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "prefix failed by the emulator")
        } else {
            s3_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "prefix failed by the emulator")
        });
    }
    let rate = p.throttle.requests_per_sec_per_prefix;
    if rate > 0.0
        && let Some(prefix) = prefix_of(&path, p.throttle.prefix_depth)
        && !shared.admit(&prefix, rate)
    {
        tokio::time::sleep(half_rtt).await;
        shared.stats.record(Event::Status(503));
        return Ok(s3_error(StatusCode::SERVICE_UNAVAILABLE, "SlowDown", "Please reduce your request rate."));
    }
    let (error, fault, corrupt, at_fraction) = {
        let mut rng = rand::rng();
        let error = rng.random::<f64>() < p.faults.error_rate;
        let fault = if number < p.faults.reset_first || rng.random::<f64>() < p.faults.reset_rate {
            Some(Fault::Reset)
        } else if number < p.faults.stall_first
            || p.faults.stall_at.contains(&number)
            || rng.random::<f64>() < p.faults.stall_rate
        {
            Some(Fault::Stall(p.faults.stall_secs))
        } else {
            None
        };
        (error, fault, rng.random::<f64>() < p.faults.corrupt_rate, rng.random_range(0.1..0.9))
    };
    if error {
        tokio::time::sleep(half_rtt).await;
        shared.stats.record(Event::Error);
        shared.stats.record(Event::Status(500));
        return Ok(s3_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "injected by the emulator"));
    }

    let (mut parts, body) = req.into_parts();
    let up_len = content_length(&parts.headers);
    let upload = up_len > 0;
    let corrupt = corrupt || (upload && shared.stats.take_upload_number() < p.faults.corrupt_first);
    let mut uri = shared.upstream.clone().into_parts();
    uri.path_and_query = parts.uri.path_and_query().cloned();
    parts.uri = Uri::from_parts(uri)?;
    let at = |len: u64| (len as f64 * at_fraction) as u64;
    let up_body = shape(
        body,
        up_len,
        Dir::Up,
        shared.clone(),
        conn.clone(),
        fault.filter(|_| upload).map(|f| (f, at(up_len))),
        (corrupt && upload).then(|| at(up_len)),
    );
    let resp = shared.client.request(Request::from_parts(parts, up_body)).await?;
    tokio::time::sleep(half_rtt).await;
    shared.stats.record(Event::Status(resp.status().as_u16()));
    let (parts, body) = resp.into_parts();
    let down_len = content_length(&parts.headers);
    let down_fault = fault.filter(|_| !upload).map(|f| (f, at(down_len)));
    Ok(Response::from_parts(parts, shape(body, down_len, Dir::Down, shared, conn, down_fault, None)))
}

/// Streams `body` through the limiters of `dir`, injecting `fault` at its byte offset and
/// flipping the byte at `corrupt_at`.
#[allow(clippy::too_many_arguments)]
fn shape<B>(
    body: B,
    len: u64,
    dir: Dir,
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    fault: Option<(Fault, u64)>,
    corrupt_at: Option<u64>,
) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    struct St<B> {
        body: B,
        pending: Bytes,
        sent: u64,
        fault: Option<(Fault, u64)>,
        corrupt_at: Option<u64>,
        done: bool,
    }
    let st = St { body, pending: Bytes::new(), sent: 0, fault, corrupt_at, done: false };
    let stream = futures::stream::unfold(st, move |mut st| {
        let (shared, conn) = (shared.clone(), conn.clone());
        async move {
            if st.done {
                return None;
            }
            while st.pending.is_empty() {
                match st.body.frame().await {
                    None => return None,
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((Err(e.into()), st));
                    }
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => st.pending = data,
                        Err(frame) => return Some((Ok(frame), st)),
                    },
                }
            }
            let n = st.pending.len().min(CHUNK);
            if let Some((fault, at)) = st.fault
                && st.sent + n as u64 > at
            {
                st.fault = None;
                match fault {
                    Fault::Reset => {
                        shared.stats.record(Event::Reset);
                        st.done = true;
                        return Some((Err(BoxError::from("connection reset injected by the emulator")), st));
                    }
                    Fault::Stall(s) => {
                        shared.stats.record(Event::Stall);
                        tokio::time::sleep(secs(s)).await;
                    }
                }
            }
            let mut piece = st.pending.split_to(n);
            if let Some(at) = st.corrupt_at
                && (st.sent..st.sent + n as u64).contains(&at)
            {
                let mut copy = BytesMut::from(&piece[..]);
                copy[(at - st.sent) as usize] ^= 0x5a;
                piece = copy.freeze();
                st.corrupt_at = None;
                shared.stats.record(Event::Corruption);
            }
            let p = shared.params();
            let (conn_lim, shared_lim, bottleneck) = match dir {
                Dir::Up => (&conn.up, &shared.up, p.link.bottleneck_up_mbps),
                Dir::Down => (&conn.down, &shared.down, p.link.bottleneck_down_mbps),
            };
            let t = conn_lim.lock().expect("limiter").reserve(Instant::now(), n, p.link.per_connection_mbps);
            wait_until(t).await;
            let t = shared_lim.lock().expect("limiter").reserve(Instant::now(), n, bottleneck);
            wait_until(t).await;
            shared.stats.record(match dir {
                Dir::Up => Event::BytesUp(n as u64),
                Dir::Down => Event::BytesDown(n as u64),
            });
            st.sent += n as u64;
            Some((Ok(Frame::data(piece)), st))
        }
    });
    // Keep the length known, so Content-Length survives the proxy (S3 requires it).
    BoxBody::new(KnownLength { inner: BoxBody::new(StreamBody::new(stream)), len })
}

/// A body that reports its exact length.
struct KnownLength {
    inner: Body,
    len: u64,
}

impl hyper::body::Body for KnownLength {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.len)
    }
}

/// Sleeps until `t`; no timer at all when `t` has passed (a tokio timer rounds up to the
/// next millisecond tick, which would cap a stream at one chunk per tick).
async fn wait_until(t: Instant) {
    if t > Instant::now() {
        tokio::time::sleep_until(t.into()).await;
    }
}

/// A running emulator.
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl Emulator {
    /// Listens on `listen` and forwards to `upstream` (e.g. `http://127.0.0.1:9000`).
    pub async fn start(scenario: Scenario, listen: SocketAddr, upstream: &str) -> std::io::Result<Self> {
        let upstream: Uri = upstream.parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad upstream URL '{upstream}': {e}"))
        })?;
        if upstream.scheme_str() != Some("http") || upstream.authority().is_none() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "upstream must be http://HOST:PORT"));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(90)).build(connector);
        let now = Instant::now();
        let shared = Arc::new(Shared {
            scenario,
            upstream,
            client,
            stats: Stats::new(),
            up: Mutex::new(RateLimiter::new(now)),
            down: Mutex::new(RateLimiter::new(now)),
            prefixes: Mutex::new(HashMap::new()),
        });
        let listener = listen_with_small_receive_buffers(listen)?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let sh = shared.clone();
        tokio::spawn(async move {
            loop {
                let socket = tokio::select! {
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(e) => { tracing::warn!("accept failed: {e}"); continue; }
                    },
                    _ = stopped.changed() => break,
                };
                let _ = socket.set_nodelay(true);
                let shared = sh.clone();
                tokio::spawn(async move {
                    shared.stats.record(Event::Connection);
                    tokio::time::sleep(secs(shared.params().link.rtt_ms / 1000.0)).await;
                    let now = Instant::now();
                    let conn = Arc::new(Conn {
                        up: Mutex::new(RateLimiter::new(now)),
                        down: Mutex::new(RateLimiter::new(now)),
                    });
                    let svc = service_fn(move |req| handle(shared.clone(), conn.clone(), req));
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(socket), svc).await;
                });
            }
        });
        Ok(Self { addr, shared, stop })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What happened so far.
    pub fn report(&self) -> Report {
        self.shared.stats.report(&self.shared.scenario.name)
    }

    /// Zeroes the stats and restarts the schedule clock.
    pub fn reset(&self) {
        self.shared.stats.reset();
        self.shared.prefixes.lock().expect("prefix lock").clear();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_of;

    #[test]
    fn prefixes_cut_keys_at_the_nth_slash() {
        assert_eq!(prefix_of("/b/a/b/c.txt", 1).as_deref(), Some("b/a"));
        assert_eq!(prefix_of("/b/a/b/c.txt", 2).as_deref(), Some("b/a/b"));
        assert_eq!(prefix_of("/b/a/b/c.txt", 5).as_deref(), Some("b/a/b"));
        assert_eq!(prefix_of("/b/file", 1).as_deref(), Some("b/"));
        assert_eq!(prefix_of("/b/", 1), None);
        assert_eq!(prefix_of("/b", 1), None);
    }
}
