//! Connections dialled ahead of the requests that will use them: while a transfer's first
//! round trip (a CreateMultipartUpload, a listing) is out, the connections its data requests
//! need are opened beside it, so those requests do not each wait a TCP (and TLS) handshake.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use tower_service::Service;

use super::tcp::CongestionConnector;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Https = HttpsConnector<CongestionConnector>;
type Conn = MaybeHttpsStream<super::wire::Metered>;

/// A dialled connection older than this is not handed out: servers close idle connections
/// (S3 after about 20 s), and a request on a closed one fails and is sent again.
const FRESH: Duration = Duration::from_secs(10);

/// Dialled connections not yet taken by hyper, and how many more are wanted.
pub struct Warm {
    dialer: Https,
    /// `scheme://authority` of the requests seen, the first time one is seen.
    endpoint: Mutex<Option<http::Uri>>,
    idle: Mutex<Vec<(String, Instant, Conn)>>,
    /// Dials asked for before any request named the endpoint.
    pending: AtomicUsize,
    dialing: AtomicUsize,
    dialled: AtomicUsize,
}

impl std::fmt::Debug for Warm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warm").field("dialled", &self.dialled.load(Relaxed)).finish_non_exhaustive()
    }
}

fn key_of(uri: &http::Uri) -> String {
    format!("{}://{}", uri.scheme_str().unwrap_or("http"), uri.authority().map(|a| a.as_str()).unwrap_or(""))
}

impl Warm {
    pub(super) fn new(dialer: Https) -> Arc<Self> {
        Arc::new(Self {
            dialer,
            endpoint: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            pending: AtomicUsize::new(0),
            dialing: AtomicUsize::new(0),
            dialled: AtomicUsize::new(0),
        })
    }

    /// Have `n` connections ready for the endpoint: dials what the ones already waiting or
    /// being dialled do not cover, now if a request has named the endpoint, else when the
    /// next one does.
    pub fn want(self: &Arc<Self>, n: usize) {
        let have = self.idle.lock().expect("warm lock").len() + self.dialing.load(Relaxed);
        let more = n.saturating_sub(have);
        if more == 0 {
            return;
        }
        match self.endpoint.lock().expect("warm lock").clone() {
            Some(uri) => self.dial(uri, more),
            None => {
                self.pending.fetch_max(more, Relaxed);
            }
        }
    }

    /// Connections dialled ahead so far (taken or not).
    pub fn dialled(&self) -> usize {
        self.dialled.load(Relaxed)
    }

    /// A request is about to go to `uri`: remembers the endpoint and dials what was wanted
    /// before it was known.
    pub(super) fn saw(self: &Arc<Self>, uri: &http::Uri) {
        let mut endpoint = self.endpoint.lock().expect("warm lock");
        if endpoint.is_none() {
            let Ok(base) = key_of(uri).parse::<http::Uri>() else { return };
            *endpoint = Some(base);
        }
        // Checked on every request, not only the first: a `want` that raced the first one
        // (it found no endpoint, and left its count after this swap had run) is served by
        // the next.
        if self.pending.load(Relaxed) > 0 {
            let n = self.pending.swap(0, Relaxed);
            let base = endpoint.clone().expect("set above");
            drop(endpoint);
            if n > 0 {
                self.dial(base, n);
            }
        }
    }

    fn dial(self: &Arc<Self>, uri: http::Uri, n: usize) {
        tracing::debug!(connections = n, endpoint = %uri, "dialling ahead");
        for _ in 0..n {
            self.dialing.fetch_add(1, Relaxed);
            let (warm, uri) = (self.clone(), uri.clone());
            tokio::spawn(async move {
                let mut dialer = warm.dialer.clone();
                let dialled = async {
                    std::future::poll_fn(|cx| dialer.poll_ready(cx)).await?;
                    dialer.call(uri.clone()).await
                };
                match dialled.await {
                    Ok(conn) => {
                        warm.idle.lock().expect("warm lock").push((key_of(&uri), Instant::now(), conn));
                        warm.dialled.fetch_add(1, Relaxed);
                    }
                    // The request that would have used it dials (and reports) on its own.
                    Err(e) => tracing::debug!(error = %e, "could not dial ahead"),
                }
                warm.dialing.fetch_sub(1, Relaxed);
            });
        }
    }

    fn take(&self, key: &str) -> Option<Conn> {
        let mut idle = self.idle.lock().expect("warm lock");
        idle.retain(|(_, at, _)| at.elapsed() < FRESH);
        let i = idle.iter().position(|(k, _, _)| k == key)?;
        Some(idle.swap_remove(i).2)
    }
}

/// hyper's connector: a connection dialled ahead for the URI's endpoint if one waits,
/// else a new one.
#[derive(Clone)]
pub(super) struct WarmConnector {
    pub(super) inner: Https,
    pub(super) warm: Arc<Warm>,
}

impl Service<http::Uri> for WarmConnector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        match self.warm.take(&key_of(&uri)) {
            Some(conn) => Box::pin(std::future::ready(Ok(conn))),
            None => self.inner.call(uri),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::client::legacy::connect::HttpConnector;

    /// A listener that keeps what it accepts open and counts it.
    async fn listener() -> (http::Uri, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/", l.local_addr().unwrap()).parse().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                count.fetch_add(1, Relaxed);
                open.push(s);
            }
        });
        (uri, accepted)
    }

    async fn settle(what: impl Fn() -> bool) {
        for _ in 0..200 {
            if what() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_connection_dialled_ahead_goes_to_a_request_for_its_endpoint_once() {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        let https = super::super::http::https_over(CongestionConnector::new(tcp, None, Default::default())).unwrap();
        let warm = Warm::new(https.clone());
        let mut connector = WarmConnector { inner: https, warm: warm.clone() };
        let (uri, accepted) = listener().await;
        let (other, other_accepted) = listener().await;

        // Wanted before any request named the endpoint: nothing to dial yet.
        warm.want(2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(accepted.load(Relaxed), 0);
        // The first request names it: the two go out.
        warm.saw(&uri);
        settle(|| warm.dialled() == 2 && accepted.load(Relaxed) == 2).await;
        assert_eq!((warm.dialled(), accepted.load(Relaxed)), (2, 2));

        // Requests for it take those two, then dial their own.
        for expected in [2, 2, 3] {
            std::future::poll_fn(|cx| connector.poll_ready(cx)).await.unwrap();
            connector.call(uri.clone()).await.unwrap();
            settle(|| accepted.load(Relaxed) == expected).await;
            assert_eq!(accepted.load(Relaxed), expected);
        }
        // Another endpoint never gets them.
        warm.want(1);
        settle(|| warm.dialled() == 3).await;
        connector.call(other.clone()).await.unwrap();
        settle(|| other_accepted.load(Relaxed) == 1).await;
        assert_eq!(other_accepted.load(Relaxed), 1);
        assert_eq!(accepted.load(Relaxed), 4, "the one wanted last went to the endpoint first seen");
        connector.call(uri).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(accepted.load(Relaxed), 4, "and the next request for it took it");
    }
}
