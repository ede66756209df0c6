//! The six `x-ratelimit-*` headers and `retry-after` / `retry-after-ms`, with reset
//! values in Go's `time.Duration` string format (`1s`, `120ms`, `8.64s`, `6m0s`).

use std::fmt::Write as _;
use std::time::Duration;

pub const LIMIT_REQUESTS: &str = "x-ratelimit-limit-requests";
pub const LIMIT_TOKENS: &str = "x-ratelimit-limit-tokens";
pub const REMAINING_REQUESTS: &str = "x-ratelimit-remaining-requests";
pub const REMAINING_TOKENS: &str = "x-ratelimit-remaining-tokens";
pub const RESET_REQUESTS: &str = "x-ratelimit-reset-requests";
pub const RESET_TOKENS: &str = "x-ratelimit-reset-tokens";
pub const RETRY_AFTER: &str = "retry-after";
pub const RETRY_AFTER_MS: &str = "retry-after-ms";
pub const SHOULD_RETRY: &str = "x-should-retry";

/// The rate-limit state a server reports. Every field is optional: servers send
/// some, all or none of the headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitInfo {
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    /// Time until the request bucket is full again (not the time to wait).
    pub reset_requests: Option<Duration>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub reset_tokens: Option<Duration>,
}

impl RateLimitInfo {
    /// Reads the headers through a lookup function (so any header map type works).
    pub fn from_headers<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Self {
        let mut info = Self::default();
        for name in [
            LIMIT_REQUESTS,
            REMAINING_REQUESTS,
            RESET_REQUESTS,
            LIMIT_TOKENS,
            REMAINING_TOKENS,
            RESET_TOKENS,
        ] {
            if let Some(value) = get(name) {
                info.read_header(name, value);
            }
        }
        info
    }

    /// Takes in one header, for a caller that walks a header map once instead of
    /// looking up each name: sets the field `name` (lower case) stands for, unless an
    /// earlier value already set it. Returns false for any other name.
    pub fn read_header(&mut self, name: &str, value: &str) -> bool {
        let num = |slot: &mut Option<u64>| {
            if slot.is_none() {
                *slot = value.trim().parse::<u64>().ok();
            }
        };
        let dur = |slot: &mut Option<Duration>| {
            if slot.is_none() {
                *slot = parse_go_duration(value);
            }
        };
        match name {
            LIMIT_REQUESTS => num(&mut self.limit_requests),
            REMAINING_REQUESTS => num(&mut self.remaining_requests),
            RESET_REQUESTS => dur(&mut self.reset_requests),
            LIMIT_TOKENS => num(&mut self.limit_tokens),
            REMAINING_TOKENS => num(&mut self.remaining_tokens),
            RESET_TOKENS => dur(&mut self.reset_tokens),
            _ => return false,
        }
        true
    }

    /// Whether the header `name` (lower case) has a value here.
    pub fn has_header(&self, name: &str) -> bool {
        match name {
            LIMIT_REQUESTS => self.limit_requests.is_some(),
            REMAINING_REQUESTS => self.remaining_requests.is_some(),
            RESET_REQUESTS => self.reset_requests.is_some(),
            LIMIT_TOKENS => self.limit_tokens.is_some(),
            REMAINING_TOKENS => self.remaining_tokens.is_some(),
            RESET_TOKENS => self.reset_tokens.is_some(),
            _ => false,
        }
    }

    /// True when no header was present.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The headers to send, for the fields that are set.
    pub fn to_headers(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(6);
        let mut num = |name, v: Option<u64>| {
            if let Some(v) = v {
                out.push((name, v.to_string()));
            }
        };
        num(LIMIT_REQUESTS, self.limit_requests);
        num(REMAINING_REQUESTS, self.remaining_requests);
        num(LIMIT_TOKENS, self.limit_tokens);
        num(REMAINING_TOKENS, self.remaining_tokens);
        if let Some(d) = self.reset_requests {
            out.push((RESET_REQUESTS, format_go_duration(d)));
        }
        if let Some(d) = self.reset_tokens {
            out.push((RESET_TOKENS, format_go_duration(d)));
        }
        out
    }
}

/// A server-directed retry delay: `retry-after-ms` (float milliseconds) first, then
/// `retry-after` (float seconds). HTTP-date values are not interpreted. Negative,
/// non-finite and too large (beyond a `Duration`) values are ignored.
pub fn retry_after<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<Duration> {
    let parse = |v: &str, scale: f64| {
        let f = v.trim().parse::<f64>().ok()?;
        Duration::try_from_secs_f64(f * scale).ok()
    };
    get(RETRY_AFTER_MS)
        .and_then(|v| parse(v, 0.001))
        .or_else(|| get(RETRY_AFTER).and_then(|v| parse(v, 1.0)))
}

/// Formats a duration as Go's `time.Duration.String()` does: `0s`, `250µs`, `120ms`,
/// `1.5s`, `6m0s`, `1h2m3s`.
pub fn format_go_duration(d: Duration) -> String {
    let mut out = String::new();
    write_go_duration(&mut out, d);
    out
}

/// [`format_go_duration`] appended to `out` (no allocation beyond `out`'s growth).
pub fn write_go_duration(out: &mut String, d: Duration) {
    let nanos = d.as_nanos();
    if nanos == 0 {
        out.push_str("0s");
    } else if nanos < 1_000 {
        let _ = write!(out, "{nanos}ns");
    } else if nanos < 1_000_000 {
        push_fraction(out, nanos, 1_000);
        out.push_str("µs");
    } else if nanos < 1_000_000_000 {
        push_fraction(out, nanos, 1_000_000);
        out.push_str("ms");
    } else {
        let secs = d.as_secs();
        let (h, m) = (secs / 3600, (secs % 3600) / 60);
        if h > 0 {
            let _ = write!(out, "{h}h");
        }
        if h > 0 || m > 0 {
            let _ = write!(out, "{m}m");
        }
        let sub = u128::from(secs % 60) * 1_000_000_000 + u128::from(d.subsec_nanos());
        push_fraction(out, sub, 1_000_000_000);
        out.push('s');
    }
}

/// Writes `value / unit` with the fraction's trailing zeros trimmed.
fn push_fraction(out: &mut String, value: u128, unit: u128) {
    let whole = value / unit;
    // `unit` is at most 10^9, so the fraction fits a u64 (cheaper to divide).
    let mut frac = u64::try_from(value % unit).unwrap_or(0);
    out.push_str(itoa::Buffer::new().format(whole));
    if frac > 0 {
        let mut width = unit.ilog10() as usize;
        while frac % 10 == 0 {
            frac /= 10;
            width -= 1;
        }
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(frac);
        out.push('.');
        for _ in digits.len()..width {
            out.push('0');
        }
        out.push_str(digits);
    }
}

/// Parses a Go duration string (`1h2m3.5s`, `120ms`, `6m0s`, `0s`, `1.5µs`, `3us`).
/// Returns `None` on anything else, including negative values.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    // Too large for a `Duration` (Go's own parser refuses such values too): none.
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_headers_one_by_one_equals_looking_them_up() {
        let headers = [
            ("content-type", "application/json"),
            (LIMIT_REQUESTS, "500"),
            (REMAINING_REQUESTS, " 499 "),
            (RESET_REQUESTS, "120ms"),
            (LIMIT_TOKENS, "30000"),
            (REMAINING_TOKENS, "29000"),
            (RESET_TOKENS, "6m0s"),
            // A second value: the first one counts, as with a lookup.
            (REMAINING_REQUESTS, "1"),
        ];
        let mut read = RateLimitInfo::default();
        let taken: Vec<bool> = headers
            .iter()
            .map(|(n, v)| read.read_header(n, v))
            .collect();
        assert_eq!(taken, [false, true, true, true, true, true, true, true]);
        let looked_up =
            RateLimitInfo::from_headers(|n| headers.iter().find(|(k, _)| *k == n).map(|(_, v)| *v));
        assert_eq!(read, looked_up);
        assert!(read.has_header(RESET_TOKENS) && !read.has_header("content-type"));
        let requests_only = RateLimitInfo {
            remaining_requests: Some(1),
            ..RateLimitInfo::default()
        };
        assert!(requests_only.has_header(REMAINING_REQUESTS));
        assert!(!requests_only.has_header(REMAINING_TOKENS));
        assert_eq!(read.remaining_requests, Some(499));
        assert_eq!(read.reset_tokens, Some(Duration::from_secs(360)));
    }

    #[test]
    fn formats_like_go() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(500), "500ns"),
            (Duration::from_micros(250), "250µs"),
            (Duration::from_millis(2), "2ms"),
            (Duration::from_millis(120), "120ms"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_millis(8640), "8.64s"),
            (Duration::from_millis(1005), "1.005s"),
            (Duration::from_micros(2_000_050), "2.00005s"),
            (Duration::from_nanos(1_050), "1.05µs"),
            (Duration::from_secs(360), "6m0s"),
            (Duration::from_secs(3723), "1h2m3s"),
            (Duration::from_secs(3600), "1h0m0s"),
        ];
        for (d, s) in cases {
            assert_eq!(format_go_duration(d), s);
            assert_eq!(parse_go_duration(s), Some(d), "{s}");
        }
    }

    #[test]
    fn parses_composites_and_rejects_garbage() {
        assert_eq!(
            parse_go_duration("1m30.5s"),
            Some(Duration::from_millis(90_500))
        );
        assert_eq!(parse_go_duration("3us"), Some(Duration::from_micros(3)));
        for bad in ["", "s", "1x", "-1s", "1.2.3s", "abc"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
        // Beyond a `Duration` (Go refuses these too): none, not a panic.
        for huge in ["99999999999999999999s", "5124095576030431h1s", "1e400h"] {
            assert_eq!(parse_go_duration(huge), None, "{huge}");
        }
        assert_eq!(
            parse_go_duration("2562047h"),
            Some(Duration::from_secs(2_562_047 * 3600))
        );
    }

    #[test]
    fn reads_headers_and_retry_after_prefers_ms() {
        let h = [
            (LIMIT_REQUESTS, "5000"),
            (REMAINING_REQUESTS, "4999"),
            (RESET_REQUESTS, "12ms"),
            (LIMIT_TOKENS, "2000000"),
            (REMAINING_TOKENS, "1999000"),
            (RESET_TOKENS, "6m0s"),
            (RETRY_AFTER, "2"),
            (RETRY_AFTER_MS, "150.5"),
        ];
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
        let info = RateLimitInfo::from_headers(get);
        assert_eq!(info.remaining_requests, Some(4999));
        assert_eq!(info.reset_tokens, Some(Duration::from_secs(360)));
        assert_eq!(retry_after(get), Some(Duration::from_secs_f64(0.1505)));
        let only_secs = |n: &str| (n == RETRY_AFTER).then_some("3");
        assert_eq!(retry_after(only_secs), Some(Duration::from_secs(3)));
        let negative = |n: &str| (n == RETRY_AFTER).then_some("-1");
        assert_eq!(retry_after(negative), None);
        // Values beyond a `Duration` are ignored, not a panic.
        for (name, huge) in [(RETRY_AFTER, "1e20"), (RETRY_AFTER_MS, "1e300")] {
            let get = |n: &str| (n == name).then_some(huge);
            assert_eq!(retry_after(get), None, "{name}: {huge}");
        }
        let sent = info.to_headers();
        let back = RateLimitInfo::from_headers(|n| {
            sent.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str())
        });
        assert_eq!(back, info);
    }
}
