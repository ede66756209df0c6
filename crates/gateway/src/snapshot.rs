//! Read-mostly values that every request reads and an operator changes now and then
//! (rate-limit rules, model rules, budgets, the model catalog), read without writing to
//! memory another thread also writes.
//!
//! A value behind `RwLock<Arc<T>>` costs each read four atomic read-modify-writes on
//! two cache lines every I/O thread shares (the lock's word, the `Arc`'s count), and
//! every `Arc` cloned out of it (a rule's scope) two more. With two threads reading at
//! once each of them moves a line between cores: about 1 µs per admission in
//! `examples/admit_cost` ("on two threads at once"). A [`Snapshot`] keeps that shared
//! value for writers, and gives each thread a copy of its own ([`ThreadCopy`]: fresh
//! `Arc`s inside, so their counts are the thread's own too). A read is one load of the
//! snapshot's generation, a cache line only writers write, and a look-up in the
//! thread's few copies; a thread makes a new copy the first time it reads after a
//! change.

use std::any::Any;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

/// A copy whose inner reference counts, if any, are not shared with the original.
pub trait ThreadCopy {
    fn thread_copy(&self) -> Self;
}

/// Replaces `shared` with a fresh `Arc` of the same value, whose count is the copy's
/// own (for [`ThreadCopy`] implementations).
pub fn own<T: Clone>(shared: &mut Arc<T>) {
    *shared = Arc::new(T::clone(shared));
}

/// A shared value with per-thread copies (see the module docs).
#[derive(Debug)]
pub struct Snapshot<T> {
    /// Names this snapshot among a thread's copies.
    id: u64,
    /// Bumped after every change of `current`.
    generation: AtomicU64,
    current: RwLock<Arc<T>>,
}

/// Each thread's copies: snapshot id, the generation copied, the copy. A process has
/// a handful of snapshots; tests that build many keep only the latest few per thread.
type Copies = Vec<(u64, u64, Arc<dyn Any + Send + Sync>)>;

thread_local! {
    static COPIES: RefCell<Copies> = const { RefCell::new(Vec::new()) };
}

/// Copies kept per thread before the oldest is dropped.
const COPIES_PER_THREAD: usize = 16;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl<T: Default> Default for Snapshot<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T> Snapshot<T> {
    pub fn new(value: T) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
            current: RwLock::new(Arc::new(value)),
        }
    }

    /// Replaces the value; every thread reads the new one from its next read.
    pub fn set(&self, value: T) {
        *self.current.write() = Arc::new(value);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The shared value (for writers and rare readers).
    pub fn shared(&self) -> Arc<T> {
        self.current.read().clone()
    }
}

impl<T: ThreadCopy + Send + Sync + 'static> Snapshot<T> {
    /// The value as of the last change, from this thread's own copy.
    pub fn get(&self) -> Arc<T> {
        // Acquire: a generation seen here was bumped after its value was stored, so
        // a copy made after seeing it is of that value or a newer one.
        let generation = self.generation.load(Ordering::Acquire);
        COPIES.with(|copies| {
            let mut copies = copies.borrow_mut();
            let slot = copies.iter().position(|(id, _, _)| *id == self.id);
            if let Some(i) = slot {
                let (_, copied, value) = &copies[i];
                if *copied == generation {
                    if let Ok(v) = value.clone().downcast::<T>() {
                        return v;
                    }
                }
            }
            let fresh = Arc::new(self.current.read().thread_copy());
            let entry = (
                self.id,
                generation,
                fresh.clone() as Arc<dyn Any + Send + Sync>,
            );
            match slot {
                Some(i) => copies[i] = entry,
                None => {
                    if copies.len() >= COPIES_PER_THREAD {
                        copies.remove(0);
                    }
                    copies.push(entry);
                }
            }
            fresh
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq)]
    struct Rules(Vec<Arc<String>>);

    impl ThreadCopy for Rules {
        fn thread_copy(&self) -> Self {
            Self(self.0.iter().map(|s| Arc::new(String::clone(s))).collect())
        }
    }

    fn rules(names: &[&str]) -> Rules {
        Rules(names.iter().map(|n| Arc::new((*n).to_owned())).collect())
    }

    #[test]
    fn each_thread_reads_its_own_copy_of_the_latest_value() {
        let snap = Arc::new(Snapshot::new(rules(&["a"])));
        let mine = snap.get();
        assert_eq!(*mine, rules(&["a"]));
        // Read again without a change: the same copy, not a new one.
        assert!(Arc::ptr_eq(&mine, &snap.get()));
        // The copy's inner counts are its own: the shared value's are untouched.
        let shared = snap.shared();
        assert!(!Arc::ptr_eq(&shared.0[0], &mine.0[0]));
        assert_eq!(Arc::strong_count(&shared.0[0]), 1);

        // Another thread gets another copy of the same value.
        let other = {
            let snap = snap.clone();
            std::thread::spawn(move || snap.get()).join().unwrap()
        };
        assert_eq!(*other, rules(&["a"]));
        assert!(!Arc::ptr_eq(&other, &mine));

        // A change is seen by the next read on every thread.
        snap.set(rules(&["a", "b"]));
        assert_eq!(*snap.get(), rules(&["a", "b"]));
        let other = {
            let snap = snap.clone();
            std::thread::spawn(move || snap.get()).join().unwrap()
        };
        assert_eq!(*other, rules(&["a", "b"]));
        // The old copy lives on while a reader holds it.
        assert_eq!(*mine, rules(&["a"]));
    }

    #[test]
    fn many_snapshots_on_one_thread_each_read_their_own_value() {
        let snaps: Vec<Snapshot<Rules>> = (0..COPIES_PER_THREAD + 4)
            .map(|i| Snapshot::new(rules(&[&i.to_string()])))
            .collect();
        for _ in 0..2 {
            for (i, s) in snaps.iter().enumerate() {
                assert_eq!(*s.get(), rules(&[&i.to_string()]));
            }
        }
        COPIES.with(|c| assert!(c.borrow().len() <= COPIES_PER_THREAD));
    }
}
