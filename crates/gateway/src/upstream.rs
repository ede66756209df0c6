//! The upstream: one OpenAI-compatible base URL and its provider key, reached through
//! the `tollgate-client` crate (pooling, timeouts, retries with backoff that honour
//! `Retry-After`, all before the first byte reaches the caller).

use std::time::Duration;

use tollgate_client::{Client, RetryPolicy};

use crate::config::UpstreamConfig;
use crate::secret::Secret;

/// A configured upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: Client,
}

impl Upstream {
    /// Builds the upstream client. The provider key lives only inside the client,
    /// which redacts it from `Debug`.
    pub fn new(cfg: &UpstreamConfig, key: Secret) -> Result<Self, crate::StartError> {
        let retry = RetryPolicy::default()
            .with_max_retries(cfg.max_retries)
            .with_base_delay(cfg.retry_base)
            .with_max_delay(Duration::from_secs(8));
        let client = Client::builder()
            .base_url(cfg.url.clone())
            .api_key(key.expose())
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.timeout)
            .retry_policy(retry)
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| crate::StartError::Upstream(e.to_string()))?;
        Ok(Self { client })
    }

    /// The client, for dispatch.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The base URL, e.g. `https://api.openai.com/v1`.
    pub fn base_url(&self) -> &str {
        self.client.base_url()
    }
}
