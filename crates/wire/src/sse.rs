//! Server-sent events: an encoder, and an incremental decoder that takes bytes as they
//! arrive (split anywhere, even inside a line terminator or a UTF-8 sequence) and
//! accepts LF, CRLF and CR line endings, as the WHATWG event-stream grammar does.

/// The terminator of a Chat Completions stream (Responses streams have none).
pub const DONE: &str = "[DONE]";

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if one was sent.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The `id:` field, if one was sent.
    pub id: Option<String>,
    /// The `retry:` field in milliseconds, if one was sent.
    pub retry: Option<u64>,
}

impl SseEvent {
    /// True for the `data: [DONE]` sentinel.
    pub fn is_done(&self) -> bool {
        self.data == DONE
    }
}

/// Appends one event to `out`: an optional `event:` line, one `data:` line per line of
/// `data`, and the blank line that dispatches it.
pub fn write_event(out: &mut Vec<u8>, event: Option<&str>, data: &str) {
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// Encodes one event into a fresh buffer.
pub fn encode_event(event: Option<&str>, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + event.map_or(0, str::len) + 16);
    write_event(&mut out, event, data);
    out
}

/// Incremental decoder. Feed it chunks with [`SseDecoder::push`]; it returns every event
/// completed by that chunk and keeps the rest for the next call.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no line end (a long line arriving in many
    /// chunks is scanned once, not again with every chunk).
    scanned: usize,
    /// The previous chunk ended in CR: an LF at the start of the next one belongs to it.
    pending_cr: bool,
    started: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    id: Option<String>,
    retry: Option<u64>,
    /// Whether comment lines (`: keep-alive`) are kept for [`SseDecoder::take_comments`].
    keep_comments: bool,
    /// Comment lines seen, each with how many events of its push came before it.
    comments: Vec<(usize, String)>,
}

impl SseDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that also keeps the stream's comment lines (a proxy re-framing the
    /// events passes an upstream's keep-alive comments on).
    pub fn keeping_comments() -> Self {
        Self {
            keep_comments: true,
            ..Self::default()
        }
    }

    /// The comment lines seen since the last call, each with the number of events the
    /// push that saw it had completed before it (its place among them).
    pub fn take_comments(&mut self) -> Vec<(usize, String)> {
        std::mem::take(&mut self.comments)
    }

    /// Feeds a chunk and returns the events it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        self.push_into(chunk, &mut events);
        events
    }

    /// Like [`SseDecoder::push`], appending to a caller-owned vector.
    pub fn push_into(&mut self, mut chunk: &[u8], events: &mut Vec<SseEvent>) {
        if self.pending_cr {
            self.pending_cr = false;
            if let [b'\n', rest @ ..] = chunk {
                chunk = rest;
            }
        }
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        let mut i = self.scanned;
        while i < self.buf.len() {
            let b = self.buf[i];
            if b != b'\n' && b != b'\r' {
                i += 1;
                continue;
            }
            let line_end = i;
            i += 1;
            if b == b'\r' {
                if i == self.buf.len() {
                    self.pending_cr = true;
                } else if self.buf[i] == b'\n' {
                    i += 1;
                }
            }
            let line = String::from_utf8_lossy(&self.buf[start..line_end]).into_owned();
            start = i;
            if self.keep_comments && line.starts_with(':') {
                self.started = true;
                self.comments.push((events.len(), line));
                continue;
            }
            if let Some(ev) = self.line(&line) {
                events.push(ev);
            }
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len();
    }

    /// The bytes held for the event not yet complete: its data so far and the line
    /// not yet ended.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len() + self.data.len()
    }

    /// Processes one complete line; returns an event when the line dispatches one.
    fn line(&mut self, mut line: &str) -> Option<SseEvent> {
        if !self.started {
            self.started = true;
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "retry" => {
                if let Ok(ms) = value.parse() {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        if !self.has_data && self.event.is_none() {
            return None;
        }
        self.has_data = false;
        Some(SseEvent {
            event: self.event.take(),
            data: std::mem::take(&mut self.data),
            id: self.id.clone(),
            retry: self.retry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(input: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            d.push_into(chunk, &mut out);
        }
        out
    }

    #[test]
    fn encodes_event_and_multiline_data() {
        let b = encode_event(Some("response.created"), "{\"a\":1}\nsecond");
        assert_eq!(
            b,
            b"event: response.created\ndata: {\"a\":1}\ndata: second\n\n".to_vec()
        );
        let d = SseDecoder::new().push(&b);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].event.as_deref(), Some("response.created"));
        assert_eq!(d[0].data, "{\"a\":1}\nsecond");
    }

    #[test]
    fn lf_crlf_and_cr_give_the_same_events_in_any_split() {
        let lf = b"event: a\ndata: 1\n\n: comment\ndata:2\ndata: 3\n\ndata: [DONE]\n\n".to_vec();
        let crlf: Vec<u8> = String::from_utf8(lf.clone())
            .unwrap()
            .replace('\n', "\r\n")
            .into_bytes();
        let cr: Vec<u8> = String::from_utf8(lf.clone())
            .unwrap()
            .replace('\n', "\r")
            .into_bytes();
        let expected = decode_in_pieces(&lf, lf.len());
        assert_eq!(expected.len(), 3);
        assert_eq!(expected[0].event.as_deref(), Some("a"));
        assert_eq!(expected[1].data, "2\n3");
        assert!(expected[2].is_done());
        for input in [&lf, &crlf, &cr] {
            for piece in 1..=input.len() {
                assert_eq!(decode_in_pieces(input, piece), expected, "piece {piece}");
            }
        }
    }

    #[test]
    fn split_utf8_and_partial_lines_are_reassembled() {
        let text = "data: {\"t\":\"héllo — ✓\"}\n\n";
        let events = decode_in_pieces(text.as_bytes(), 1);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "{\"t\":\"héllo — ✓\"}");
    }

    #[test]
    fn incomplete_event_is_not_dispatched_until_blank_line() {
        let mut d = SseDecoder::new();
        assert!(d.push(b"data: x\n").is_empty());
        assert!(d.push(b"data: y").is_empty());
        let ev = d.push(b"\n\n");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data, "x\ny");
    }

    #[test]
    fn a_long_line_in_many_chunks_and_what_is_held_for_it() {
        let mut d = SseDecoder::new();
        assert!(d.push(b"event: big\ndata: first\n").is_empty());
        assert_eq!(d.pending_bytes(), "first".len());
        let long = "x".repeat(100_000);
        for piece in format!("data: {long}").as_bytes().chunks(1000) {
            assert!(d.push(piece).is_empty());
        }
        assert_eq!(
            d.pending_bytes(),
            "first".len() + "data: ".len() + long.len()
        );
        // A CR ends the line even when the LF comes in the next chunk.
        assert!(d.push(b"\r").is_empty());
        let ev = d.push(b"\n\r\n");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].event.as_deref(), Some("big"));
        assert_eq!(ev[0].data, format!("first\n{long}"));
        assert_eq!(d.pending_bytes(), 0);
    }

    #[test]
    fn bom_id_retry_and_field_without_colon() {
        let events = SseDecoder::new().push("\u{feff}id: 7\nretry: 1500\ndata\n\n".as_bytes());
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id.as_deref(), Some("7"));
        assert_eq!(events[0].retry, Some(1500));
        assert_eq!(events[0].data, "");
    }
}
