//! Newline-delimited JSON streams (`GET /v1/watch`, `GET
//! /v1/host/assignments?watch=1`): lines are reassembled across chunk
//! boundaries, blank lines (keep-alives) are skipped, and one line may not
//! exceed [`MAX_LINE`] so a broken server cannot exhaust memory.

use std::collections::VecDeque;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;

use super::error::ClientError;

/// The longest line accepted: well above the 1 MiB request limit plus
/// status.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// A stream of decoded lines; it ends when the server closes the response.
pub type NdjsonStream<T> = Pin<Box<dyn Stream<Item = Result<T, ClientError>> + Send>>;

/// Cuts a byte stream into lines, whatever the chunk boundaries.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max_line: usize,
}

/// A line longer than the splitter's limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a line of the stream is longer than {0} bytes")]
pub struct LineTooLong(pub usize);

impl Default for LineSplitter {
    fn default() -> Self {
        LineSplitter::new(MAX_LINE)
    }
}

impl LineSplitter {
    pub fn new(max_line: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            max_line,
        }
    }

    /// Adds a chunk; returns the lines it completed, without their `\n` (or
    /// `\r\n`), blank ones left out.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, LineTooLong> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            let (head, tail) = rest.split_at(pos);
            rest = &tail[1..];
            if self.buf.len() + head.len() > self.max_line {
                return Err(LineTooLong(self.max_line));
            }
            let mut line = std::mem::take(&mut self.buf);
            line.extend_from_slice(head);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                lines.push(line);
            }
        }
        if self.buf.len() + rest.len() > self.max_line {
            return Err(LineTooLong(self.max_line));
        }
        self.buf.extend_from_slice(rest);
        Ok(lines)
    }

    /// The last line when the stream ended without a final `\n`.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let line = std::mem::take(&mut self.buf);
        (!line.iter().all(u8::is_ascii_whitespace)).then_some(line)
    }
}

struct State<S> {
    body: S,
    splitter: LineSplitter,
    pending: VecDeque<Vec<u8>>,
    done: bool,
    method: String,
    url: String,
}

/// Decodes each line of a response body as a `T`. A line that does not
/// decode yields an error and the stream goes on; a transport error or an
/// over-long line ends it.
pub(crate) fn decode_lines<T, S>(body: S, method: &str, url: &str) -> NdjsonStream<T>
where
    T: DeserializeOwned + Send + 'static,
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Send + Unpin + 'static,
{
    let state = State {
        body,
        splitter: LineSplitter::default(),
        pending: VecDeque::new(),
        done: false,
        method: method.to_string(),
        url: url.to_string(),
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(line) = st.pending.pop_front() {
                let item = serde_json::from_slice::<T>(&line).map_err(|e| {
                    ClientError::decode(format!("a line of {} {}", st.method, st.url), e)
                });
                return Some((item, st));
            }
            if st.done {
                return None;
            }
            match st.body.next().await {
                Some(Ok(chunk)) => match st.splitter.push(&chunk) {
                    Ok(lines) => st.pending.extend(lines),
                    Err(e) => {
                        st.done = true;
                        let err = ClientError::decode(format!("{} {}", st.method, st.url), e);
                        return Some((Err(err), st));
                    }
                },
                Some(Err(source)) => {
                    st.done = true;
                    let err = ClientError::Transport {
                        method: st.method.clone(),
                        url: st.url.clone(),
                        source: source.without_url(),
                    };
                    return Some((Err(err), st));
                }
                None => {
                    st.done = true;
                    st.pending.extend(st.splitter.finish());
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.push(c).unwrap());
        }
        out.extend(s.finish());
        out.into_iter()
            .map(|l| String::from_utf8(l).unwrap())
            .collect()
    }

    #[test]
    fn lines_are_reassembled_across_chunks() {
        assert_eq!(
            split_all(&[b"{\"a\"", b":1}\n{\"b\":2}\n{", b"\"c\":3}", b"\n"]),
            ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]
        );
    }

    #[test]
    fn every_split_point_gives_the_same_lines() {
        let text = b"{\"x\":1}\r\n\n{\"y\":\"\xc3\xa9\"}\n  \n{\"z\":3}";
        let want = ["{\"x\":1}", "{\"y\":\"\u{e9}\"}", "{\"z\":3}"];
        for i in 0..=text.len() {
            for j in i..=text.len() {
                let got = split_all(&[&text[..i], &text[i..j], &text[j..]]);
                assert_eq!(got, want, "split at {i} and {j}");
            }
        }
    }

    #[test]
    fn a_line_over_the_limit_is_refused() {
        let mut s = LineSplitter::new(8);
        assert_eq!(s.push(b"12345").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(s.push(b"6789"), Err(LineTooLong(8)));
        let mut s = LineSplitter::new(8);
        assert_eq!(s.push(b"12345678\n").unwrap(), vec![b"12345678".to_vec()]);
    }
}
