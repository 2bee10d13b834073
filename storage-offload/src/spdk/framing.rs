//! Splits a byte stream of back-to-back JSON values with no delimiter, the
//! framing SPDK's RPC server uses. Incremental: bytes may arrive in any
//! chunking, and the scanner keeps its state (depth, inside a string, after a
//! backslash) between reads so nothing is rescanned.
//!
//! Only objects and arrays (batches) are accepted at the top level; anything
//! else means the peer is not speaking JSON-RPC and the connection is unusable.

use thiserror::Error;

/// The largest single value accepted: SPDK's send buffer grows to 32 MiB, so
/// twice that leaves room while still bounding memory on a confused peer.
pub const DEFAULT_MAX_VALUE_LEN: usize = 64 * 1024 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FramingError {
    #[error("byte {byte:#04x} at top level where a JSON object or array must start")]
    UnexpectedByte { byte: u8 },
    #[error("a JSON value exceeds {max} bytes")]
    TooLong { max: usize },
}

/// Incremental splitter. Feed bytes with [`push`](Self::push), take complete
/// values with [`next_value`](Self::next_value).
#[derive(Debug)]
pub struct JsonStreamSplitter {
    buf: Vec<u8>,
    /// Next byte of `buf` to scan.
    pos: usize,
    /// Start of the value being scanned, if one has begun.
    start: Option<usize>,
    depth: usize,
    in_string: bool,
    escaped: bool,
    max_len: usize,
}

impl Default for JsonStreamSplitter {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_VALUE_LEN)
    }
}

impl JsonStreamSplitter {
    pub fn new(max_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            start: None,
            depth: 0,
            in_string: false,
            escaped: false,
            max_len,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as a value.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Returns the next complete top-level value, `Ok(None)` if more bytes are
    /// needed. After an error the splitter must be discarded.
    pub fn next_value(&mut self) -> Result<Option<Vec<u8>>, FramingError> {
        while self.pos < self.buf.len() {
            let b = self.buf[self.pos];
            self.pos += 1;
            if self.start.is_none() {
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => continue,
                    b'{' | b'[' => {
                        self.start = Some(self.pos - 1);
                        self.depth = 1;
                        continue;
                    }
                    _ => return Err(FramingError::UnexpectedByte { byte: b }),
                }
            }
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
                    self.depth -= 1;
                    if self.depth == 0 {
                        let start = self.start.take().unwrap_or(0);
                        let value = self.buf[start..self.pos].to_vec();
                        self.buf.drain(..self.pos);
                        self.pos = 0;
                        return Ok(Some(value));
                    }
                }
                _ => {}
            }
        }
        if let Some(start) = self.start {
            if self.buf.len() - start > self.max_len {
                return Err(FramingError::TooLong { max: self.max_len });
            }
            // Drop whitespace that preceded the value so the buffer only
            // holds the value itself.
            if start > 0 {
                self.buf.drain(..start);
                self.pos -= start;
                self.start = Some(0);
            }
        } else {
            self.buf.clear();
            self.pos = 0;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn split_all(chunks: &[&[u8]]) -> Vec<Value> {
        let mut s = JsonStreamSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c);
            while let Some(v) = s.next_value().unwrap() {
                out.push(serde_json::from_slice(&v).unwrap());
            }
        }
        out
    }

    #[test]
    fn back_to_back_values_without_delimiter() {
        let got = split_all(&[br#"{"id":1}{"id":2}[{"id":3}]"#]);
        assert_eq!(
            got,
            vec![json!({"id":1}), json!({"id":2}), json!([{"id":3}])]
        );
    }

    #[test]
    fn braces_and_quotes_inside_strings_do_not_count() {
        let raw = br#"{"m":"a}b{c\"}\\","n":"\\\""}{"x":"]"}"#;
        let got = split_all(&[raw]);
        assert_eq!(
            got,
            vec![json!({"m":"a}b{c\"}\\","n":"\\\""}), json!({"x":"]"})]
        );
    }

    #[test]
    fn state_survives_every_split_point() {
        let raw = " {\"a\":\"q\\\"}{\",\"b\":[1,{\"c\":\"\\\\\"}]}  {\"d\":\"\\u00e9 \u{e9}\"}";
        let raw = raw.as_bytes();
        for cut in 0..raw.len() {
            let got = split_all(&[&raw[..cut], &raw[cut..]]);
            assert_eq!(got.len(), 2, "cut at {cut}");
        }
        // One byte at a time, including inside the UTF-8 sequence.
        let bytes: Vec<&[u8]> = raw.chunks(1).collect();
        assert_eq!(split_all(&bytes).len(), 2);
    }

    #[test]
    fn garbage_at_top_level_is_an_error() {
        let mut s = JsonStreamSplitter::default();
        s.push(b"  null");
        assert_eq!(
            s.next_value(),
            Err(FramingError::UnexpectedByte { byte: b'n' })
        );
    }

    #[test]
    fn oversized_value_is_refused() {
        let mut s = JsonStreamSplitter::new(8);
        s.push(br#"{"a":"0123456789"#);
        assert_eq!(s.next_value(), Err(FramingError::TooLong { max: 8 }));
    }

    #[test]
    fn incomplete_value_waits_for_more() {
        let mut s = JsonStreamSplitter::default();
        s.push(br#"   {"a":"#);
        assert_eq!(s.next_value(), Ok(None));
        assert_eq!(s.pending(), 5);
        s.push(br#"1}"#);
        assert_eq!(s.next_value().unwrap().unwrap(), br#"{"a":1}"#.to_vec());
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::from),
            "[\\\\\"{}\\[\\]]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-z\"{}]{1,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn round_trip_any_chunking(
            values in prop::collection::vec(arb_json(), 1..5),
            pretty in any::<bool>(),
            chunk in 1usize..17,
        ) {
            let values: Vec<Value> = values
                .into_iter()
                .map(|v| json!({"jsonrpc": "2.0", "id": 1, "result": v}))
                .collect();
            let mut wire = Vec::new();
            for v in &values {
                if pretty {
                    wire.extend(serde_json::to_vec_pretty(v).unwrap());
                    wire.push(b'\n');
                } else {
                    wire.extend(serde_json::to_vec(v).unwrap());
                }
            }
            let chunks: Vec<&[u8]> = wire.chunks(chunk).collect();
            prop_assert_eq!(split_all(&chunks), values);
        }
    }
}
