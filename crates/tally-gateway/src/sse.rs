//! Server-sent events framing (the part of the WHATWG format providers use): bytes in,
//! each event's `data` out (several `data:` lines joined by newlines), comments and other
//! fields skipped, CRLF or LF line ends.

#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    data: Option<String>,
}

/// A single event larger than this ends the stream as malformed.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

impl SseDecoder {
    /// Feeds bytes; returns the events they complete. `Err` when an event is too large.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos;
            let mut line = &self.buf[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.is_empty() {
                if let Some(d) = self.data.take() {
                    out.push(d);
                }
            } else if let Some(rest) = line.strip_prefix(b"data:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                let text = String::from_utf8_lossy(rest);
                match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(&text);
                    }
                    None => self.data = Some(text.into_owned()),
                }
            }
            start = end + 1;
        }
        self.buf.drain(..start);
        let pending = self.buf.len() + self.data.as_ref().map_or(0, String::len);
        if pending > MAX_EVENT_BYTES {
            return Err(format!(
                "a stream event is larger than {MAX_EVENT_BYTES} bytes"
            ));
        }
        Ok(out)
    }

    /// The last event when the stream ends without its blank line.
    pub fn finish(&mut self) -> Option<String> {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            let _ = self.feed(&[rest.as_slice(), b"\n"].concat());
        }
        self.data.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_and_line_ends() {
        let mut d = SseDecoder::default();
        assert!(d.feed(b"event: x\r\ndata: {\"a\"").unwrap().is_empty());
        assert_eq!(
            d.feed(b":1}\r\n\r\n: comment\n\ndata: [DONE]\n\n").unwrap(),
            ["{\"a\":1}", "[DONE]"]
        );
        assert_eq!(d.feed(b"data: a\ndata: b\n\n").unwrap(), ["a\nb"]);
        d.feed(b"data: tail").unwrap();
        assert_eq!(d.finish().as_deref(), Some("tail"));
    }
}
