//! Where a command finds tollgate's state: `--config`, `--data-dir`, `--database-url`
//! (with their `TOLLGATE_*` variables), shared by `serve`, `keys` and `usage`. The CLI
//! works directly on the store, so it can run beside a live server.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use tollgate_gateway::config::RawConfig;
use tollgate_store::{Actor, Store};

/// Options that locate the state.
#[derive(Debug, Args, Clone)]
pub struct StateArgs {
    /// tollgate.toml to read (optional; every setting has a default).
    #[arg(long, env = "TOLLGATE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Directory of the embedded SQLite store [default: ./tollgate-data].
    #[arg(long, env = "TOLLGATE_DATA_DIR", global = true)]
    pub data_dir: Option<String>,
    /// Database URL instead of the data directory: postgres://… or sqlite://PATH.
    #[arg(
        long,
        env = "TOLLGATE_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,
}

/// Whether `--data-dir` and `--database-url` were given as flags on the command line
/// (rather than by their variables): recorded once by `main` from clap's matches.
static FROM_FLAGS: std::sync::OnceLock<(bool, bool)> = std::sync::OnceLock::new();

/// Records which storage options came as flags (see [`StateArgs::apply`]).
pub fn note_flag_sources(matches: &clap::ArgMatches) {
    // Global options are found in the innermost subcommand's matches.
    let mut m = matches;
    while let Some((_, sub)) = m.subcommand() {
        m = sub;
    }
    let flag = |id: &str| {
        m.try_get_raw(id).ok().flatten().is_some()
            && m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
    };
    let _ = FROM_FLAGS.set((flag("data_dir"), flag("database_url")));
}

/// A flag's value, or its variable's: `None` when not given or given empty (an empty
/// `TOLLGATE_*` variable is unset, not a value that overrides the config file).
pub fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.trim().is_empty())
}

impl StateArgs {
    /// Lays the flags over a raw config. The data directory and the database URL are
    /// one choice: given by a flag or variable, either one replaces whichever the file
    /// made. Given both, a flag beats a variable (`--data-dir` in a shell that exports
    /// `TOLLGATE_DATABASE_URL` works on that directory); both flags or both variables:
    /// the database URL wins, as it does in the file.
    pub fn apply(&self, raw: &mut RawConfig) -> anyhow::Result<()> {
        let (dir_flag, url_flag) = FROM_FLAGS.get().copied().unwrap_or_default();
        let (dir, url) = (given(&self.data_dir), given(&self.database_url));
        let (dir, url) = match (dir, url) {
            (Some(dir), Some(_)) if dir_flag && !url_flag => (Some(dir), None),
            (Some(_), Some(url)) if url_flag && !dir_flag => (None, Some(url)),
            other => other,
        };
        match (dir, url) {
            (Some(dir), Some(url)) => {
                raw.data_dir = Some(dir.to_owned());
                raw.database_url = Some(url.to_owned());
            }
            (Some(dir), None) => {
                raw.data_dir = Some(dir.to_owned());
                raw.database_url = None;
            }
            (None, Some(url)) => {
                raw.database_url = Some(url.to_owned());
                raw.data_dir = None;
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// The config file's settings (`--config` / `TOLLGATE_CONFIG`; an empty variable
    /// is unset), or the defaults without one. The flags are not laid over them.
    pub fn file_config(&self) -> anyhow::Result<RawConfig> {
        match self.config.as_deref().filter(|p| !p.as_os_str().is_empty()) {
            Some(path) => read_config(path),
            None => Ok(RawConfig::default()),
        }
    }

    /// Opens the store these options point at (config file included), creating an
    /// embedded one if there is none yet.
    pub async fn open(&self) -> anyhow::Result<Store> {
        self.open_with(true).await
    }

    /// Opens the store these options point at for reading: a data directory without
    /// one is an error (a mistyped `--data-dir` must not answer "no usage" from a new,
    /// empty store it just created).
    pub async fn open_existing(&self) -> anyhow::Result<Store> {
        self.open_with(false).await
    }

    async fn open_with(&self, create: bool) -> anyhow::Result<Store> {
        let mut raw = self.file_config()?;
        self.apply(&mut raw)?;
        let dir = data_dir(&raw);
        if !create && !has_store(&raw) {
            anyhow::bail!(
                "no tollgate store in {}: check --data-dir (or TOLLGATE_DATA_DIR, or \
                 --database-url); a store is created by `tollgate serve` or \
                 `tollgate keys create`",
                dir.display()
            );
        }
        open_store(&dir, raw.database_url.as_deref()).await
    }
}

/// The data directory a config (flags applied) names.
fn data_dir(raw: &RawConfig) -> PathBuf {
    PathBuf::from(raw.data_dir.as_deref().unwrap_or("./tollgate-data"))
}

/// Whether a config (flags applied) points at a store that exists: a database URL, or
/// a data directory holding the embedded one.
pub fn has_store(raw: &RawConfig) -> bool {
    raw.database_url.is_some() || data_dir(raw).join(tollgate_store::SQLITE_FILE).exists()
}

/// Reads and parses a config file (validation happens later, once flags are applied).
pub fn read_config(path: &Path) -> anyhow::Result<RawConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    RawConfig::from_toml_str(&text)
        .map_err(|e| anyhow::anyhow!("invalid configuration in {}:\n{e}", path.display()))
}

/// Opens the store: the database URL if given, else SQLite in the data directory.
pub async fn open_store(data_dir: &Path, database_url: Option<&str>) -> anyhow::Result<Store> {
    let store = match database_url {
        Some(url) => Store::open_url(url).await,
        None => Store::open_data_dir(data_dir).await,
    };
    store.with_context(|| match database_url {
        Some(_) => "cannot open the database".to_owned(),
        None => format!("cannot open the store in {}", data_dir.display()),
    })
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Who the CLI acts as in the audit log: `cli:$USER` (`cli:root` when unset).
pub fn actor() -> Actor {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "root".into());
    Actor::new(format!("cli:{user}"), "cli")
}

/// Formats milliseconds as the largest whole unit: `90d`, `36h`, `15m`, `30s`.
pub fn format_span_ms(ms: i64) -> String {
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)] {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{}s", ms / 1000)
}

/// Prints rows as an aligned text table.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Formats unix milliseconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A duration flag that must be more than zero (a window of no time reports nothing).
pub fn positive_span(s: &str) -> anyhow::Result<i64> {
    let ms = parse_span_ms(s)?;
    anyhow::ensure!(ms > 0, "{s:?} must be longer than zero");
    Ok(ms)
}

/// Parses `30s`, `15m`, `24h`, `7d` into milliseconds.
pub fn parse_span_ms(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a duration like 30m, 24h or 7d"))?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => anyhow::bail!("{s:?} is not a duration like 30m, 24h or 7d"),
    };
    Ok(n.saturating_mul(unit_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates_and_parses_spans() {
        assert_eq!(format_ms(0), "1970-01-01 00:00:00");
        assert_eq!(format_ms(1_709_251_200_000), "2024-03-01 00:00:00");
        assert_eq!(
            format_ms(951_782_400_000 + 3_723_000),
            "2000-02-29 01:02:03"
        );
        assert_eq!(parse_span_ms("24h").unwrap(), 86_400_000);
        assert_eq!(parse_span_ms("7d").unwrap(), 604_800_000);
        assert!(parse_span_ms("7w").is_err());
        assert!(parse_span_ms("h").is_err());
        assert!(parse_span_ms("").is_err());
        assert!(parse_span_ms("-3d").is_err());
        assert!(positive_span("0s").is_err());
        assert_eq!(positive_span("1s").unwrap(), 1_000);
        assert_eq!(format_span_ms(90 * 86_400_000), "90d");
        assert_eq!(format_span_ms(36 * 3_600_000), "36h");
    }
}
