//! Splits an OVSDB byte stream into JSON objects.
//!
//! RFC 7047 §4 sends JSON-RPC messages back to back with no delimiter, so the
//! only way to find a message boundary is to track JSON nesting. The scanner keeps
//! its state (depth, inside-a-string, after-a-backslash, scan offset) across
//! reads, so every byte is looked at once no matter how the stream is split.
//!
//! Limits: only top-level objects are accepted (every JSON-RPC message is one);
//! the scanner does not validate JSON — `serde_json` does that on the frame.

use bytes::{Buf, Bytes, BytesMut};

/// Default upper bound for one message. A full dump of a big OVN database can
/// run to tens of MiB; anything past this is treated as a broken peer.
pub const DEFAULT_MAX_FRAME_LEN: usize = 256 * 1024 * 1024;

/// Why the byte stream cannot be framed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FramingError {
    /// Something other than whitespace or `{` between messages.
    #[error("unexpected byte 0x{byte:02x} between messages (expected '{{')")]
    UnexpectedByte { byte: u8 },
    /// A message grew past the configured limit before it ended.
    #[error("message longer than {limit} bytes")]
    TooLong { limit: usize },
}

/// Incremental splitter of back-to-back JSON objects.
#[derive(Debug)]
pub struct JsonFramer {
    buf: BytesMut,
    /// Bytes of `buf` already scanned as part of the current message.
    scanned: usize,
    /// Nesting depth of `{`/`[` outside strings; 0 means between messages.
    depth: u32,
    in_string: bool,
    escaped: bool,
    max_len: usize,
}

impl Default for JsonFramer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl JsonFramer {
    /// A framer that rejects messages longer than `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(64 * 1024),
            scanned: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            max_len,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The buffer to read into directly (e.g. `AsyncReadExt::read_buf`).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes buffered but not yet returned as a frame.
    pub fn pending_len(&self) -> usize {
        self.buf.len()
    }

    /// Returns the next complete object, `None` if more bytes are needed.
    ///
    /// After an error the stream is unusable; the caller drops the connection.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FramingError> {
        if self.depth == 0 {
            // Between messages: skip whitespace, then require '{'.
            let skip = self
                .buf
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(self.buf.len());
            self.buf.advance(skip);
            match self.buf.first() {
                None => return Ok(None),
                Some(b'{') => {
                    self.depth = 1;
                    self.scanned = 1;
                    self.in_string = false;
                    self.escaped = false;
                }
                Some(&byte) => return Err(FramingError::UnexpectedByte { byte }),
            }
        }
        let mut i = self.scanned;
        let bytes = &self.buf[..];
        while i < bytes.len() {
            let b = bytes[i];
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
                    // Never underflows: at depth 0 the loop above is not running.
                    self.depth -= 1;
                    if self.depth == 0 {
                        self.scanned = 0;
                        return Ok(Some(self.buf.split_to(i).freeze()));
                    }
                }
                _ => {}
            }
        }
        self.scanned = i;
        if self.scanned > self.max_len {
            return Err(FramingError::TooLong {
                limit: self.max_len,
            });
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames_of(chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, FramingError> {
        let mut framer = JsonFramer::default();
        let mut out = Vec::new();
        for chunk in chunks {
            framer.push(chunk);
            while let Some(frame) = framer.next_frame()? {
                out.push(frame.to_vec());
            }
        }
        Ok(out)
    }

    const TRICKY: &str =
        r#"{"id":1,"result":["a}\"{","\\","[\\\"]",{"x":[1,{"y":"}"}]}],"error":null}"#;

    #[test]
    fn several_objects_in_one_read() {
        let input = format!("{TRICKY}  \n{{\"id\":null,\"method\":\"update2\",\"params\":[]}}{{}}");
        let frames = frames_of(&[input.as_bytes()]).unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0], TRICKY.as_bytes());
        assert_eq!(frames[2], b"{}");
        for f in &frames {
            serde_json::from_slice::<serde_json::Value>(f).unwrap();
        }
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let input = format!("{TRICKY}{TRICKY}");
        let bytes = input.as_bytes();
        for cut in 0..=bytes.len() {
            let frames = frames_of(&[&bytes[..cut], &bytes[cut..]]).unwrap();
            assert_eq!(frames, vec![TRICKY.as_bytes().to_vec(); 2], "cut at {cut}");
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let chunks: Vec<&[u8]> = TRICKY.as_bytes().chunks(1).collect();
        assert_eq!(
            frames_of(&chunks).unwrap(),
            vec![TRICKY.as_bytes().to_vec()]
        );
    }

    #[test]
    fn escaped_backslash_before_quote_ends_string() {
        // "\\" is a complete string; the following } closes the object.
        let input = br#"{"a":"\\"}{"b":1}"#;
        assert_eq!(frames_of(&[input]).unwrap().len(), 2);
    }

    #[test]
    fn multibyte_utf8_and_unicode_escapes() {
        let input = "{\"name\":\"br-\u{e9}\u{1F600}\\u007d\"}".as_bytes();
        let frames = frames_of(&input.chunks(1).collect::<Vec<_>>()).unwrap();
        assert_eq!(frames, vec![input.to_vec()]);
    }

    #[test]
    fn garbage_between_messages_is_an_error() {
        assert_eq!(
            frames_of(&[b"{} x"]),
            Err(FramingError::UnexpectedByte { byte: b'x' })
        );
        assert_eq!(
            frames_of(&[b"[1]"]),
            Err(FramingError::UnexpectedByte { byte: b'[' })
        );
    }

    #[test]
    fn mismatched_brackets_frame_then_fail_in_the_json_parser() {
        // The scanner counts nesting, not bracket kinds; serde_json rejects
        // the frame and the stray byte after it is a framing error.
        let mut framer = JsonFramer::default();
        framer.push(b"{]]");
        let frame = framer.next_frame().unwrap().unwrap();
        assert!(serde_json::from_slice::<serde_json::Value>(&frame).is_err());
        assert_eq!(
            framer.next_frame(),
            Err(FramingError::UnexpectedByte { byte: b']' })
        );
    }

    #[test]
    fn too_long_is_an_error() {
        let mut framer = JsonFramer::new(8);
        framer.push(b"{\"aaaaaaaaaaaa");
        assert_eq!(framer.next_frame(), Err(FramingError::TooLong { limit: 8 }));
    }

    #[test]
    fn incomplete_message_waits() {
        let mut framer = JsonFramer::default();
        framer.push(b"  {\"a\":[1,2");
        assert_eq!(framer.next_frame(), Ok(None));
        framer.push(b"]}");
        assert_eq!(
            framer.next_frame().unwrap().unwrap().as_ref(),
            b"{\"a\":[1,2]}"
        );
        assert_eq!(framer.next_frame(), Ok(None));
        assert_eq!(framer.pending_len(), 0);
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            // Strings full of the characters that matter to the scanner.
            "[a-z{}\\[\\]\"\\\\/\u{e9}\u{1F600}\n\t ]{0,12}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z\"{}\\\\]{0,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn json_object() -> impl Strategy<Value = serde_json::Value> {
        prop::collection::btree_map("[a-z\"}]{0,6}", json_value(), 0..5)
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
    }

    proptest! {
        /// Any sequence of objects, serialized back to back and cut into
        /// arbitrary chunks, frames back to the same objects.
        #[test]
        fn round_trip_any_chunking(
            objects in prop::collection::vec(json_object(), 1..5),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            pretty in any::<bool>(),
        ) {
            let mut stream = Vec::new();
            for o in &objects {
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
            let frames = frames_of(&chunks).unwrap();
            let decoded: Vec<serde_json::Value> = frames
                .iter()
                .map(|f| serde_json::from_slice(f).unwrap())
                .collect();
            prop_assert_eq!(decoded, objects);
        }
    }
}
