//! `videosdgx serve`: the studio server in the foreground.

use anyhow::Context;
use clap::Args;
use std::sync::Arc;
use videosdgx_studio::{App, StudioConfig, server};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to bind. The default keeps the studio private to this machine.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 7860)]
    pub port: u16,
    /// Largest accepted upload in bytes.
    #[arg(long, default_value_t = StudioConfig::DEFAULT_MAX_UPLOAD_BYTES)]
    pub max_upload_bytes: u64,
    /// Ask for the access token even on loopback (always asked on any other address).
    #[arg(long, env = "VIDEOSDGX_REQUIRE_AUTH")]
    pub require_auth: bool,
    /// Seconds a worker (`videosdgx worker --join`) may stay silent before its cards leave and
    /// the generation it ran is retried on another card.
    #[arg(long, value_name = "SECONDS", default_value_t = StudioConfig::DEFAULT_WORKER_LEASE.as_secs_f64())]
    pub worker_lease: f64,
}

pub fn run(mut config: StudioConfig, args: ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let data = config.data_dir.clone();
        config.max_upload_bytes = args.max_upload_bytes;
        config.require_auth = args.require_auth;
        if !(args.worker_lease.is_finite() && (0.3..=3600.0).contains(&args.worker_lease)) {
            anyhow::bail!("--worker-lease must be 0.3 to 3600 seconds");
        }
        config.worker_lease = std::time::Duration::from_secs_f64(args.worker_lease);
        let app = tokio::task::spawn_blocking(move || App::open(config))
            .await?
            .with_context(|| format!("cannot open studio data in {}", data.display()))?;
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        server::serve(Arc::new(app), listener, server::shutdown_signal()).await?;
        Ok(())
    })
}
