//! The embedded S3 endpoint: [`Store`](crate::store::Store) served over HTTP with SigV4 auth.
//!
//! [`EmbeddedServer::start`] binds (port 0 picks a free port), serves on the current tokio
//! runtime and stops when the handle is dropped or [`EmbeddedServer::shutdown`] is awaited.

use std::net::SocketAddr;
use std::path::PathBuf;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::Store;

/// How to run the endpoint.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Directory holding the buckets (one sub-directory each).
    pub root: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    pub addr: SocketAddr,
    /// Access key clients must sign with.
    pub access_key: String,
    /// Secret key clients must sign with.
    pub secret_key: String,
}

impl ServerConfig {
    /// Loopback, ephemeral port, fixed test credentials.
    pub fn ephemeral(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            access_key: "cargoship".into(),
            secret_key: "cargoship-secret".into(),
        }
    }
}

/// A running endpoint. Dropping it stops accepting connections.
pub struct EmbeddedServer {
    addr: SocketAddr,
    config: ServerConfig,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl EmbeddedServer {
    /// Binds and starts serving in the background on the current tokio runtime.
    pub async fn start(config: ServerConfig) -> std::io::Result<Self> {
        let store = Store::new(&config.root)?;
        let service = {
            let mut b = S3ServiceBuilder::new(store);
            b.set_auth(SimpleAuth::from_single(config.access_key.clone(), config.secret_key.clone()));
            b.build()
        };
        let listener = TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            let graceful = hyper_util::server::graceful::GracefulShutdown::new();
            loop {
                let socket = tokio::select! {
                    res = listener.accept() => match res {
                        Ok((socket, _)) => socket,
                        Err(e) => {
                            tracing::warn!("accept failed: {e}");
                            continue;
                        }
                    },
                    _ = stopped.changed() => break,
                };
                let _ = socket.set_nodelay(true);
                let conn = http.serve_connection(TokioIo::new(socket), service.clone());
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            drop(listener);
            tokio::select! {
                () = graceful.shutdown() => {},
                () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {},
            }
        });
        Ok(Self { addr, config, stop, task: Some(task) })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, what a client passes as its endpoint URL.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The configuration it was started with (root, keys).
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Creates a bucket directly in the store (no request needed).
    pub fn create_bucket(&self, name: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(self.config.root.join(name))
    }

    /// Stops accepting, lets open connections finish (up to 5 s).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Serves until the task ends (for `cargoship serve`, which stops on Ctrl-C).
    pub async fn wait(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
