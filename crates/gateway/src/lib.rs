//! The tollgate gateway: an OpenAI-compatible server that authenticates callers with
//! tollgate keys, forwards to the upstream with the provider key, streams, and records
//! the usage of every call.
//!
//! One module per lifecycle stage (`accept`, `authenticate`, `preflight`, `admit`,
//! `cache`, `moderate`, `dispatch`, `account`, `record`), called in order by
//! [`pipeline`]; [`server`] runs it; [`config`], [`catalog`], [`keys`], [`limits`], [`lanes`], [`throttle`], [`redis_link`], [`secret`] and [`anomaly`]
//! support it.

pub mod accept;
pub mod account;
pub mod admin;
pub mod admin_budgets;
pub mod admin_models;
pub mod admin_projects;
pub mod admit;
pub mod admit_redis;
pub mod anomaly;
pub mod anomaly_store;
pub mod answers;
pub mod authenticate;
pub mod breaker;
pub mod budgets;
pub mod budgets_redis;
pub mod cache;
pub mod caps;
pub mod carried;
pub mod catalog;
pub mod config;
pub mod context;
pub mod dispatch;
pub mod error;
pub mod fallback;
pub mod fallback_config;
pub mod keys;
pub mod lanes;
pub mod limits;
pub mod metrics;
pub mod models;
pub mod moderate;
pub mod offline;
pub mod offload;
pub mod pipeline;
pub mod preflight;
pub mod record;
pub mod redis_link;
pub mod schema;
pub mod secret;
pub mod server;
pub mod settle_redis;
pub mod snapshot;
pub mod throttle;
pub mod upstream;
pub mod webhook;

pub use config::{Config, RawConfig};
pub use error::GatewayError;
pub use server::{serve, serve_announced, Gateway, ServeReport};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("store: {0}")]
    Store(#[from] tollgate_store::StoreError),
    #[error("upstream client: {0}")]
    Upstream(String),
    #[error("cannot start the I/O threads: {0}")]
    Threads(std::io::Error),
    #[error("redis: {0}")]
    Redis(String),
}
