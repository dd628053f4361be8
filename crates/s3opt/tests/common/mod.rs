//! Shared setup: an embedded S3 endpoint on an ephemeral port and a client for it.

#![allow(dead_code)]

use s3opt::{ClientConfig, OptimizedS3Client};
use testbed::{EmbeddedServer, ServerConfig};

pub const BUCKET: &str = "test-bucket";
pub const MIB: u64 = 1024 * 1024;

pub struct Env {
    pub dir: tempfile::TempDir,
    pub server: EmbeddedServer,
    pub client: OptimizedS3Client,
}

pub fn config(server: &EmbeddedServer) -> ClientConfig {
    ClientConfig {
        endpoint_url: Some(server.endpoint_url()),
        region: Some("us-east-1".into()),
        credentials: Some((server.config().access_key.clone(), server.config().secret_key.clone())),
        controller: s3opt::ControllerKind::Fixed(4),
        concurrency: 4,
        part_size: 5 * MIB,
        memory_budget: 32 * MIB,
        ..ClientConfig::default()
    }
}

pub async fn start() -> Env {
    start_with(|_| {}).await
}

pub async fn start_with(tweak: impl FnOnce(&mut ClientConfig)) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = EmbeddedServer::start(ServerConfig::ephemeral(dir.path())).await.expect("server starts");
    server.create_bucket(BUCKET).expect("bucket");
    let mut cfg = config(&server);
    tweak(&mut cfg);
    let client = OptimizedS3Client::new(cfg).await.expect("client");
    Env { dir, server, client }
}

/// Deterministic pseudo-random bytes (xorshift), incompressible enough for transfer tests.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    testbed::data::noise(len, seed)
}
