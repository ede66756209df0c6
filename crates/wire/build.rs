//! With the `tokens` feature: lays out the BPE vocabularies tollgate counts with
//! (o200k_base, cl100k_base) as three flat tables each, written to `OUT_DIR` and
//! compiled into the crate (`src/tokens/bpe.rs` reads them):
//!
//! - `NAME.bytes`: every token's bytes, in rank order, one after the other;
//! - `NAME.offsets`: where each rank's bytes start (little-endian `u32`, one more than
//!   there are ranks: the last is the end);
//! - `NAME.index`: an open-addressing hash index from a token's bytes to its rank
//!   (little-endian `u32` per slot: the hash's tag above the rank plus one; 0 empty).
//!
//! The vocabularies come from `tiktoken-rs` (OpenAI's files), read here at build time
//! only: at run time the tables are a few megabytes of read-only data mapped from the
//! binary, where building tiktoken-rs's own maps took about 40 MB of heap and 100 ms.

use std::error::Error;
#[cfg(feature = "tokens")]
use std::path::Path;

#[cfg(feature = "tokens")]
include!("src/tokens/vocab_hash.rs");

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/tokens/vocab_hash.rs");
    #[cfg(feature = "tokens")]
    {
        let out = std::env::var("OUT_DIR")?;
        let out = Path::new(&out);
        write_tables(&ordinary(&tiktoken_rs::o200k_base()?)?, out, "o200k_base")?;
        write_tables(&ordinary(&tiktoken_rs::cl100k_base()?)?, out, "cl100k_base")?;
    }
    Ok(())
}

/// Every ordinary token's bytes, by rank: ranks run from 0 with no gaps until the
/// special tokens, so this stops at the first rank that decodes to nothing or to a
/// special token.
#[cfg(feature = "tokens")]
fn ordinary(bpe: &tiktoken_rs::CoreBPE) -> Result<Vec<Vec<u8>>, Box<dyn Error>> {
    let special = bpe.special_tokens();
    let mut tokens = Vec::new();
    for rank in 0u32.. {
        match bpe.decode_bytes(&[rank]) {
            Ok(bytes) if !std::str::from_utf8(&bytes).is_ok_and(|s| special.contains(s)) => {
                tokens.push(bytes);
            }
            _ => break,
        }
    }
    if tokens.len() < 50_000 {
        return Err(format!("only {} ordinary tokens", tokens.len()).into());
    }
    Ok(tokens)
}

#[cfg(feature = "tokens")]
fn write_tables(tokens: &[Vec<u8>], out: &Path, name: &str) -> Result<(), Box<dyn Error>> {
    if tokens.len() >= usize::try_from(VOCAB_RANK_MASK)? {
        return Err(format!("{name}: {} ranks do not fit the index", tokens.len()).into());
    }
    let mut bytes = Vec::new();
    let mut offsets = Vec::with_capacity((tokens.len() + 1) * 4);
    for t in tokens {
        offsets.extend_from_slice(&u32::try_from(bytes.len())?.to_le_bytes());
        bytes.extend_from_slice(t);
    }
    offsets.extend_from_slice(&u32::try_from(bytes.len())?.to_le_bytes());

    // Twice as many slots as the next power of two above the ranks: at most a quarter
    // to three eighths full, so a miss (most of a merge's lookups) ends in a probe or two.
    let slots = tokens.len().next_power_of_two() * 2;
    let shift = 64 - slots.trailing_zeros();
    let mut index = vec![0u32; slots];
    for (rank, t) in tokens.iter().enumerate() {
        let h = vocab_hash(t);
        let mut slot = usize::try_from(h >> shift)?;
        while index[slot] != 0 {
            slot = (slot + 1) & (slots - 1);
        }
        index[slot] = (vocab_tag(h) << VOCAB_RANK_BITS) | (u32::try_from(rank)? + 1);
    }
    let index: Vec<u8> = index.iter().flat_map(|e| e.to_le_bytes()).collect();

    std::fs::write(out.join(format!("{name}.bytes")), bytes)?;
    std::fs::write(out.join(format!("{name}.offsets")), offsets)?;
    std::fs::write(out.join(format!("{name}.index")), index)?;
    Ok(())
}
