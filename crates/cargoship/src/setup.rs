//! Where requests go: a real S3 (or S3-compatible) endpoint when one or credentials are
//! configured, else the embedded local store, started in-process and announced on stderr.

use std::path::{Path, PathBuf};

use anyhow::Context;
use s3opt::{ClientConfig, ControllerKind, OptimizedS3Client};
use testbed::{EmbeddedServer, ServerConfig};

use crate::cli::GlobalOpts;

/// A ready client and, in embedded mode, the server it talks to (kept alive with it).
pub struct Session {
    pub client: OptimizedS3Client,
    pub embedded: Option<EmbeddedServer>,
}

impl Session {
    /// In embedded mode, creates `bucket` if it does not exist (the local store starts
    /// empty, and writing to it should just work).
    pub fn ensure_embedded_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        if let Some(server) = &self.embedded {
            server
                .create_bucket(bucket)
                .with_context(|| format!("cannot create bucket '{bucket}' in the embedded store"))?;
        }
        Ok(())
    }
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// Whether the AWS credential chain has something to work with.
fn aws_credentials_configured() -> bool {
    let env = [
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ];
    if env.iter().any(|v| env_set(v)) {
        return true;
    }
    let file = |var: &str, default: &str| {
        std::env::var_os(var).map(PathBuf::from).or_else(|| home().map(|h| h.join(".aws").join(default)))
    };
    [file("AWS_SHARED_CREDENTIALS_FILE", "credentials"), file("AWS_CONFIG_FILE", "config")]
        .into_iter()
        .flatten()
        .any(|p| p.is_file())
}

/// Where the embedded store keeps its data.
pub fn embedded_root() -> PathBuf {
    if let Some(p) = std::env::var_os("CARGOSHIP_EMBEDDED_ROOT") {
        return PathBuf::from(p);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".local").join("share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("cargoship").join("s3")
}

fn client_config(g: &GlobalOpts) -> ClientConfig {
    ClientConfig {
        endpoint_url: g.endpoint_url.clone(),
        region: g.region.clone(),
        profile: g.profile.clone(),
        controller: match (g.controller, g.concurrency) {
            (Some(c), _) => c,
            (None, Some(n)) => ControllerKind::Fixed(n as usize),
            (None, None) => ControllerKind::Auto,
        },
        concurrency: g.concurrency.map_or(ClientConfig::default().concurrency, |n| n as usize),
        // A number given is where to start, on any path.
        short_path_concurrency: if g.concurrency.is_some() {
            None
        } else {
            ClientConfig::default().short_path_concurrency
        },
        part_size: g.part_size,
        memory_budget: g.memory_budget,
        bandwidth_limit: g.bwlimit,
        tcp_congestion: g.tcp_congestion.clone(),
        ..ClientConfig::default()
    }
}

/// Builds the session for a command.
pub async fn connect(g: &GlobalOpts) -> anyhow::Result<Session> {
    let mut cfg = client_config(g);
    let explicit_endpoint = g.endpoint_url.is_some() || env_set("AWS_ENDPOINT_URL_S3");
    if explicit_endpoint || g.profile.is_some() || aws_credentials_configured() {
        let client = OptimizedS3Client::new(cfg).await?;
        return Ok(Session { client, embedded: None });
    }
    let root = embedded_root();
    std::fs::create_dir_all(&root)
        .with_context(|| format!("cannot create the embedded store at {}", root.display()))?;
    let server = EmbeddedServer::start(ServerConfig::ephemeral(&root))
        .await
        .with_context(|| format!("cannot start the embedded store at {}", root.display()))?;
    eprintln!(
        "cargoship: no S3 endpoint or AWS credentials configured; using the embedded local store at {} \
         (served on {}). Set --endpoint-url, AWS_ENDPOINT_URL or AWS credentials to use real S3.",
        display(&root),
        server.endpoint_url()
    );
    cfg.endpoint_url = Some(server.endpoint_url());
    cfg.credentials = Some((server.config().access_key.clone(), server.config().secret_key.clone()));
    cfg.region = Some("us-east-1".into());
    let client = OptimizedS3Client::new(cfg).await?;
    Ok(Session { client, embedded: Some(server) })
}

fn display(p: &Path) -> String {
    p.canonicalize().unwrap_or_else(|_| p.to_owned()).display().to_string()
}
