//! `tollgate mock`: the OpenAI-compatible simulator as a process. Binds, announces
//! `listening on http://ADDR` as the first line of stdout once the listener is bound
//! (tests wait for that line instead of sleeping), serves until SIGINT/SIGTERM, exits 0.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use tokio::net::TcpListener;
use tollgate_simulator::config::{builtin_models, parse_models};
use tollgate_simulator::SimConfig;

/// Options of `tollgate mock` (the table in docs/simulator.md).
#[derive(Debug, Args)]
pub struct MockArgs {
    /// Address to bind (port 0 for an ephemeral port).
    #[arg(long, env = "TOLLGATE_MOCK_LISTEN", default_value = "127.0.0.1:8089")]
    listen: String,
    /// Accept only this key (repeatable; default: any non-empty key).
    #[arg(
        long = "api-key",
        env = "TOLLGATE_MOCK_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_keys: Vec<String>,
    /// Requests per minute allowed per API key (default: unlimited).
    #[arg(long, env = "TOLLGATE_MOCK_RPM")]
    rpm: Option<u64>,
    /// Tokens per minute allowed per API key (default: unlimited).
    #[arg(long, env = "TOLLGATE_MOCK_TPM")]
    tpm: Option<u64>,
    /// Every inference request answers 429 insufficient_quota.
    #[arg(long)]
    insufficient_quota: bool,
    /// JSON file {"data":[{"id","created","owned_by"}]} replacing the built-in model list.
    #[arg(long, value_name = "FILE")]
    models: Option<PathBuf>,
}

impl MockArgs {
    fn config(&self) -> anyhow::Result<SimConfig> {
        let models = match &self.models {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the model list {}", path.display()))?;
                parse_models(&text)
                    .with_context(|| format!("parsing the model list {}", path.display()))?
            }
            None => builtin_models(),
        };
        let keys: Vec<String> = self
            .api_keys
            .iter()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect();
        Ok(SimConfig {
            api_keys: (!keys.is_empty()).then_some(keys),
            rpm: self.rpm,
            tpm: self.tpm,
            insufficient_quota: self.insufficient_quota,
            models,
        })
    }
}

pub async fn run(args: MockArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }
    tracing::info!(%addr, models = config.models.len(), "simulator ready");
    tollgate_simulator::serve(listener, config, crate::shutdown_signal()).await?;
    tracing::info!("simulator stopped");
    Ok(())
}
