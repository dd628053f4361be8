//! The SDK's HTTP client rebuilt on [`CongestionConnector`](super::tcp::CongestionConnector)
//! and [`Warm`](super::warm::Warm): hyper's pooled client (HTTP/1.1, TLS through rustls with
//! the system's roots), connections dialled ahead when asked, the connect and first-byte
//! timeouts of the client's configuration, and hyper's errors turned into the SDK's
//! connector errors so retries classify them as before. A request attempt run inside
//! [`Attempt::scope`] learns which connection hyper put it on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::retry::ErrorKind;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use hyper_util::client::legacy::connect::{CaptureConnection, capture_connection};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::tcp::CongestionConnector;
use super::warm::{Warm, WarmConnector};
use super::wire::{SocketId, WireMeter};

tokio::task_local! {
    static ATTEMPT: Arc<Attempt>;
}

/// One attempt of a request, as the connection under it sees it: the connection hyper
/// picks for the HTTP request the attempt sends (its last, if it sends more than one).
#[derive(Debug, Default)]
pub struct Attempt {
    captured: Mutex<Option<CaptureConnection>>,
}

impl Attempt {
    /// Runs `attempt` (a future that sends its request through a [`tuned_http_client`])
    /// as this attempt.
    pub fn scope<F: std::future::Future>(self: Arc<Self>, attempt: F) -> impl std::future::Future<Output = F::Output> {
        ATTEMPT.scope(self, attempt)
    }

    /// The socket the attempt's request runs on, once hyper has picked its connection.
    pub fn socket(&self) -> Option<SocketId> {
        let captured = self.captured.lock().expect("attempt lock");
        let metadata = captured.as_ref()?.connection_metadata();
        let mut extras = http::Extensions::new();
        metadata.as_ref()?.get_extras(&mut extras);
        extras.get::<SocketId>().copied()
    }
}

/// How long an idle pooled connection is kept.
const IDLE_POOLED: Duration = Duration::from_secs(90);

#[derive(Clone)]
struct Tuned {
    client: Client<WarmConnector, SdkBody>,
    warm: Arc<Warm>,
    wire: Arc<WireMeter>,
    first_byte: Duration,
}

impl std::fmt::Debug for Tuned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tuned").field("warm", &self.warm).field("first_byte", &self.first_byte).finish()
    }
}

/// An HTTP client for the SDK whose sockets use TCP congestion control `algorithm` when
/// one is given (checked beforehand with [`super::tcp::check`]), keeping up to `pool` idle
/// connections per endpoint (the most requests the window may put in flight), connecting
/// within `connect_timeout` and giving up on a response whose headers take longer than
/// `first_byte` (for a request with a body: longer than `first_byte` with nothing moving
/// on any of the client's connections); with the handle that dials its connections ahead
/// and the meter of what its connections moved.
pub fn tuned_http_client(
    algorithm: Option<&str>,
    pool: usize,
    connect_timeout: Duration,
    first_byte: Duration,
) -> Result<(SharedHttpClient, Arc<Warm>, Arc<WireMeter>), String> {
    let mut tcp = TcpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    let meter = Arc::new(WireMeter::default());
    let https = https_over(CongestionConnector::new(tcp, algorithm, meter.clone()))?;
    let warm = Warm::new(https.clone());
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(pool)
        .pool_idle_timeout(IDLE_POOLED)
        .pool_timer(TokioTimer::new())
        .build(WarmConnector { inner: https, warm: warm.clone() });
    Ok((SharedHttpClient::new(Tuned { client, warm: warm.clone(), wire: meter.clone(), first_byte }), warm, meter))
}

/// TLS (rustls, the system's roots) or plain HTTP/1.1 over `tcp`.
pub(super) fn https_over(tcp: CongestionConnector) -> Result<HttpsConnector<CongestionConnector>, String> {
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
        .map_err(|e| format!("cannot load the system's root certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp))
}

impl HttpClient for Tuned {
    fn http_connector(&self, _: &HttpConnectorSettings, _: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

impl HttpConnector for Tuned {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let mut request = match request.try_into_http1x() {
            Ok(r) => r,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let _outside_an_attempt = ATTEMPT.try_with(|a| {
            *a.captured.lock().expect("attempt lock") = Some(capture_connection(&mut request));
        });
        self.warm.saw(request.uri());
        // An upload's response comes only once its body has crossed the path, which on a
        // slow one takes longer than the limit (52 parts sharing 10 MB/s: 27 s each). So
        // while a request with a body waits, the limit restarts whenever the client's
        // connections have moved bytes since it last ran out; it runs out for good once
        // they all stand still. (What this body handed to its socket says nothing: the
        // kernel's send buffer takes megabytes at once.)
        let has_body = request.body().content_length() != Some(0);
        let (sending, limit, wire) = (self.client.request(request), self.first_byte, self.wire.clone());
        HttpConnectorFuture::new(async move {
            tokio::pin!(sending);
            let mut moved = wire.total();
            loop {
                match tokio::time::timeout(limit, &mut sending).await {
                    Err(elapsed) => {
                        let now = wire.total();
                        if !has_body || now == moved {
                            return Err(ConnectorError::timeout(elapsed.into()));
                        }
                        moved = now;
                    }
                    Ok(Err(e)) => return Err(classify(e)),
                    Ok(Ok(response)) => {
                        return HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                            .map_err(|e| ConnectorError::other(e.into(), None));
                    }
                }
            }
        })
    }
}

/// hyper's error as the SDK's: a failed connect or a broken connection is I/O (retried;
/// the client tells "unreachable" from "reset" by the message), a timeout is a timeout.
fn classify(e: hyper_util::client::legacy::Error) -> ConnectorError {
    let io = std::error::Error::source(&e)
        .and_then(|s| std::iter::successors(Some(s), |s| s.source()).find_map(|s| s.downcast_ref::<std::io::Error>()))
        .map(|io| io.kind());
    if io == Some(std::io::ErrorKind::TimedOut) {
        ConnectorError::timeout(e.into())
    } else if e.is_connect() || io.is_some() {
        ConnectorError::io(e.into())
    } else {
        ConnectorError::other(e.into(), Some(ErrorKind::TransientError))
    }
}
