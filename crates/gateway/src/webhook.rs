//! Webhooks: the anomaly events and the budget notices POSTed to a receiver's URL
//! (`anomaly.webhook_url`, `budgets.webhook_url`), from background tasks only.
//!
//! A POST goes through the client with its own retries (5 s per attempt, two
//! retries). An event the receiver does not take (an error status, or no answer) is
//! offered again from a task of its own, after 2 s and then twice as long each time up
//! to 5 minutes, for an hour ([`RETRY_FOR`]), while later events go out meanwhile. An
//! event still waiting when the process stops is lost; the log has it.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};

/// How long an event the receiver did not take is offered again.
const RETRY_FOR: Duration = Duration::from_secs(60 * 60);

/// The first wait before an event is offered again; it doubles up to [`RETRY_MAX_WAIT`].
const RETRY_FIRST: Duration = Duration::from_secs(2);

/// The longest wait between two offers of one event.
const RETRY_MAX_WAIT: Duration = Duration::from_secs(300);

/// A receiver: a client for the webhook's origin, and the path to POST to.
#[derive(Clone)]
pub(crate) struct Webhook {
    client: tollgate_client::Client,
    path: String,
}

impl Webhook {
    /// The receiver at `url` (http or https).
    pub(crate) fn new(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| "must start with http:// or https://".to_owned())?;
        let split = url.len() - rest.len() + rest.find('/').unwrap_or(rest.len());
        let (origin, path) = url.split_at(split);
        let client = tollgate_client::Client::builder()
            .base_url(origin)
            .timeout(Duration::from_secs(5))
            .max_retries(2)
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            path: path.to_owned(),
        })
    }

    /// POSTs one JSON event (`what` names it in the log); if the receiver does not
    /// take it, a task offers it again (see the module docs). Returns once the first
    /// POST is done.
    pub(crate) async fn send(&self, what: &'static str, body: Bytes) {
        if !self.post(what, body.clone()).await {
            tokio::spawn(self.clone().offer_again(what, body));
        }
    }

    /// One POST with the client's retries; true if the receiver took it.
    async fn post(&self, what: &'static str, body: Bytes) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match self
            .client
            .raw(Method::POST, &self.path, headers, body)
            .await
        {
            Ok(res) if res.status().is_success() => true,
            Ok(res) => {
                tracing::warn!(
                    event = what,
                    status = res.status().as_u16(),
                    "webhook refused the event; it will be offered again"
                );
                false
            }
            Err(e) => {
                tracing::warn!(event = what, error = %e, "webhook failed; the event will be offered again");
                false
            }
        }
    }

    async fn offer_again(self, what: &'static str, body: Bytes) {
        let until = tokio::time::Instant::now() + RETRY_FOR;
        let mut wait = RETRY_FIRST;
        while tokio::time::Instant::now() + wait < until {
            tokio::time::sleep(wait).await;
            if self.post(what, body.clone()).await {
                tracing::info!(event = what, "webhook took an event it had missed");
                return;
            }
            wait = (wait * 2).min(RETRY_MAX_WAIT);
        }
        tracing::error!(
            event = what,
            "webhook did not take an event within an hour; giving up"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_splits_into_origin_and_path() {
        let w = Webhook::new("http://127.0.0.1:9/hooks/tollgate").unwrap();
        assert_eq!(w.client.base_url(), "http://127.0.0.1:9");
        assert_eq!(w.path, "/hooks/tollgate");
        assert_eq!(Webhook::new("https://example.com").unwrap().path, "");
        assert!(Webhook::new("ftp://x").is_err());
    }
}
