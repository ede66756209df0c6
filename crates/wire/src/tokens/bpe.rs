//! Byte-pair encoding with a vocabulary laid out at build time (`build.rs`): the
//! text is split into pieces by the encoding's pattern, and each piece that is not a
//! token itself is merged pair by pair, the pair of lowest rank first (leftmost on a
//! tie), until no adjacent pair is a token — tiktoken's algorithm, so counts and token
//! boundaries are the ones OpenAI's tokenizer gives (tested against tiktoken-rs).
//!
//! Nothing here allocates per lookup: a token's rank is found by hashing its bytes
//! into a read-only index compiled into the binary.

use std::ops::Range;

use fancy_regex::Regex;

include!("vocab_hash.rs");

/// A vocabulary: the three tables `build.rs` wrote, and the pattern that splits text
/// into pieces.
pub(super) struct Vocabulary {
    tables: Tables,
    /// 64 − log2(slots): a hash's slot is its high bits.
    shift: u32,
    pattern: Regex,
}

/// The tables of an encoding, as compiled in.
#[derive(Clone, Copy)]
pub(super) struct Tables {
    /// Every token's bytes, by rank, one after the other.
    pub bytes: &'static [u8],
    /// Little-endian `u32` start of each rank's bytes, and the end.
    pub offsets: &'static [u8],
    /// Little-endian `u32` slots: tag and rank + 1, or 0.
    pub index: &'static [u8],
}

pub(super) const O200K_BASE: Tables = Tables {
    bytes: include_bytes!(concat!(env!("OUT_DIR"), "/o200k_base.bytes")),
    offsets: include_bytes!(concat!(env!("OUT_DIR"), "/o200k_base.offsets")),
    index: include_bytes!(concat!(env!("OUT_DIR"), "/o200k_base.index")),
};

pub(super) const CL100K_BASE: Tables = Tables {
    bytes: include_bytes!(concat!(env!("OUT_DIR"), "/cl100k_base.bytes")),
    offsets: include_bytes!(concat!(env!("OUT_DIR"), "/cl100k_base.offsets")),
    index: include_bytes!(concat!(env!("OUT_DIR"), "/cl100k_base.index")),
};

/// o200k_base's pre-tokenisation pattern (OpenAI's `tiktoken_ext/openai_public.py`).
pub(super) const O200K_BASE_PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"\p{N}{1,3}",
    "|",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    "|",
    r"\s*[\r\n]+",
    "|",
    r"\s+(?!\S)",
    "|",
    r"\s+",
);

/// cl100k_base's pre-tokenisation pattern (the same source).
pub(super) const CL100K_BASE_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";

/// A rank no pair has: the pair is not a token.
const NONE: u32 = u32::MAX;

/// Longest piece merged by scanning every pair for the lowest after each merge, which
/// is quadratic in the piece and fastest for the short pieces words make; a longer
/// one is merged with a heap (the same tokens).
const SCAN_MAX: usize = 64;

/// Longest piece merged whole. A longer one is merged a chunk of this many bytes at a
/// time, which bounds the memory of the merge; it may count a token or so more per
/// chunk than tiktoken. No text has such a piece (it takes 64 KB of letters, or of
/// spaces, with nothing between them), but a request body can: 8 MiB of one piece is
/// counted in about 2.5 s on the benchmark VM, where tiktoken's quadratic merge, the
/// scan alone, would take hours (40 KB: 28 ms with the heap, 1.4 s with the scan).
const PIECE_MAX: usize = 1 << 16;

impl Vocabulary {
    /// The vocabulary of `tables`, splitting text with `pattern`. `None` if the pattern
    /// does not compile or the tables are not whole.
    pub(super) fn new(tables: &Tables, pattern: &str) -> Option<Self> {
        let slots = tables.index.len() / 4;
        if !slots.is_power_of_two() || tables.offsets.len() < 8 || tables.offsets.len() % 4 != 0 {
            return None;
        }
        Some(Self {
            tables: *tables,
            shift: 64 - slots.trailing_zeros(),
            pattern: Regex::new(pattern).ok()?,
        })
    }

    /// The number of tokens in `text`.
    pub(super) fn count(&self, text: &str) -> usize {
        let mut n = 0;
        let mut parts = Vec::new();
        for (_, piece) in self.pieces(text) {
            n += self.piece_tokens(piece.as_bytes(), &mut parts);
        }
        n
    }

    /// The byte ranges of `text`'s tokens, in order; they cover `text` exactly.
    pub(super) fn token_ranges(&self, text: &str) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut parts = Vec::new();
        for (start, piece) in self.pieces(text) {
            match self.piece_tokens(piece.as_bytes(), &mut parts) {
                0 => {}
                1 => out.push(start..start + piece.len()),
                _ => out.extend(parts.windows(2).map(|w| start + w[0].0..start + w[1].0)),
            }
        }
        out
    }

    /// The pieces the pattern splits `text` into, with where each starts. Where the
    /// regex engine gives up (its backtracking limit: a megabyte of spaces before a
    /// letter reaches it), the rest of the text is one piece, merged in chunks.
    fn pieces<'t>(&'t self, text: &'t str) -> impl Iterator<Item = (usize, &'t str)> + 't {
        let mut matches = self.pattern.find_iter(text);
        let mut end = 0;
        std::iter::from_fn(move || match matches.next()? {
            Ok(m) => {
                end = m.end();
                Some((m.start(), m.as_str()))
            }
            Err(_) => {
                let rest = (end < text.len()).then(|| (end, &text[end..]));
                end = text.len();
                // Nothing after the rest: the matches stop here.
                matches = self.pattern.find_iter("");
                rest
            }
        })
    }

    /// The tokens of one piece. When it is not a token itself, `parts` is left holding
    /// where each of its tokens starts, and its length last.
    fn piece_tokens(&self, piece: &[u8], parts: &mut Vec<(usize, u32)>) -> usize {
        if piece.len() <= 1 || self.rank(piece).is_some() {
            return usize::from(!piece.is_empty());
        }
        if piece.len() <= PIECE_MAX {
            self.merge(piece, parts);
            return parts.len() - 1;
        }
        // Longer than any text's piece (see PIECE_MAX): merged a chunk at a time.
        parts.clear();
        let mut chunk_parts = Vec::new();
        let mut start = 0;
        while start < piece.len() {
            let mut end = (start + PIECE_MAX).min(piece.len());
            // Cut between characters (a byte that continues one is 0b10xx_xxxx).
            while end < piece.len() && end > start + 1 && piece[end] & 0xC0 == 0x80 {
                end -= 1;
            }
            let chunk = &piece[start..end];
            if chunk.len() <= 1 || self.rank(chunk).is_some() {
                parts.push((start, NONE));
            } else {
                self.merge(chunk, &mut chunk_parts);
                let tokens = &chunk_parts[..chunk_parts.len() - 1];
                parts.extend(tokens.iter().map(|&(at, rank)| (start + at, rank)));
            }
            start = end;
        }
        parts.push((piece.len(), NONE));
        parts.len() - 1
    }

    /// Merges `piece` (at least two bytes) pair by pair, lowest rank first, into
    /// `parts`: each token's start with the rank of it merged with the next one, then
    /// the piece's length.
    fn merge(&self, piece: &[u8], parts: &mut Vec<(usize, u32)>) {
        if piece.len() > SCAN_MAX {
            return self.merge_with_heap(piece, parts);
        }
        parts.clear();
        parts.extend((0..piece.len() - 1).map(|i| (i, self.rank_or_none(&piece[i..i + 2]))));
        parts.push((piece.len() - 1, NONE));
        parts.push((piece.len(), NONE));
        // The rank of the token at part `i` merged with the next one: the bytes from
        // its start to the start of the part after the next.
        let pair = |parts: &[(usize, u32)], i: usize| match parts.get(i + 2) {
            Some(&(end, _)) => self.rank_or_none(&piece[parts[i].0..end]),
            None => NONE,
        };
        loop {
            let lowest = parts[..parts.len() - 1]
                .iter()
                .enumerate()
                .min_by_key(|&(i, &(_, rank))| (rank, i))
                .filter(|&(_, &(_, rank))| rank != NONE)
                .map(|(i, _)| i);
            let Some(i) = lowest else {
                break;
            };
            parts.remove(i + 1);
            parts[i].1 = pair(parts, i);
            if i > 0 {
                parts[i - 1].1 = pair(parts, i - 1);
            }
        }
    }

    /// [`merge`](Self::merge) for a long piece, in O(n log n): the candidate pairs wait
    /// in a heap ordered by rank, then start — the lowest rank, leftmost on a tie, as
    /// the scan picks — and a pair one of whose parts was merged since it was pushed
    /// is dropped when it comes up. The same merges in the same order, so the same
    /// tokens. Parts are linked by their starts (`next`, `prev`).
    fn merge_with_heap(&self, piece: &[u8], parts: &mut Vec<(usize, u32)>) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;

        let n = piece.len();
        // A piece is at most PIECE_MAX bytes: its offsets fit a u32.
        let at = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut merged = vec![false; n];
        // (rank, start, middle, end) of a pair: the part at `start` and the one at
        // `middle`, which ends at `end`.
        let push = |heap: &mut BinaryHeap<Reverse<(u32, u32, u32, u32)>>, start, middle, end| {
            let rank = self.rank_or_none(&piece[start..end]);
            if rank != NONE {
                heap.push(Reverse((rank, at(start), at(middle), at(end))));
            }
        };
        // The first pairs made into a heap at once, in linear time.
        let mut heap: BinaryHeap<_> = (0..n - 1)
            .filter_map(|i| {
                let rank = self.rank_or_none(&piece[i..i + 2]);
                (rank != NONE).then(|| Reverse((rank, at(i), at(i + 1), at(i + 2))))
            })
            .collect();
        while let Some(Reverse((_, start, middle, end))) = heap.pop() {
            let (start, middle, end) = (start as usize, middle as usize, end as usize);
            // Still two neighbouring parts as they were when the pair was pushed.
            let current = !merged[start] && next[start] == middle && next[middle] == end;
            if !current {
                continue;
            }
            merged[middle] = true;
            next[start] = end;
            if end < n {
                prev[end] = start;
                push(&mut heap, start, end, next[end]);
            }
            if start > 0 {
                let before = prev[start];
                push(&mut heap, before, start, end);
            }
        }
        parts.clear();
        let mut i = 0;
        while i < n {
            parts.push((i, NONE));
            i = next[i];
        }
        parts.push((n, NONE));
    }

    fn rank_or_none(&self, bytes: &[u8]) -> u32 {
        self.rank(bytes).unwrap_or(NONE)
    }

    /// The rank of the token whose bytes are `bytes`, if it is one.
    fn rank(&self, bytes: &[u8]) -> Option<u32> {
        let h = vocab_hash(bytes);
        let tag = vocab_tag(h);
        let mask = (self.tables.index.len() / 4) - 1;
        let mut slot = usize::try_from(h >> self.shift).ok()?;
        loop {
            let entry = read_u32(self.tables.index, slot)?;
            if entry == 0 {
                return None;
            }
            if entry >> VOCAB_RANK_BITS == tag {
                let rank = (entry & VOCAB_RANK_MASK) - 1;
                if self.token(rank) == Some(bytes) {
                    return Some(rank);
                }
            }
            slot = (slot + 1) & mask;
        }
    }

    /// The bytes of the token of rank `rank`.
    fn token(&self, rank: u32) -> Option<&'static [u8]> {
        let r = usize::try_from(rank).ok()?;
        let start = usize::try_from(read_u32(self.tables.offsets, r)?).ok()?;
        let end = usize::try_from(read_u32(self.tables.offsets, r + 1)?).ok()?;
        self.tables.bytes.get(start..end)
    }
}

/// The `i`th little-endian `u32` of `table`.
fn read_u32(table: &[u8], i: usize) -> Option<u32> {
    let at = i.checked_mul(4)?;
    let word: [u8; 4] = table.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(word))
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;

    /// The vocabulary and tiktoken-rs's own encoder of the same encoding.
    fn both(o200k: bool) -> (Vocabulary, &'static tiktoken_rs::CoreBPE) {
        static O: OnceLock<tiktoken_rs::CoreBPE> = OnceLock::new();
        static C: OnceLock<tiktoken_rs::CoreBPE> = OnceLock::new();
        if o200k {
            (
                Vocabulary::new(&O200K_BASE, O200K_BASE_PATTERN).unwrap(),
                O.get_or_init(|| tiktoken_rs::o200k_base().unwrap()),
            )
        } else {
            (
                Vocabulary::new(&CL100K_BASE, CL100K_BASE_PATTERN).unwrap(),
                C.get_or_init(|| tiktoken_rs::cl100k_base().unwrap()),
            )
        }
    }

    /// Asserts the tokens of `text` are tiktoken's: the same count and, token by
    /// token, the same bytes.
    fn assert_same(ours: &Vocabulary, theirs: &tiktoken_rs::CoreBPE, text: &str) {
        let reference: Vec<Vec<u8>> = theirs
            .encode_ordinary(text)
            .into_iter()
            .map(|t| theirs.decode_bytes(&[t]).unwrap())
            .collect();
        let got: Vec<&[u8]> = ours
            .token_ranges(text)
            .into_iter()
            .map(|r| &text.as_bytes()[r])
            .collect();
        // Report the first token that differs, not a whole document.
        if let Some(i) = (0..got.len().max(reference.len()))
            .find(|&i| got.get(i).copied() != reference.get(i).map(Vec::as_slice))
        {
            let at: usize = got[..i.min(got.len())].iter().map(|t| t.len()).sum();
            let context = String::from_utf8_lossy(&text.as_bytes()[at..(at + 60).min(text.len())]);
            panic!(
                "token {i} differs at byte {at} ({context:?}): ours {:?}, tiktoken's {:?}",
                got.get(i).map(|t| String::from_utf8_lossy(t)),
                reference.get(i).map(|t| String::from_utf8_lossy(t)),
            );
        }
        assert_eq!(ours.count(text), reference.len(), "{text:?}");
    }

    /// A xorshift generator: the same texts on every run.
    struct Random(u64);

    impl Random {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        /// `len` characters drawn from `alphabet`.
        fn text(&mut self, alphabet: &[char], len: usize) -> String {
            (0..len)
                .map(|_| alphabet[self.below(alphabet.len())])
                .collect()
        }
    }

    /// Texts that exercise every branch of both patterns and the merges.
    const TRICKY: [&str; 24] = [
        "",
        "a",
        "hello world",
        "Hello, World! I'm here; they'll come, we've said, you'd KNOW, DON'T",
        "  leading and trailing   ",
        "line one\nline two\r\n\r\nline three\n\n\n",
        "tabs\tand\t\tspaces \t mixed\u{a0}nbsp",
        "1234567890 3.14159 -42 1e10 0x1F 1,000,000",
        "fn main() { println!(\"{}\", x?.y::<T>()); } // comment",
        "antidisestablishmentarianism supercalifragilisticexpialidocious",
        "naïve café résumé Ærøskøbing straße",
        "e\u{301}e\u{301} decomposed accents",
        "日本語のテキストと中文文本和한국어 텍스트",
        "Русский текст и ελληνικά και עברית ו-العربية",
        "हिन्दी पाठ और বাংলা লেখা",
        "emoji 🎉🎉 👩‍👩‍👧 🇫🇷 ❤️ 🤷🏽‍♂️",
        "<|endoftext|> <|fim_prefix|> looks special but is text",
        "   \n   \n",
        "x\n \n y",
        "ALLCAPS camelCase PascalCase snake_case kebab-case",
        "https://example.com/path?query=1&b=2#frag",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "!!!???...---***///\\\\|||",
        "{\"json\": [1, 2, {\"nested\": null}], \"ok\": true}",
    ];

    #[test]
    fn tokens_are_tiktokens_on_tricky_text() {
        for o200k in [true, false] {
            let (ours, theirs) = both(o200k);
            for text in TRICKY {
                assert_same(&ours, theirs, text);
            }
        }
    }

    #[test]
    fn tokens_are_tiktokens_on_long_documents() {
        let docs = [
            include_str!("../../../../docs/gateway.md"),
            include_str!("../../../../docs/simulator.md"),
            include_str!("../../../../README.md"),
        ];
        for o200k in [true, false] {
            let (ours, theirs) = both(o200k);
            for doc in docs {
                assert_same(&ours, theirs, doc);
            }
        }
    }

    #[test]
    fn tokens_are_tiktokens_on_random_text() {
        // Characters that sit on the patterns' edges: letters of each case and
        // script, digits, apostrophes, every kind of space and line break, marks,
        // punctuation, and characters of two, three and four bytes.
        let alphabet: Vec<char> =
            "aZé'sT 1 9\n\r\t\u{a0}\u{2003}.,!?-/\\\"(){}#日本ш\u{301}🎉😀'LLve\u{200d}_"
                .chars()
                .collect();
        let mut random = Random(0x2545_F491_4F6C_DD1D);
        for o200k in [true, false] {
            let (ours, theirs) = both(o200k);
            for _ in 0..1500 {
                let len = random.below(60);
                let text = random.text(&alphabet, len);
                assert_same(&ours, theirs, &text);
            }
        }
    }

    #[test]
    fn long_pieces_merged_with_the_heap_are_tiktokens() {
        // Pieces past SCAN_MAX: one word of letters, a run of punctuation, of spaces,
        // of one script or another, each as long as a few hundred to a few thousand
        // bytes.
        let mut random = Random(0x9E37_79B9_7F4A_7C15);
        let mut word = |alphabet: &[char], len: usize| random.text(alphabet, len);
        let lower: Vec<char> = "abcdefghijklmnopqrstuvwxyzéü".chars().collect();
        let texts = [
            "ab".repeat(400),
            "a".repeat(3000),
            word(&lower, 65),
            word(&lower, 700),
            word(&lower, 2500),
            format!("Un{}", word(&lower, 900)),
            " ".repeat(1000) + "x",
            "!?-=*#".repeat(150),
            "日本語のテキスト".repeat(60),
            "ЖжЩщ".repeat(300),
        ];
        for o200k in [true, false] {
            let (ours, theirs) = both(o200k);
            for text in &texts {
                assert_same(&ours, theirs, text);
            }
        }
    }

    #[test]
    fn a_piece_longer_than_any_text_is_merged_in_chunks() {
        let v = Vocabulary::new(&O200K_BASE, O200K_BASE_PATTERN).unwrap();
        // One piece of 200 KB: letters only, and a character of two bytes on every
        // chunk edge.
        for text in ["ab".repeat(100_000), "é".repeat(100_000)] {
            let ranges = v.token_ranges(&text);
            assert_eq!(v.count(&text), ranges.len());
            assert!(ranges.len() > text.len() / 16, "{}", ranges.len());
            let mut end = 0;
            for r in &ranges {
                assert_eq!(r.start, end, "tokens cover the text");
                assert!(v.rank(&text.as_bytes()[r.clone()]).is_some(), "{r:?}");
                end = r.end;
            }
            assert_eq!(end, text.len());
        }
    }

    #[test]
    fn text_the_pattern_gives_up_on_is_still_counted_whole() {
        // A megabyte of spaces before a letter takes the pattern past its backtracking
        // limit: the rest is counted as one piece, in chunks, not dropped.
        let v = Vocabulary::new(&O200K_BASE, O200K_BASE_PATTERN).unwrap();
        let text = format!("hello{}x", " ".repeat(1 << 20));
        let ranges = v.token_ranges(&text);
        assert_eq!(ranges.first(), Some(&(0..5)));
        assert_eq!(ranges.last().map(|r| r.end), Some(text.len()));
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!(v.count(&text), ranges.len());
        assert!(ranges.len() > 1000, "{}", ranges.len());
    }

    #[test]
    fn every_token_is_found_at_its_rank() {
        for tables in [&O200K_BASE, &CL100K_BASE] {
            let v = Vocabulary::new(tables, O200K_BASE_PATTERN).unwrap();
            let ranks = tables.offsets.len() / 4 - 1;
            assert!(ranks > 100_000, "{ranks}");
            for rank in 0..u32::try_from(ranks).unwrap() {
                let bytes = v.token(rank).unwrap();
                assert_eq!(v.rank(bytes), Some(rank));
            }
            assert_eq!(v.rank(b"not a token in any vocabulary"), None);
        }
    }
}
