//! Identifiers in OpenAI's shapes (`req_` + 32 hex, `resp_` + 48 hex, `msg_…`,
//! `chatcmpl-…`, `call_…`). Unique per process, cheap: a counter mixed with a
//! per-process seed through SplitMix64, no locks and no RNG state.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        splitmix64(t ^ u64::from(std::process::id()).rotate_left(32))
    })
}

/// SplitMix64: a bijective mixer, so distinct counters give distinct outputs.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `prefix` followed by `hex_len` lowercase hex digits, unique within the process.
pub fn new_id(prefix: &str, hex_len: usize) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut out = String::with_capacity(prefix.len() + hex_len);
    out.push_str(prefix);
    let mut block = 0u64;
    while out.len() < prefix.len() + hex_len {
        let word = splitmix64(seed() ^ splitmix64(n.wrapping_mul(0x1000).wrapping_add(block)));
        let _ = write!(out, "{word:016x}");
        block += 1;
    }
    out.truncate(prefix.len() + hex_len);
    out
}

/// `req_` + 32 hex, as in OpenAI's `x-request-id`.
pub fn request_id() -> String {
    new_id("req_", 32)
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_shape_and_are_unique() {
        let a = request_id();
        let b = request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert!(a.starts_with("req_"));
        assert!(a[4..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(new_id("resp_", 48).len(), 53);
    }
}
