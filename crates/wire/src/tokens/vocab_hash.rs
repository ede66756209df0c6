// The hash of a token's bytes that places it in a vocabulary's index. Shared by the
// build script, which lays the index out, and by `bpe`, which probes it: included in
// both with `include!`, so the two cannot disagree.

/// Multiplier of the hash (2^64 divided by the golden ratio, odd).
const VOCAB_HASH_K: u64 = 0x9E37_79B9_7F4A_7C15;

/// A 64-bit hash of `bytes`, eight bytes per step. The index uses its high bits for
/// the slot and bits 16.. for the tag kept beside each rank.
fn vocab_hash(bytes: &[u8]) -> u64 {
    let mut h = (bytes.len() as u64).wrapping_mul(VOCAB_HASH_K);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        h = (h.rotate_left(23) ^ u64::from_le_bytes(word)).wrapping_mul(VOCAB_HASH_K);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(23) ^ u64::from_le_bytes(word)).wrapping_mul(VOCAB_HASH_K);
    }
    h ^ (h >> 29)
}

/// Bits of an index entry that hold the rank plus one (0: an empty slot).
const VOCAB_RANK_BITS: u32 = 18;
/// The rank part of an index entry.
const VOCAB_RANK_MASK: u32 = (1 << VOCAB_RANK_BITS) - 1;

/// The tag of a hash: the entry's bits above the rank, compared before the bytes are.
fn vocab_tag(h: u64) -> u32 {
    ((h >> 16) as u32) & (u32::MAX >> VOCAB_RANK_BITS)
}
