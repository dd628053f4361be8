//! TCP connections, optionally with a chosen congestion control: hyper's connector, then
//! `setsockopt(TCP_CONGESTION)` on each new socket (Linux; the kernel's list of
//! algorithms is in `/proc/sys/net/ipv4/tcp_available_congestion_control`), each counted
//! by the client's [`WireMeter`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;

use super::wire::{Metered, WireMeter};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const AVAILABLE: &str = "/proc/sys/net/ipv4/tcp_available_congestion_control";

/// Congestion control algorithms the kernel offers (empty where it does not say).
pub fn available() -> Vec<String> {
    std::fs::read_to_string(AVAILABLE).map(|s| s.split_whitespace().map(str::to_owned).collect()).unwrap_or_default()
}

/// Checks that this process may put `name` on its sockets, by trying it on a socket that
/// is never connected.
pub fn check(name: &str) -> Result<(), String> {
    let offered = || match available() {
        v if v.is_empty() => String::new(),
        v => format!("; this kernel offers: {}", v.join(", ")),
    };
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| format!("cannot open a socket to try TCP congestion control '{name}': {e}"))?;
    socket
        .set_tcp_congestion(name.as_bytes())
        .map_err(|e| format!("TCP congestion control '{name}' cannot be used here ({e}){}", offered()))
}

/// hyper's TCP connector, setting the congestion control of every connection it opens
/// (when one is chosen; else the kernel's default stays) and counting it on `meter`.
#[derive(Clone, Debug)]
pub struct CongestionConnector {
    inner: HttpConnector,
    algorithm: Option<Arc<str>>,
    meter: Arc<WireMeter>,
}

impl CongestionConnector {
    /// Wraps `inner` (which must accept `https` URIs when TLS goes on top).
    pub fn new(inner: HttpConnector, algorithm: Option<&str>, meter: Arc<WireMeter>) -> Self {
        Self { inner, algorithm: algorithm.map(Into::into), meter }
    }
}

impl tower_service::Service<http::Uri> for CongestionConnector {
    type Response = Metered;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let (algorithm, meter) = (self.algorithm.clone(), self.meter.clone());
        Box::pin(async move {
            let io: TokioIo<tokio::net::TcpStream> = connecting.await?;
            if let Some(algorithm) = algorithm {
                socket2::SockRef::from(io.inner()).set_tcp_congestion(algorithm.as_bytes())?;
            }
            Ok(meter.track(io))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_service::Service;

    #[tokio::test]
    async fn new_connections_carry_the_chosen_algorithm() {
        // reno is built into every Linux kernel; any process may choose it.
        check("reno").expect("reno is always there");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: http::Uri = format!("http://{}", listener.local_addr().unwrap()).parse().unwrap();
        let mut connector = CongestionConnector::new(HttpConnector::new(), Some("reno"), Arc::default());
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await.unwrap();
        let io = connector.call(uri).await.unwrap();
        let set = socket2::SockRef::from(io.tcp()).tcp_congestion().unwrap();
        assert_eq!(String::from_utf8_lossy(&set).trim_end_matches('\0'), "reno");
    }

    #[test]
    fn an_unknown_algorithm_is_named_with_what_the_kernel_offers() {
        let err = check("warp-drive").unwrap_err();
        assert!(err.contains("'warp-drive'"), "{err}");
        assert!(err.contains("reno"), "lists the kernel's algorithms: {err}");
    }
}
