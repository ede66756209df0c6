//! A faithful OpenAI-compatible server for tests, demos and load: deterministic
//! content counted with real tokenizers, OpenAI's exact error shapes and headers,
//! per-key rate limits, and fault injection. See `docs/simulator.md`.

pub mod engine;
pub mod error;
pub mod ids;

pub use error::ApiError;
