//! The context a Responses call carries in from earlier turns, for its estimate.
//!
//! A call that names `previous_response_id` or a `conversation` is billed by OpenAI for
//! the whole conversation so far, not only the input in its body: the earlier turns'
//! input and output come back as input. The body does not show them, so an estimate
//! read from the body alone would reserve too few tokens for TPM rules and too little
//! spend for budgets — the worst case a budget must refuse up front would be
//! understated on every turn of a long conversation.
//!
//! So each successful Responses answer's tokens (input plus output: its input already
//! holds what it carried) are remembered under its response id and, when the call named
//! one, its conversation's id. A later call that continues from either adds that count
//! to its estimate (at most the model's context window). Output tokens include
//! reasoning, which the API does not always carry over: the count errs high, as a
//! worst case should, and settlement replaces it with the real usage anyway.
//!
//! The memory is this process's own and bounded: two generations of up to
//! [`GENERATION`] ids each (ids are kept as 64-bit digests, about 30 bytes an entry).
//! When the newer one fills, the older is dropped whole, so an id is remembered for at
//! least the last [`GENERATION`] answers. A call that continues from an id this replica
//! did not see (another replica answered it, or it was forgotten) counts its body only,
//! as before.

use std::collections::HashMap;
use std::hash::BuildHasher;

use parking_lot::Mutex;
use tollgate_store::UsageRecord;

/// Answers per generation of the memory.
pub const GENERATION: usize = 32_768;

/// What a call continues from: `previous_response_id`, or a `conversation`'s id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Continues {
    Response(String),
    Conversation(String),
}

impl Continues {
    fn id(&self) -> &str {
        match self {
            Self::Response(id) | Self::Conversation(id) => id,
        }
    }
}

/// Remembered context sizes, by response or conversation id.
#[derive(Default)]
pub struct Carried {
    hasher: foldhash::quality::RandomState,
    generations: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    newer: HashMap<u64, u64, foldhash::fast::FixedState>,
    older: HashMap<u64, u64, foldhash::fast::FixedState>,
}

impl std::fmt::Debug for Carried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.generations.lock();
        f.debug_struct("Carried")
            .field("remembered", &(g.newer.len() + g.older.len()))
            .finish()
    }
}

impl Carried {
    /// The tokens a call continuing from `from` carries in (0 when unknown).
    pub fn tokens(&self, from: &Continues) -> u64 {
        let digest = self.hasher.hash_one(from.id());
        let g = self.generations.lock();
        g.newer
            .get(&digest)
            .or_else(|| g.older.get(&digest))
            .copied()
            .unwrap_or(0)
    }

    /// Remembers a finished Responses call: its answer's tokens under its response id
    /// and the conversation it was part of. Only a successful answer with usage counts.
    pub fn remember(&self, rec: &UsageRecord, conversation: Option<&str>) {
        let tokens = rec.input_tokens.saturating_add(rec.output_tokens);
        let Some(response_id) = rec.response_id.as_deref() else {
            return;
        };
        if rec.status != 200 || rec.error_code.is_some() || tokens == 0 {
            return;
        }
        let digests =
            [Some(response_id), conversation].map(|id| id.map(|id| self.hasher.hash_one(id)));
        let mut g = self.generations.lock();
        for digest in digests.into_iter().flatten() {
            if g.newer.len() >= GENERATION {
                g.older = std::mem::take(&mut g.newer);
            }
            // A conversation's newer turn replaces what an older one said.
            g.older.remove(&digest);
            g.newer.insert(digest, tokens);
        }
    }

    /// Ids remembered now (both generations).
    #[cfg(test)]
    fn len(&self) -> usize {
        let g = self.generations.lock();
        g.newer.len() + g.older.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: &str, input: u64, output: u64) -> UsageRecord {
        UsageRecord {
            response_id: Some(id.into()),
            status: 200,
            input_tokens: input,
            output_tokens: output,
            ..UsageRecord::default()
        }
    }

    fn response(id: &str) -> Continues {
        Continues::Response(id.into())
    }

    #[test]
    fn a_successful_answer_is_remembered_by_its_id_and_conversation() {
        let c = Carried::default();
        c.remember(&answer("resp_1", 120, 30), None);
        assert_eq!(c.tokens(&response("resp_1")), 150);
        assert_eq!(c.tokens(&response("resp_2")), 0, "never seen");

        c.remember(&answer("resp_2", 200, 10), Some("conv_a"));
        let conv = Continues::Conversation("conv_a".into());
        assert_eq!(c.tokens(&conv), 210);
        // The conversation's next turn replaces its count.
        c.remember(&answer("resp_3", 260, 20), Some("conv_a"));
        assert_eq!(c.tokens(&conv), 280);
        assert_eq!(c.tokens(&response("resp_2")), 210);
    }

    #[test]
    fn failures_and_answers_without_usage_are_not_remembered() {
        let c = Carried::default();
        let mut failed = answer("resp_f", 100, 0);
        failed.status = 400;
        c.remember(&failed, None);
        let mut broken = answer("resp_b", 100, 5);
        broken.error_code = Some("server_error".into());
        c.remember(&broken, None);
        c.remember(&answer("resp_0", 0, 0), None);
        let mut no_id = answer("x", 100, 5);
        no_id.response_id = None;
        c.remember(&no_id, Some("conv_x"));
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn memory_is_bounded_and_keeps_at_least_the_last_generation() {
        let c = Carried::default();
        let total = GENERATION * 2 + 10;
        for i in 0..total {
            c.remember(&answer(&format!("resp_{i}"), 10, 1), None);
        }
        assert!(c.len() <= 2 * GENERATION, "{}", c.len());
        for i in total - GENERATION..total {
            assert_eq!(c.tokens(&response(&format!("resp_{i}"))), 11, "resp_{i}");
        }
        assert_eq!(c.tokens(&response("resp_0")), 0, "the oldest are forgotten");
    }
}
