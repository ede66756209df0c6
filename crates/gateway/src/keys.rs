//! Gateway keys: minting secrets, and the in-memory cache that authentication reads.
//!
//! A secret is `tg-<env>-` followed by 32 base62 characters (≈190 bits from the OS
//! RNG). The store keeps only its SHA-256 digest and a display prefix. The server
//! looks keys up by digest in a map held in memory; a background task polls the
//! store's `keys_version` counter (every `keys.refresh_interval_ms`, 250 ms by
//! default) and reloads the map when it moves, so a key revoked by the CLI or another
//! replica stops working within that interval.
//!
//! The cache holds every key not revoked, with its expiry, suspension and rotation
//! times, so authentication can tell an expired, suspended or rotated key from an
//! unknown one and say what to do, against the clock, without the store. Beside the
//! poller, a second loop logs a warning once a day for each key due for rotation
//! (expiring within 14 days); it only reads the cache.
//!
//! Each load also picks every key's provider credential (its project/environment's
//! reference, else the project's, else none for the global one). The map goes live
//! at once; a reference new to the server is read afterwards by the [`Upstream`], on a
//! blocking thread, and a key keeps the credential it had until then (a key new to
//! the server gets a retryable 503). Requests never read a secret. Credential changes
//! bump `keys_version` too.
//!
//! Each load also refreshes the projects' own anomaly auto-suspend choices in the
//! shared [`ProjectPolicy`] the anomaly detector reads; changing one bumps
//! `keys_version`, so it takes effect within one poll interval, without a restart.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tollgate_store::{
    CredentialRefs, KeyRecord, Lane, NewKey, Role, Store, StoreError, DEFAULT_MAX_KEY_AGE_MS,
    ROTATION_WARNING_MS,
};

use crate::anomaly::ProjectPolicy;
use crate::snapshot::{own, Snapshot, ThreadCopy};
use crate::upstream::Upstream;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SECRET_CHARS: usize = 32;
/// Characters of the random part kept in the display prefix.
const PREFIX_CHARS: usize = 6;

/// Who is calling: the resolved key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub project: String,
    pub env: String,
    pub role: Role,
    /// The provider credential reference its calls use (`None`: the global one).
    pub upstream_ref: Option<String>,
    /// The lane of its requests that send no `x-tollgate-priority` (see `lanes`).
    pub lane: Lane,
}

/// A cached key: who it speaks for, and the times that decide whether it still works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedKey {
    pub principal: Arc<Principal>,
    /// The non-secret display prefix (`tg-dev-AbC1`).
    pub prefix: String,
    pub expires_at_ms: i64,
    pub suspended: bool,
    /// The successor's id, once rotated.
    pub rotated_to: Option<String>,
    /// End of a rotated key's grace period.
    pub retire_at_ms: Option<i64>,
    /// The credential reference the store chooses for the key. Its principal's
    /// `upstream_ref` is this one once it has been read; until then a key that was
    /// already cached keeps the credential it had.
    pub wanted_ref: Option<String>,
}

/// How often the rotation reminder looks at the cache.
const ROTATION_CHECK_EVERY: Duration = Duration::from_secs(3600);
/// A key due for rotation is named in the log at most this often.
const ROTATION_WARNING_REPEAT_MS: i64 = 86_400_000;

/// A freshly minted key: the secret (shown once) and what the store keeps.
#[derive(Debug)]
pub struct MintedKey {
    pub secret: String,
    pub record: NewKey,
}

/// Mints a key for `project`/`env` with `role`, expiring after the default maximum
/// age (set `record.expires_at_ms` for another lifetime).
pub fn mint(project: &str, env: &str, role: Role, name: Option<String>, now_ms: i64) -> MintedKey {
    let mut rng = rand::rng();
    let random: String = (0..SECRET_CHARS)
        .map(|_| char::from(BASE62[rng.random_range(0..BASE62.len())]))
        .collect();
    let secret = format!("tg-{env}-{random}");
    let prefix = format!("tg-{env}-{}", &random[..PREFIX_CHARS]);
    let id_suffix: String = (0..16)
        .map(|_| char::from(BASE62[rng.random_range(0..BASE62.len())]))
        .collect();
    MintedKey {
        record: NewKey {
            id: format!("key_{id_suffix}"),
            project: project.to_owned(),
            env: env.to_owned(),
            role,
            name,
            prefix,
            digest_hex: digest_hex(&secret),
            created_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(DEFAULT_MAX_KEY_AGE_MS),
            lane: Lane::Interactive,
        },
        secret,
    }
}

/// A rotated key's successor: the same project, environment, role and name, and the
/// key's own lifetime (a short-lived key stays short-lived), at most the project's
/// maximum key age (`max_age_ms`).
pub fn successor(old: &KeyRecord, max_age_ms: i64, now_ms: i64) -> MintedKey {
    let mut minted = mint(&old.project, &old.env, old.role, old.name.clone(), now_ms);
    let lifetime = old
        .expires_at_ms
        .saturating_sub(old.created_at_ms)
        .clamp(1, max_age_ms.max(1));
    minted.record.expires_at_ms = now_ms.saturating_add(lifetime);
    minted
}

/// When a key rotated at `now_ms` with `grace_ms` stops working for good: at the end of
/// its grace, or at its expiry if that comes first. (A suspended key is refused before
/// then, until it is resumed: see [`refused_now`].)
pub fn stops_at(old: &KeyRecord, grace_ms: i64, now_ms: i64) -> i64 {
    now_ms.saturating_add(grace_ms).min(old.expires_at_ms)
}

/// Whether a key is refused already at `now_ms`, whatever its grace: suspended or
/// expired.
pub fn refused_now(old: &KeyRecord, now_ms: i64) -> bool {
    old.suspended_at_ms.is_some() || old.expires_at_ms <= now_ms
}

/// Lowercase hex SHA-256 of a secret.
pub fn digest_hex(secret: &str) -> String {
    let d = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(64);
    for b in d {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// The keys a server knows (all but revoked ones), by digest. Lookups never touch the
/// store, and read each I/O thread's own copy of the map (see `snapshot`): every
/// request looks its key up, and a shared lock and shared reference counts moved
/// their cache lines between the cores on every call.
#[derive(Debug, Default)]
pub struct KeyCache {
    by_digest: Snapshot<KeyMap>,
    /// Resolves the provider credentials of the keys on each load (none in unit tests).
    upstream: Option<Upstream>,
    /// The projects' auto-suspend choices, refreshed on each load.
    anomaly_policy: Arc<ProjectPolicy>,
    /// Held by a load from its first read to its swap: two loads at once (the watcher's
    /// and one after an anomaly suspension) swap in the order they read, so an older
    /// read never replaces a newer one (a revoked key coming back).
    loading: tokio::sync::Mutex<()>,
}

impl KeyCache {
    /// Resolves a presented secret to its cached key, whatever its state: the caller
    /// checks expiry, suspension and rotation. Looking up by digest means the map
    /// never holds a secret, and timing reveals nothing about one.
    pub fn lookup(&self, secret: &str) -> Option<Arc<CachedKey>> {
        self.by_digest.get().0.get(&digest(secret)).cloned()
    }

    /// An empty cache whose loads resolve provider credentials through `upstream`.
    pub fn with_upstream(upstream: Upstream) -> Self {
        Self {
            by_digest: Snapshot::default(),
            upstream: Some(upstream),
            anomaly_policy: Arc::default(),
            loading: tokio::sync::Mutex::default(),
        }
    }

    /// The projects' anomaly auto-suspend choices this cache keeps current, for the
    /// detector ([`crate::anomaly::Detector::with_project_policy`]).
    pub fn anomaly_policy(&self) -> Arc<ProjectPolicy> {
        self.anomaly_policy.clone()
    }

    /// Replaces the whole set with the keys given (revoked ones are skipped); every
    /// key uses the global provider credential.
    pub fn replace(&self, keys: &[KeyRecord]) {
        self.replace_with_refs(keys, &CredentialRefs::default());
    }

    /// Replaces the whole set with the keys given (revoked ones are skipped), each
    /// carrying the provider credential reference `refs` chooses for it — once that
    /// reference has been read (see [`KeyCache::effective_ref`]).
    pub fn replace_with_refs(&self, keys: &[KeyRecord], refs: &CredentialRefs) {
        let previous = self.by_digest.shared();
        let map = keys
            .iter()
            .filter(|k| k.revoked_at_ms.is_none())
            .filter_map(|k| {
                let d = parse_hex32(&k.digest_hex)?;
                let wanted = refs.for_key(&k.project, &k.env).map(str::to_owned);
                let before = previous.0.get(&d).map(|c| &c.principal.upstream_ref);
                let used = self.effective_ref(wanted.as_deref(), before);
                Some((d, Arc::new(cached(k, used, wanted))))
            })
            .collect();
        self.by_digest.set(KeyMap(map));
    }

    /// The credential a key's calls use now: the one the store chooses for it (`wanted`)
    /// once it has been read; before that, the one the key had (`before`), if it was
    /// cached and that one is read; a key new to the cache waits for its own (503).
    fn effective_ref(
        &self,
        wanted: Option<&str>,
        before: Option<&Option<String>>,
    ) -> Option<String> {
        let readable = |r: Option<&str>| match (r, &self.upstream) {
            (Some(r), Some(upstream)) => upstream.is_resolved(r),
            _ => true,
        };
        match before {
            Some(before) if !readable(wanted) && readable(before.as_deref()) => before.clone(),
            _ => wanted.map(str::to_owned),
        }
    }

    /// Moves the keys whose chosen credential has been read since the last load onto
    /// it. Changes nothing else, so it cannot bring back a key a newer load removed.
    async fn adopt_resolved(&self) {
        let _loading = self.loading.lock().await;
        let current = self.by_digest.shared();
        let mut changed = false;
        let map = current
            .0
            .iter()
            .map(|(d, k)| {
                let used =
                    self.effective_ref(k.wanted_ref.as_deref(), Some(&k.principal.upstream_ref));
                if used == k.principal.upstream_ref {
                    return (*d, k.clone());
                }
                changed = true;
                let mut key = CachedKey::clone(k);
                let mut principal = Principal::clone(&key.principal);
                principal.upstream_ref = used;
                key.principal = Arc::new(principal);
                (*d, Arc::new(key))
            })
            .collect();
        if changed {
            self.by_digest.set(KeyMap(map));
        }
    }

    /// Keys not rotated, suspended or expired that expire within 14 days of `now_ms`.
    pub fn due_for_rotation(&self, now_ms: i64) -> Vec<Arc<CachedKey>> {
        let mut due: Vec<Arc<CachedKey>> = self
            .by_digest
            .shared()
            .0
            .values()
            .filter(|k| {
                k.rotated_to.is_none()
                    && now_ms < k.expires_at_ms
                    && k.expires_at_ms - now_ms <= ROTATION_WARNING_MS
            })
            .cloned()
            .collect();
        due.sort_by(|a, b| a.principal.key_id.cmp(&b.principal.key_id));
        due
    }

    pub fn len(&self) -> usize {
        self.by_digest.shared().0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The cached keys by digest.
#[derive(Debug, Default)]
struct KeyMap(HashMap<[u8; 32], Arc<CachedKey>>);

impl ThreadCopy for KeyMap {
    /// With keys and principals of its own: each request clones them, and a thread's
    /// clones then count on the thread's own copies.
    fn thread_copy(&self) -> Self {
        let copy = self.0.iter().map(|(digest, key)| {
            let mut key = CachedKey::clone(key);
            own(&mut key.principal);
            (*digest, Arc::new(key))
        });
        Self(copy.collect())
    }
}

fn cached(k: &KeyRecord, upstream_ref: Option<String>, wanted_ref: Option<String>) -> CachedKey {
    CachedKey {
        principal: Arc::new(Principal {
            key_id: k.id.clone(),
            project: k.project.clone(),
            env: k.env.clone(),
            role: k.role,
            upstream_ref,
            lane: k.lane,
        }),
        prefix: k.prefix.clone(),
        expires_at_ms: k.expires_at_ms,
        suspended: k.suspended_at_ms.is_some(),
        rotated_to: k.rotated_to.clone(),
        retire_at_ms: k.retire_at_ms,
        wanted_ref,
    }
}

/// Loads the cache now, reading every provider credential its keys use before it
/// returns (start-up: the first calls find their credentials), and returns the version
/// it reflects.
pub async fn load(cache: &KeyCache, store: &Store) -> Result<i64, StoreError> {
    let version = store.keys_version().await?;
    let (_, new) = reload(cache, store, true).await?;
    if let Some(upstream) = cache.upstream.clone() {
        let (reader, claimed) = (upstream.clone(), new.clone());
        let read = tokio::task::spawn_blocking(move || reader.resolve(&claimed)).await;
        if let Err(e) = read {
            tracing::error!(error = %e, "resolving provider credentials failed");
            upstream.unclaim(&new);
        }
        cache.adopt_resolved().await;
    }
    Ok(version)
}

/// Loads the cache now (after a change this process made, such as a suspension)
/// without reading new provider credentials: the watcher does that when it sees the
/// change.
pub async fn load_keys(cache: &KeyCache, store: &Store) -> Result<usize, StoreError> {
    Ok(reload(cache, store, false).await?.0)
}

/// Reads the keys and credential references and swaps the map at once: no credential
/// is read meanwhile, so a revocation is never held up by a slow `exec:` command or a
/// file that does not answer. With `claim`, answers the references in use that are
/// not read yet, claimed for the caller to read ([`Upstream::resolve`]); the known ones
/// are re-read in the background. Returns the key count and the claimed references.
async fn reload(
    cache: &KeyCache,
    store: &Store,
    claim: bool,
) -> Result<(usize, BTreeSet<String>), StoreError> {
    let _loading = cache.loading.lock().await;
    let keys = store.active_keys().await?;
    let refs = store.credential_refs().await?;
    let auto_suspend = store
        .projects()
        .await?
        .into_iter()
        .filter_map(|p| Some((p.name, p.anomaly_auto_suspend?)))
        .collect();
    cache.replace_with_refs(&keys, &refs);
    cache.anomaly_policy.replace(auto_suspend);
    let mut new = BTreeSet::new();
    if let Some(upstream) = cache.upstream.clone() {
        // In use: the references the store chooses, and those keys still use while
        // their new one is read.
        let mut used: BTreeSet<String> = keys
            .iter()
            .filter(|k| k.revoked_at_ms.is_none())
            .filter_map(|k| refs.for_key(&k.project, &k.env).map(str::to_owned))
            .collect();
        let map = cache.by_digest.shared();
        used.extend(
            map.0
                .values()
                .filter_map(|k| k.principal.upstream_ref.clone()),
        );
        if claim {
            new = upstream.claim_unresolved(&used);
        }
        let known = upstream.retain(&used);
        tokio::task::spawn_blocking(move || upstream.refresh(&known));
    }
    Ok((keys.len(), new))
}

/// Reads `new` (claimed by a load) on a blocking thread, then moves the keys waiting
/// for them onto them.
fn resolve_in_background(cache: Arc<KeyCache>, new: BTreeSet<String>) {
    let Some(upstream) = cache.upstream.clone() else {
        return;
    };
    if new.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let (reader, claimed) = (upstream.clone(), new.clone());
        let read = tokio::task::spawn_blocking(move || reader.resolve(&claimed)).await;
        if let Err(e) = read {
            tracing::error!(error = %e, "resolving provider credentials failed");
            upstream.unclaim(&new);
        }
        cache.adopt_resolved().await;
    });
}

/// Keeps `cache` in step with the store until `stop` fires: polls the change counter
/// and reloads on change. Store errors are logged and retried on the next tick; the
/// cache keeps its last good content meanwhile. Beside it runs the rotation reminder.
pub async fn watch(
    cache: Arc<KeyCache>,
    store: Store,
    version: i64,
    every: Duration,
    stop: watch::Receiver<bool>,
) {
    tokio::join!(
        poll(cache.clone(), store, version, every, stop.clone()),
        remind_rotation(cache, ROTATION_CHECK_EVERY, stop),
    );
}

async fn poll(
    cache: Arc<KeyCache>,
    store: Store,
    version: i64,
    every: Duration,
    stop: watch::Receiver<bool>,
) {
    poll_version(
        "key cache",
        version,
        every,
        stop,
        || {
            let store = store.clone();
            async move { store.keys_version().await }
        },
        || {
            let (cache, store) = (cache.clone(), store.clone());
            async move {
                let (count, new) = reload(&cache, &store, true).await?;
                resolve_in_background(cache, new);
                Ok(count)
            }
        },
    )
    .await;
}

/// How long one store call of a watch loop may take before it is cut and tried again
/// on the next tick.
pub(crate) const STORE_CALL_DEADLINE: Duration = Duration::from_secs(5);

/// How long a whole reload may take (several store reads of every key or rule, and
/// waiting for a reload already running): generous, for large stores.
const RELOAD_DEADLINE: Duration = Duration::from_secs(60);

/// The watch loop shared by the in-memory copies of store state (keys, rate limits):
/// every `every`, reads the store's change counter with `current` and, when it moved,
/// calls `reload` (which answers how many items it loaded). Store errors are logged
/// and retried on the next tick, the last good copy staying in force meanwhile.
pub(crate) async fn poll_version<C, CF, R, RF>(
    what: &'static str,
    mut version: i64,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    current: C,
    reload: R,
) where
    C: Fn() -> CF,
    CF: Future<Output = Result<i64, StoreError>>,
    R: Fn() -> RF,
    RF: Future<Output = Result<usize, StoreError>>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        // Each store call has a deadline: one stuck on a dead connection must not stop
        // the watch for good (a revocation would never take effect).
        match tokio::time::timeout(STORE_CALL_DEADLINE, current()).await {
            Ok(Ok(v)) if v == version => {}
            Ok(Ok(v)) => {
                // A long reload gives way to shutdown.
                let reloaded = tokio::select! {
                    r = tokio::time::timeout(RELOAD_DEADLINE, reload()) => r,
                    _ = stop.changed() => return,
                };
                match reloaded {
                    Ok(Ok(items)) => {
                        tracing::info!(items, version = v, "{what} reloaded");
                        version = v;
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "{what} reload failed"),
                    Err(_) => tracing::warn!("{what} reload timed out; trying again"),
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "{what} version check failed"),
            Err(_) => tracing::warn!("{what} version check timed out; trying again"),
        }
    }
}

/// Logs a warning for each key due for rotation, at start and then at most once a
/// day per key. Reads the cache only: no store access, no writes.
async fn remind_rotation(cache: Arc<KeyCache>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut warned: HashMap<String, i64> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = now_ms();
        for key in to_remind(&cache.due_for_rotation(now), now, &mut warned) {
            let p = &key.principal;
            tracing::warn!(
                key_id = %p.key_id,
                project = %p.project,
                env = %p.env,
                expires_in_hours = (key.expires_at_ms - now) / 3_600_000,
                "key due for rotation: run `tollgate keys rotate {}`",
                p.key_id
            );
        }
    }
}

/// The due keys not named within the last day; remembers that they now are, and
/// forgets keys no longer due.
fn to_remind(
    due: &[Arc<CachedKey>],
    now_ms: i64,
    warned: &mut HashMap<String, i64>,
) -> Vec<Arc<CachedKey>> {
    warned.retain(|id, _| due.iter().any(|k| &k.principal.key_id == id));
    due.iter()
        .filter(|k| {
            let last = warned.get(&k.principal.key_id).copied();
            if last.is_some_and(|at| now_ms - at < ROTATION_WARNING_REPEAT_MS) {
                return false;
            }
            warned.insert(k.principal.key_id.clone(), now_ms);
            true
        })
        .cloned()
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(created: i64, expires: i64, suspended: Option<i64>) -> KeyRecord {
        KeyRecord {
            id: "key_old".into(),
            project: "shop".into(),
            env: "dev".into(),
            role: Role::Member,
            name: Some("ci".into()),
            prefix: "tg-dev-x".into(),
            digest_hex: String::new(),
            created_at_ms: created,
            last_used_at_ms: None,
            revoked_at_ms: None,
            revoke_reason: None,
            expires_at_ms: expires,
            suspended_at_ms: suspended,
            suspend_reason: None,
            rotated_to: None,
            retire_at_ms: None,
            lane: Lane::Interactive,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_call_that_hangs_is_cut_and_the_watch_goes_on() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let checks = Arc::new(AtomicUsize::new(0));
        let reloads = Arc::new(AtomicUsize::new(0));
        let (stop_tx, stop) = watch::channel(false);
        let (c, r) = (checks.clone(), reloads.clone());
        let watcher = tokio::spawn(poll_version(
            "test",
            1,
            Duration::from_millis(100),
            stop,
            move || {
                // The first version check never answers (a dead connection).
                let first = c.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        std::future::pending::<()>().await;
                    }
                    Ok(2)
                }
            },
            move || {
                r.fetch_add(1, Ordering::SeqCst);
                async { Ok(1) }
            },
        ));
        tokio::time::sleep(STORE_CALL_DEADLINE + Duration::from_secs(1)).await;
        assert!(
            checks.load(Ordering::SeqCst) >= 2,
            "the hung check was never cut"
        );
        assert_eq!(
            reloads.load(Ordering::SeqCst),
            1,
            "the change was not loaded"
        );
        stop_tx.send(true).unwrap();
        watcher.await.unwrap();
    }

    #[test]
    fn a_successor_keeps_the_keys_lifetime_within_the_projects_maximum() {
        const DAY: i64 = 86_400_000;
        let short = record(0, DAY, None);
        let next = successor(&short, 90 * DAY, 10_000);
        assert_eq!(next.record.expires_at_ms, 10_000 + DAY);
        assert_eq!(
            (next.record.project.as_str(), next.record.name.as_deref()),
            ("shop", Some("ci"))
        );
        // A key older than the project's maximum now allows gets that maximum.
        let long = record(0, 365 * DAY, None);
        assert_eq!(
            successor(&long, 90 * DAY, 5).record.expires_at_ms,
            5 + 90 * DAY
        );
    }

    #[test]
    fn a_rotated_key_stops_at_its_grace_or_its_expiry_and_may_be_refused_already() {
        let live = record(0, 10_000, None);
        assert_eq!(stops_at(&live, 1_000, 5_000), 6_000);
        // Its expiry comes before the grace ends.
        assert_eq!(stops_at(&live, 60_000, 5_000), 10_000);
        assert!(!refused_now(&live, 5_000));
        // Suspended or expired: refused already.
        let suspended = record(0, 10_000, Some(1));
        assert!(refused_now(&suspended, 5_000));
        assert_eq!(stops_at(&suspended, 1_000, 5_000), 6_000);
        assert!(refused_now(&live, 10_000));
    }

    #[test]
    fn minted_keys_have_the_env_prefix_enough_entropy_and_a_matching_digest() {
        let a = mint("shop", "dev", Role::Member, None, 1);
        let b = mint("shop", "dev", Role::Member, None, 1);
        assert!(a.secret.starts_with("tg-dev-"));
        assert_eq!(a.secret.len(), "tg-dev-".len() + SECRET_CHARS);
        // 32 base62 characters carry 32 * log2(62) ≈ 190 bits.
        assert!((SECRET_CHARS as f64) * 62f64.log2() >= 128.0);
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.record.id, b.record.id);
        assert!(a.secret.starts_with(&a.record.prefix));
        assert!(!a.record.prefix.contains(&a.secret[12..]));
        assert_eq!(a.record.digest_hex, digest_hex(&a.secret));
        assert_eq!(parse_hex32(&a.record.digest_hex), Some(digest(&a.secret)));
    }

    #[test]
    fn cache_resolves_only_known_secrets() {
        let m = mint("shop", "prod", Role::Admin, Some("ci".into()), 1);
        let record = KeyRecord {
            id: m.record.id.clone(),
            project: "shop".into(),
            env: "prod".into(),
            role: Role::Admin,
            name: None,
            prefix: m.record.prefix.clone(),
            digest_hex: m.record.digest_hex.clone(),
            created_at_ms: 1,
            last_used_at_ms: None,
            revoked_at_ms: None,
            revoke_reason: None,
            expires_at_ms: m.record.expires_at_ms,
            suspended_at_ms: None,
            suspend_reason: None,
            rotated_to: None,
            retire_at_ms: None,
            lane: Lane::Interactive,
        };
        let cache = KeyCache::default();
        cache.replace(&[record]);
        let p = cache.lookup(&m.secret).unwrap();
        assert_eq!(p.principal.key_id, m.record.id);
        assert_eq!(p.principal.env, "prod");
        assert!(cache.lookup("tg-prod-wrong").is_none());
        // Another thread's copy of the map (made on its first lookup) gives way to a
        // change at its next lookup: a revoked key stops working on every thread.
        let (looked, changed) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(cache.lookup(&m.secret).is_some());
                looked.wait();
                changed.wait();
                assert!(cache.lookup(&m.secret).is_none());
            });
            looked.wait();
            cache.replace(&[]);
            changed.wait();
        });
        assert!(cache.lookup(&m.secret).is_none());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn rotation_reminders_name_each_due_key_once_a_day() {
        let day = 86_400_000;
        let record = |id: &str, digest: String, expires: i64| KeyRecord {
            id: id.into(),
            project: "shop".into(),
            env: "dev".into(),
            role: Role::Member,
            name: None,
            prefix: "tg-dev-x".into(),
            digest_hex: digest,
            created_at_ms: 0,
            last_used_at_ms: None,
            revoked_at_ms: None,
            revoke_reason: None,
            expires_at_ms: expires,
            suspended_at_ms: None,
            suspend_reason: None,
            rotated_to: None,
            retire_at_ms: None,
            lane: Lane::Interactive,
        };
        let soon = mint("shop", "dev", Role::Member, None, 0);
        let later = mint("shop", "dev", Role::Member, None, 0);
        let cache = KeyCache::default();
        cache.replace(&[
            record("key_soon", soon.record.digest_hex, 20 * day),
            record("key_later", later.record.digest_hex, 90 * day),
        ]);
        let mut warned = HashMap::new();
        let ids = |v: Vec<Arc<CachedKey>>| -> Vec<String> {
            v.iter().map(|k| k.principal.key_id.clone()).collect()
        };
        let now = 10 * day;
        assert_eq!(
            ids(to_remind(&cache.due_for_rotation(now), now, &mut warned)),
            vec!["key_soon"]
        );
        // An hour later: already named today.
        let now = now + 3_600_000;
        assert!(to_remind(&cache.due_for_rotation(now), now, &mut warned).is_empty());
        // A day later: named again.
        let now = 11 * day;
        assert_eq!(
            ids(to_remind(&cache.due_for_rotation(now), now, &mut warned)),
            vec!["key_soon"]
        );
        // Expired keys are not due for rotation any more.
        assert!(cache.due_for_rotation(20 * day).is_empty());
    }
}
