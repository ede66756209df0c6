//! The upstream: one OpenAI-compatible base URL, reached through the `tollgate-client`
//! crate (pooling, timeouts, retries with backoff that honour `Retry-After`, all before
//! the first byte reaches the caller), with one client per provider credential.
//!
//! The global `upstream.api_key` has its client from start-up. Projects and their
//! environments may name other credentials (secret references, see
//! `docs/gateway.md`); those are resolved off the request path, never while the key
//! cache swaps (see `keys`): a new reference on a blocking thread of its own
//! ([`Upstream::claim_unresolved`], [`Upstream::resolve`]), the known ones again after
//! each load ([`Upstream::refresh`]), so neither a slow `exec:` command nor a file that
//! does not answer delays a revocation. They are kept in a map reference → client that
//! requests only read. A reference that cannot be read is logged by reference, never
//! by value, and calls that need it are refused with
//! [`GatewayError::CredentialUnavailable`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tollgate_client::{Client, RetryPolicy};

use crate::config::UpstreamConfig;
use crate::error::GatewayError;
use crate::keys::Principal;
use crate::secret::{Secret, SecretRef};

/// A configured upstream; clones share the credential map.
#[derive(Debug, Clone)]
pub struct Upstream {
    cfg: UpstreamConfig,
    client: Client,
    /// Reference → its client, or `None` when the reference could not be read.
    by_ref: Arc<RwLock<HashMap<String, Option<Client>>>>,
    /// References being read now (claimed by a load, not yet in `by_ref`).
    resolving: Arc<parking_lot::Mutex<BTreeSet<String>>>,
}

impl Upstream {
    /// Builds the upstream client. The provider key lives only inside the client,
    /// which redacts it from `Debug`.
    pub fn new(cfg: &UpstreamConfig, key: Secret) -> Result<Self, crate::StartError> {
        let client = build(cfg, &key).map_err(crate::StartError::Upstream)?;
        Ok(Self {
            cfg: cfg.clone(),
            client,
            by_ref: Arc::default(),
            resolving: Arc::default(),
        })
    }

    /// The client for the global credential.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The client a caller's calls use: its project/environment credential if one was
    /// chosen, else the global one. Reads the map only.
    pub fn client_for(&self, principal: &Principal) -> Result<Client, GatewayError> {
        let Some(reference) = principal.upstream_ref.as_deref() else {
            return Ok(self.client.clone());
        };
        let (project, env) = (principal.project.clone(), principal.env.clone());
        match self.by_ref.read().get(reference) {
            Some(Some(client)) => Ok(client.clone()),
            Some(None) => Err(GatewayError::CredentialUnavailable { project, env }),
            // Not read yet: a new credential being read now (retry shortly).
            None if self.resolving.lock().contains(reference) => {
                Err(GatewayError::CredentialPending { project, env })
            }
            None => Err(GatewayError::CredentialUnavailable { project, env }),
        }
    }

    /// The references of `used` neither read nor being read; claims them, for the
    /// caller to read with [`Self::resolve`] (every claim must be resolved).
    pub fn claim_unresolved(&self, used: &BTreeSet<String>) -> BTreeSet<String> {
        let map = self.by_ref.read();
        let mut resolving = self.resolving.lock();
        let new: BTreeSet<String> = used
            .iter()
            .filter(|r| !map.contains_key(*r) && !resolving.contains(*r))
            .cloned()
            .collect();
        resolving.extend(new.iter().cloned());
        new
    }

    /// Whether `reference` has been read, well or not: a call that uses it gets its
    /// client or a 503, never a wait.
    pub fn is_resolved(&self, reference: &str) -> bool {
        self.by_ref.read().contains_key(reference)
    }

    /// Reads each of `refs` (claimed with [`Self::claim_unresolved`]) and adds them.
    /// Blocking: files and commands.
    pub fn resolve(&self, refs: &BTreeSet<String>) {
        for reference in refs {
            let client = self.resolve_one(reference);
            self.by_ref.write().insert(reference.clone(), client);
            self.resolving.lock().remove(reference);
        }
    }

    /// Gives up claims whose reading failed to finish (its thread panicked), so a
    /// later load claims them again.
    pub fn unclaim(&self, refs: &BTreeSet<String>) {
        let mut resolving = self.resolving.lock();
        for r in refs {
            resolving.remove(r);
        }
    }

    /// Forgets the references read but no longer in `used`; answers those kept.
    pub fn retain(&self, used: &BTreeSet<String>) -> BTreeSet<String> {
        let mut map = self.by_ref.write();
        map.retain(|r, _| used.contains(r));
        map.keys().cloned().collect()
    }

    /// Re-reads each reference given (so a secret changed behind its reference is
    /// picked up) and updates those still in use; never adds or removes one, so it
    /// may run after a later load without undoing it. Blocking.
    pub fn refresh(&self, refs: &BTreeSet<String>) {
        let resolved: Vec<(String, Option<Client>)> = refs
            .iter()
            .map(|r| (r.clone(), self.resolve_one(r)))
            .collect();
        let mut map = self.by_ref.write();
        for (reference, client) in resolved {
            if let Some(slot) = map.get_mut(&reference) {
                *slot = client;
            }
        }
    }

    fn resolve_one(&self, reference: &str) -> Option<Client> {
        let secret = SecretRef::parse(reference).and_then(|r| r.resolve());
        let result = secret
            .map_err(|e| e.to_string())
            .and_then(|s| build(&self.cfg, &s));
        match result {
            Ok(client) => Some(client),
            Err(error) => {
                // The error names the reference (an env var name, a path, a command's
                // program), never the value nor a command's arguments.
                tracing::error!(
                    reference = %crate::secret::describe(reference),
                    error = %error,
                    "a provider credential reference cannot be read; calls that use it get 503"
                );
                None
            }
        }
    }

    /// The base URL, e.g. `https://api.openai.com/v1`.
    pub fn base_url(&self) -> &str {
        self.client.base_url()
    }
}

fn build(cfg: &UpstreamConfig, key: &Secret) -> Result<Client, String> {
    let retry = RetryPolicy::default()
        .with_max_retries(cfg.max_retries)
        .with_base_delay(cfg.retry_base)
        .with_max_delay(Duration::from_secs(8));
    let mut builder = Client::builder();
    if let Some(pem) = &cfg.ca_pem {
        builder = builder.add_root_certificates_pem(pem.clone());
    }
    builder
        .base_url(cfg.url.clone())
        .api_key(key.expose())
        .connect_timeout(cfg.connect_timeout)
        .timeout(cfg.timeout)
        .retry_policy(retry)
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}
