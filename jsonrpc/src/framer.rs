//! Splits a byte stream of back-to-back JSON values into complete values.
//!
//! OVSDB (RFC 7047 §4), unixctl and SPDK send JSON-RPC messages back to back
//! with no delimiter, so the only way to find a message boundary is to track
//! JSON nesting. The scanner keeps its state (in a message, depth,
//! inside-a-string, after-a-backslash, scan offset) across reads, so every
//! byte is looked at once however the stream is split.
//!
//! Limits: the top level holds objects (and, for JSON-RPC 2.0 batches,
//! arrays, see [`TopLevel`]) separated by JSON whitespace (space, tab, CR,
//! LF); anything else there is an error. The scanner counts nesting, not
//! bracket kinds, and does not validate JSON — `serde_json` does that on the
//! frame. A value longer than the limit is an error as soon as its first byte
//! past the limit is scanned, so the outcome does not depend on how the
//! stream was cut into reads.

/// Default upper bound for one value. A full dump of a big OVN database can
/// run to tens of MiB and SPDK's send buffer grows to 32 MiB; anything past
/// this is treated as a broken peer.
pub const DEFAULT_MAX_LEN: usize = 256 * 1024 * 1024;

/// What may start a value at the top level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopLevel {
    /// Only objects (JSON-RPC 1.0: every message is one).
    Objects,
    /// Objects and arrays (JSON-RPC 2.0: an array is a batch).
    ObjectsAndArrays,
}

/// Why the byte stream cannot be framed. After one, the stream is unusable.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Something other than whitespace or the start of a message between
    /// messages.
    #[error("unexpected byte 0x{byte:02x} between messages (expected the start of a message)")]
    UnexpectedByte { byte: u8 },
    /// A message grew past the configured limit.
    #[error("message longer than {limit} bytes")]
    TooLong { limit: usize },
}

/// Incremental splitter of back-to-back JSON values.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Start of the bytes not yet returned (the current message, if any).
    start: usize,
    /// Next byte of `buf` to scan.
    scanned: usize,
    in_message: bool,
    /// Nesting depth of `{`/`[` outside strings.
    depth: usize,
    in_string: bool,
    escaped: bool,
    max_len: usize,
    top: TopLevel,
}

fn is_json_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

impl Framer {
    /// A framer that accepts `top` values of at most `max_len` bytes.
    pub fn new(top: TopLevel, max_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            in_message: false,
            depth: 0,
            in_string: false,
            escaped: false,
            max_len,
            top,
        }
    }

    /// Objects only, up to `max_len` bytes (JSON-RPC 1.0: OVSDB, unixctl).
    pub fn objects(max_len: usize) -> Self {
        Self::new(TopLevel::Objects, max_len)
    }

    /// Objects and batches, up to `max_len` bytes (JSON-RPC 2.0: SPDK).
    pub fn objects_and_arrays(max_len: usize) -> Self {
        Self::new(TopLevel::ObjectsAndArrays, max_len)
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The buffer to read into directly (e.g. `AsyncReadExt::read_buf`);
    /// only append to it.
    pub fn buffer_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Bytes buffered but not yet returned as a value (whitespace before a
    /// message is dropped once scanned).
    pub fn pending_len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Returns the next complete value, `None` if more bytes are needed.
    ///
    /// After an error the stream is unusable; the caller drops the connection.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let mut i = self.scanned.max(self.start);
        while i < self.buf.len() {
            let b = self.buf[i];
            if !self.in_message {
                i += 1;
                if is_json_whitespace(b) {
                    self.start = i;
                    continue;
                }
                let starts = match self.top {
                    TopLevel::Objects => b == b'{',
                    TopLevel::ObjectsAndArrays => b == b'{' || b == b'[',
                };
                if !starts {
                    return Err(FrameError::UnexpectedByte { byte: b });
                }
                if self.max_len == 0 {
                    return Err(FrameError::TooLong { limit: 0 });
                }
                self.in_message = true;
                self.depth = 1;
                self.in_string = false;
                self.escaped = false;
                continue;
            }
            if i - self.start >= self.max_len {
                return Err(FrameError::TooLong {
                    limit: self.max_len,
                });
            }
            i += 1;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    // Never underflows: depth is at least 1 inside a message.
                    self.depth -= 1;
                    if self.depth == 0 {
                        let frame = self.buf[self.start..i].to_vec();
                        self.in_message = false;
                        self.start = i;
                        self.scanned = i;
                        return Ok(Some(frame));
                    }
                }
                _ => {}
            }
        }
        self.scanned = i;
        // Nothing complete is left before `start`: drop it.
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    //! Byte-exact examples from net-offload's OVSDB framer and
    //! storage-offload's SPDK splitter, which this framer replaces.

    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn frames_of(top: TopLevel, chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut framer = Framer::new(top, DEFAULT_MAX_LEN);
        let mut out = Vec::new();
        for chunk in chunks {
            framer.push(chunk);
            while let Some(frame) = framer.next_frame()? {
                out.push(frame);
            }
        }
        Ok(out)
    }

    fn objects(chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, FrameError> {
        frames_of(TopLevel::Objects, chunks)
    }

    fn values(chunks: &[&[u8]]) -> Vec<Value> {
        frames_of(TopLevel::ObjectsAndArrays, chunks)
            .unwrap()
            .iter()
            .map(|f| serde_json::from_slice(f).unwrap())
            .collect()
    }

    const TRICKY: &str =
        r#"{"id":1,"result":["a}\"{","\\","[\\\"]",{"x":[1,{"y":"}"}]}],"error":null}"#;

    #[test]
    fn several_objects_in_one_read() {
        let input = format!("{TRICKY}  \n{{\"id\":null,\"method\":\"update2\",\"params\":[]}}{{}}");
        let frames = objects(&[input.as_bytes()]).unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0], TRICKY.as_bytes());
        assert_eq!(frames[2], b"{}");
        for f in &frames {
            serde_json::from_slice::<Value>(f).unwrap();
        }
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let input = format!("{TRICKY}{TRICKY}");
        let bytes = input.as_bytes();
        for cut in 0..=bytes.len() {
            let frames = objects(&[&bytes[..cut], &bytes[cut..]]).unwrap();
            assert_eq!(frames, vec![TRICKY.as_bytes().to_vec(); 2], "cut at {cut}");
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let chunks: Vec<&[u8]> = TRICKY.as_bytes().chunks(1).collect();
        assert_eq!(objects(&chunks).unwrap(), vec![TRICKY.as_bytes().to_vec()]);
    }

    #[test]
    fn escaped_backslash_before_quote_ends_string() {
        // "\\" is a complete string; the following } closes the object.
        let input = br#"{"a":"\\"}{"b":1}"#;
        assert_eq!(objects(&[input]).unwrap().len(), 2);
    }

    #[test]
    fn multibyte_utf8_and_unicode_escapes() {
        let input = "{\"name\":\"br-\u{e9}\u{1F600}\\u007d\"}".as_bytes();
        let frames = objects(&input.chunks(1).collect::<Vec<_>>()).unwrap();
        assert_eq!(frames, vec![input.to_vec()]);
    }

    #[test]
    fn garbage_between_messages_is_an_error() {
        assert_eq!(
            objects(&[b"{} x"]),
            Err(FrameError::UnexpectedByte { byte: b'x' })
        );
        // JSON-RPC 1.0 has no batches.
        assert_eq!(
            objects(&[b"[1]"]),
            Err(FrameError::UnexpectedByte { byte: b'[' })
        );
        let mut f = Framer::objects_and_arrays(DEFAULT_MAX_LEN);
        f.push(b"  null");
        assert_eq!(
            f.next_frame(),
            Err(FrameError::UnexpectedByte { byte: b'n' })
        );
        // Form feed is not JSON whitespace.
        assert_eq!(
            objects(&[b"{}\x0c{}"]),
            Err(FrameError::UnexpectedByte { byte: 0x0c })
        );
    }

    #[test]
    fn mismatched_brackets_frame_then_fail_in_the_json_parser() {
        // The scanner counts nesting, not bracket kinds; serde_json rejects
        // the frame and the stray byte after it is a framing error.
        let mut framer = Framer::objects(DEFAULT_MAX_LEN);
        framer.push(b"{]]");
        let frame = framer.next_frame().unwrap().unwrap();
        assert!(serde_json::from_slice::<Value>(&frame).is_err());
        assert_eq!(
            framer.next_frame(),
            Err(FrameError::UnexpectedByte { byte: b']' })
        );
    }

    #[test]
    fn too_long_is_an_error_whatever_the_cuts() {
        let mut framer = Framer::objects(8);
        framer.push(b"{\"aaaaaaaaaaaa");
        assert_eq!(framer.next_frame(), Err(FrameError::TooLong { limit: 8 }));
        let mut s = Framer::objects_and_arrays(8);
        s.push(br#"{"a":"0123456789"#);
        assert_eq!(s.next_frame(), Err(FrameError::TooLong { limit: 8 }));
        // Exactly the limit is fine; one more byte is not, complete or not.
        let mut f = Framer::objects(8);
        f.push(br#"{"a":12}{"a":123}"#);
        assert_eq!(f.next_frame().unwrap().unwrap(), br#"{"a":12}"#);
        assert_eq!(f.next_frame(), Err(FrameError::TooLong { limit: 8 }));
        assert_eq!(
            Framer::objects(0).tap_push(b"{}").next_frame(),
            Err(FrameError::TooLong { limit: 0 })
        );
    }

    trait TapPush {
        fn tap_push(self, b: &[u8]) -> Self;
    }
    impl TapPush for Framer {
        fn tap_push(mut self, b: &[u8]) -> Self {
            self.push(b);
            self
        }
    }

    #[test]
    fn incomplete_message_waits() {
        let mut framer = Framer::objects(DEFAULT_MAX_LEN);
        framer.push(b"  {\"a\":[1,2");
        assert_eq!(framer.next_frame(), Ok(None));
        // The whitespace before the message is dropped.
        assert_eq!(framer.pending_len(), 9);
        framer.push(b"]}");
        assert_eq!(framer.next_frame().unwrap().unwrap(), b"{\"a\":[1,2]}");
        assert_eq!(framer.next_frame(), Ok(None));
        assert_eq!(framer.pending_len(), 0);
    }

    #[test]
    fn back_to_back_values_and_batches() {
        let got = values(&[br#"{"id":1}{"id":2}[{"id":3}]"#]);
        assert_eq!(
            got,
            vec![json!({"id":1}), json!({"id":2}), json!([{"id":3}])]
        );
    }

    #[test]
    fn braces_and_quotes_inside_strings_do_not_count() {
        let raw = br#"{"m":"a}b{c\"}\\","n":"\\\""}{"x":"]"}"#;
        assert_eq!(
            values(&[raw]),
            vec![json!({"m":"a}b{c\"}\\","n":"\\\""}), json!({"x":"]"})]
        );
    }

    #[test]
    fn state_survives_every_split_point() {
        let raw = " {\"a\":\"q\\\"}{\",\"b\":[1,{\"c\":\"\\\\\"}]}  {\"d\":\"\\u00e9 \u{e9}\"}";
        let raw = raw.as_bytes();
        for cut in 0..raw.len() {
            assert_eq!(values(&[&raw[..cut], &raw[cut..]]).len(), 2, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = raw.chunks(1).collect();
        assert_eq!(values(&bytes).len(), 2);
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            // Strings full of the characters that matter to the scanner.
            "[a-z{}\\[\\]\"\\\\/\u{e9}\u{1F600}\n\t ]{0,12}".prop_map(Value::String),
            "\\PC{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-z\"{}\\\\]{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn json_top() -> impl Strategy<Value = Value> {
        prop_oneof![
            prop::collection::btree_map("[a-z\"}]{0,6}", json_value(), 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            prop::collection::vec(json_value(), 0..4).prop_map(Value::Array),
        ]
    }

    proptest! {
        /// Any sequence of values, serialized back to back (compact or
        /// pretty) and cut into arbitrary chunks, frames back to the same
        /// values.
        #[test]
        fn round_trip_any_chunking(
            tops in prop::collection::vec(json_top(), 1..5),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            pretty in any::<bool>(),
        ) {
            let mut stream = Vec::new();
            for o in &tops {
                if pretty {
                    stream.extend(serde_json::to_vec_pretty(o).unwrap());
                    stream.extend(b"\n");
                } else {
                    stream.extend(serde_json::to_vec(o).unwrap());
                }
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let chunks: Vec<&[u8]> = points.windows(2).map(|w| &stream[w[0]..w[1]]).collect();
            prop_assert_eq!(values(&chunks), tops);
        }

        /// With a small limit, the frames and the error (if any) are the
        /// same however the stream is cut.
        #[test]
        fn limit_does_not_depend_on_cuts(
            tops in prop::collection::vec(json_top(), 1..5),
            step in 1usize..9,
        ) {
            let mut stream = Vec::new();
            for o in &tops {
                stream.extend(serde_json::to_vec(o).unwrap());
            }
            let run = |chunks: Vec<&[u8]>| {
                let mut f = Framer::objects_and_arrays(40);
                let mut out = Vec::new();
                for c in chunks {
                    f.push(c);
                    loop {
                        match f.next_frame() {
                            Ok(Some(v)) => out.push(v),
                            Ok(None) => break,
                            Err(e) => return (out, Some(e)),
                        }
                    }
                }
                (out, None)
            };
            prop_assert_eq!(run(stream.chunks(step).collect()), run(vec![&stream[..]]));
        }
    }
}
