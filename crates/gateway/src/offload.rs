//! Work on large bodies, done off the I/O threads.
//!
//! An I/O thread serves every connection handed to it, one task at a time: while it
//! computes, all of them wait. Two stages do work that grows with the body: counting
//! tokens (the context-window check, and the estimate of TPM rules and budgets) —
//! 7–8 MB/s of prose with o200k, about 3 MB/s for a body of one long word — and
//! checking the structured-output and tool schemas of a set not seen before. The
//! largest body tollgate accepts (8 MiB by default) would hold a thread, and every
//! other caller on it, for a second or more. So a body of up to [`INLINE_BYTES`] is
//! worked on where it is (about a millisecond at most) and a larger one on tokio's
//! blocking pool, with at most one job fewer than the machine has cores running at
//! once (at least one): the I/O threads keep a core, and a flood of large bodies
//! waits its turn, in order, instead of taking the machine.

use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

/// Bodies up to this many bytes are worked on by the calling thread.
pub const INLINE_BYTES: usize = 8 * 1024;

/// Bodies up to this many bytes are parsed as JSON by the calling thread (a quarter of
/// a millisecond or so; parsing is a hundred times faster per byte than counting
/// tokens): the caller's request in preflight, and a non-streamed answer read for its
/// usage. A larger one, such as an 8 MiB request (10–15 ms) or the embeddings of many
/// inputs (about 60 KB of JSON per input at 3,072 dimensions, 125 MB for 2,048
/// inputs), is parsed on the blocking pool.
pub const JSON_INLINE_BYTES: usize = 256 * 1024;

/// Runs `work` on a body of `len` bytes: at once on the calling thread when the body
/// is small, else on the blocking pool once a slot is free. A caller that goes away
/// (its client disconnected) while the work runs leaves the slot taken until the work
/// ends, so dropped requests cannot pile up work.
pub async fn run<T: Send + 'static>(len: usize, work: impl FnOnce() -> T + Send + 'static) -> T {
    run_over(INLINE_BYTES, len, work).await
}

/// As [`run`], for work so much cheaper per byte than counting tokens that a body of
/// up to `inline` bytes is worked on by the calling thread.
pub async fn run_over<T: Send + 'static>(
    inline: usize,
    len: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    if len <= inline {
        return work();
    }
    let Ok(slot) = slots().clone().acquire_owned().await else {
        unreachable!("the slots are never closed");
    };
    let done = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        work()
    });
    match done.await {
        Ok(t) => t,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Cancelled: the runtime is shutting down, and this task goes with it.
            Err(_) => std::future::pending().await,
        },
    }
}

/// The blocking pool's slots: one fewer than the cores, at least one.
fn slots() -> &'static Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Arc::new(Semaphore::new(cores.saturating_sub(1).max(1)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Work on a large body runs while the calling thread goes on serving: the work
    /// waits for a message that only another task on the same single-threaded
    /// runtime sends. Run on that thread, it would wait in vain.
    #[test]
    fn a_large_body_is_worked_on_while_the_thread_serves_others() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (tx, rx) = mpsc::channel::<()>();
        let served = rt.block_on(async move {
            let work = run(INLINE_BYTES + 1, move || {
                rx.recv_timeout(Duration::from_secs(10)).is_ok()
            });
            let other = async move {
                let _ = tx.send(());
            };
            tokio::join!(work, other).0
        });
        assert!(
            served,
            "the work held the thread that had to serve the other task"
        );
    }

    /// Work on a small body runs on the calling thread.
    #[test]
    fn a_small_body_is_worked_on_in_place() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let caller = std::thread::current().id();
        let (inline, large) = rt.block_on(async {
            let inline = run(INLINE_BYTES, move || std::thread::current().id()).await;
            let large = run(INLINE_BYTES + 1, move || std::thread::current().id()).await;
            (inline, large)
        });
        assert_eq!(inline, caller);
        assert_ne!(large, caller);
    }
}
