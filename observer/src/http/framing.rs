//! HTTP/1.x message framing of one direction's byte stream (RFC 9112 section 6): where each
//! message starts, from its head (parsed with `httparse`) and its body length (Content-Length,
//! chunked transfer coding, no body, or until the connection closes).
#![forbid(unsafe_code)]

/// A message head can be at most this long before the stream is declared broken.
pub const MAX_HEAD: usize = 64 * 1024;
/// A chunk-size line or a trailer line can be at most this long.
const MAX_LINE: usize = 4096;
const MAX_HEADERS: usize = 128;

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyMode {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (a response without Content-Length or chunked coding).
    UntilClose,
    /// The connection stops being HTTP (101 Switching Protocols, a successful CONNECT).
    Tunnel,
    /// A request that asks to leave HTTP (CONNECT, Upgrade): what follows it is not framed until
    /// the response says whether the connection switched ([`Framer::tunnel`]) or not ([`Framer::resume`]).
    Hold,
}

/// A parsed message head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Head {
    /// `upgrade`: CONNECT, or an `Upgrade` header: the connection may stop being HTTP.
    Request { method: super::Text, target: super::Text, body: BodyMode, upgrade: bool },
    /// `body` is what the headers say; the connection adjusts it for HEAD/CONNECT/1xx/204/304.
    Response { status: u16, body: BodyMode },
}

/// What framing found in the bytes it was fed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// A message head, with the time of the segment its first byte came in.
    Head(Head, u64),
    /// The bytes are not HTTP/1.x framing (what was expected at this point is in the text).
    Broken(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between messages: the next byte starts a head (empty lines before a request are ignored).
    Idle,
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data: how many of its bytes are still to come.
    ChunkEnd(u8),
    Trailers,
    UntilClose,
    Tunnel,
    Held,
    Broken,
}

/// Frames one direction. `is_response` selects which heads it expects.
#[derive(Debug)]
pub struct Framer {
    is_response: bool,
    state: State,
    buf: Vec<u8>,
    head_ts: u64,
    /// How much of `buf` the last parse of the head saw: the head is parsed again only when the
    /// new bytes may end it, or when it has doubled since (so a head arriving a byte per segment
    /// costs linear time, not quadratic), or at its bound.
    parsed_len: usize,
    /// Parses of heads so far (tests count them).
    #[cfg(test)]
    parses: usize,
}

fn body_from_headers(headers: &[httparse::Header<'_>]) -> Result<Option<BodyMode>, String> {
    let mut length = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked must be the final coding (RFC 9112 section 6.1); then it decides.
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.rsplit(',').next().is_some_and(|last| last.trim() == "chunked") {
                return Ok(Some(BodyMode::Chunked));
            }
            return Ok(Some(BodyMode::UntilClose));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).map_err(|_| "a Content-Length that is not text".to_owned())?.trim_matches([' ', '\t']);
            // 1*DIGIT (RFC 9110 section 8.6): no sign, no other whitespace, at most u64.
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("Content-Length {v:?} is not a number"));
            }
            let n: u64 = v.parse().map_err(|_| format!("Content-Length {v:?} is beyond 64 bits"))?;
            if length.is_some_and(|l| l != n) {
                return Err("two different Content-Length values".into());
            }
            length = Some(n);
        }
    }
    Ok(length.map(BodyMode::Length))
}

impl Framer {
    pub fn new(is_response: bool) -> Self {
        Self {
            is_response,
            state: State::Idle,
            buf: Vec::new(),
            head_ts: 0,
            parsed_len: 0,
            #[cfg(test)]
            parses: 0,
        }
    }

    pub fn is_response(&self) -> bool {
        self.is_response
    }

    /// Nothing framed yet, nothing buffered.
    pub fn is_fresh(&self) -> bool {
        self.state == State::Idle && self.buf.is_empty()
    }

    /// Between messages (nothing of a message is buffered): a place to start framing anew.
    pub fn is_idle(&self) -> bool {
        self.state == State::Idle
    }

    pub fn is_broken(&self) -> bool {
        self.state == State::Broken
    }

    /// Starts over at a message boundary (after a resynchronisation).
    pub fn reset(&mut self) {
        self.state = State::Idle;
        self.buf.clear();
    }

    /// Bytes of a head, chunk-size line or trailer kept until it is complete.
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes of body (or chunk data) still to come that framing does not need to see.
    pub fn skippable(&self) -> u64 {
        match self.state {
            State::Body(n) | State::ChunkData(n) => n,
            _ => 0,
        }
    }

    /// Accounts for `n` bytes the stream skipped (at most [`Self::skippable`]).
    pub fn skipped(&mut self, n: u64) {
        match self.state {
            State::Body(r) => self.state = if r <= n { State::Idle } else { State::Body(r - n) },
            State::ChunkData(r) => self.state = if r <= n { State::ChunkEnd(2) } else { State::ChunkData(r - n) },
            _ => {}
        }
    }

    /// The connection switched protocols: nothing more to frame in this direction.
    pub fn tunnel(&mut self) {
        self.state = State::Tunnel;
        self.buf.clear();
    }

    /// An upgrade was refused: framing goes on after the held request.
    pub fn resume(&mut self) {
        if self.state == State::Held {
            self.state = State::Idle;
        }
    }

    /// The connection closed: a message delimited by the close is complete.
    pub fn closed(&mut self) {
        if self.state == State::UntilClose {
            self.state = State::Idle;
        }
    }

    /// Frames `data` (in order), calling `decide` with each head to learn its body's framing (the
    /// response to a HEAD request has none, whatever its headers say).
    pub fn feed(&mut self, mut data: &[u8], ts_ns: u64, decide: &mut dyn FnMut(&Head) -> BodyMode) -> Vec<Found> {
        let mut found = Vec::new();
        while !data.is_empty() {
            match self.state {
                State::Broken | State::Tunnel | State::UntilClose | State::Held => return found,
                State::Idle => {
                    // RFC 9112 section 2.2: ignore empty lines before a request line.
                    if !self.is_response && (data[0] == b'\r' || data[0] == b'\n') {
                        data = &data[1..];
                        continue;
                    }
                    self.state = State::Head;
                    self.head_ts = ts_ns;
                    self.buf.clear();
                    self.parsed_len = 0;
                }
                State::Head => {
                    let take = data.len().min(MAX_HEAD + 4 - self.buf.len().min(MAX_HEAD + 4));
                    let before = self.buf.len();
                    self.buf.extend_from_slice(&data[..take]);
                    // A head ends at an empty line (`\n\n`, `\n\r\n`): only bytes that may
                    // complete one are worth a parse, besides the first ones (they tell
                    // garbage early) and the doubling that keeps errors found soon.
                    let new = &self.buf[before.saturating_sub(2)..];
                    let may_end = new.windows(2).any(|w| w == b"\n\n") || new.windows(3).any(|w| w == b"\n\r\n");
                    let due = before == 0 || may_end || self.buf.len() >= 2 * self.parsed_len || self.buf.len() >= MAX_HEAD;
                    let parsed = if due {
                        self.parsed_len = self.buf.len();
                        #[cfg(test)]
                        {
                            self.parses += 1;
                        }
                        self.parse_head()
                    } else {
                        Ok(None)
                    };
                    match parsed {
                        Ok(None) => {
                            if self.buf.len() >= MAX_HEAD {
                                self.state = State::Broken;
                                found.push(Found::Broken(format!("a message head longer than {MAX_HEAD} bytes")));
                                return found;
                            }
                            data = &data[take..];
                        }
                        Ok(Some((head, len))) => {
                            let used = len - before;
                            data = &data[used..];
                            let mode = decide(&head);
                            found.push(Found::Head(head, self.head_ts));
                            self.buf.clear();
                            self.state = match mode {
                                BodyMode::None | BodyMode::Length(0) => State::Idle,
                                BodyMode::Length(n) => State::Body(n),
                                BodyMode::Chunked => State::ChunkSize,
                                BodyMode::UntilClose => State::UntilClose,
                                BodyMode::Tunnel => State::Tunnel,
                                BodyMode::Hold => State::Held,
                            };
                        }
                        Err(e) => {
                            self.state = State::Broken;
                            found.push(Found::Broken(e));
                            return found;
                        }
                    }
                }
                State::Body(n) | State::ChunkData(n) => {
                    let take = (data.len() as u64).min(n);
                    data = &data[take as usize..];
                    self.skipped(take);
                }
                State::ChunkEnd(left) => {
                    let expect = if left == 2 { b'\r' } else { b'\n' };
                    if data[0] != expect {
                        self.state = State::Broken;
                        found.push(Found::Broken("CRLF after chunk data".into()));
                        return found;
                    }
                    data = &data[1..];
                    self.state = if left == 2 { State::ChunkEnd(1) } else { State::ChunkSize };
                }
                State::ChunkSize | State::Trailers => {
                    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                        // At most one byte past the bound is kept: enough to know it was crossed.
                        let room = (MAX_LINE + 1).saturating_sub(self.buf.len());
                        self.buf.extend_from_slice(&data[..data.len().min(room)]);
                        if self.buf.len() > MAX_LINE {
                            self.state = State::Broken;
                            found.push(Found::Broken(format!("a chunk-size or trailer line longer than {MAX_LINE} bytes")));
                        }
                        return found;
                    };
                    self.buf.extend_from_slice(&data[..nl]);
                    data = &data[nl + 1..];
                    let line = std::mem::take(&mut self.buf);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    if self.state == State::Trailers {
                        if line.is_empty() {
                            self.state = State::Idle;
                        }
                        continue;
                    }
                    // chunk-size [ chunk-ext ] (RFC 9112 section 7.1): 1*HEXDIG, whitespace around it
                    // tolerated (as the kernel's framer does); no sign, which `from_str_radix` takes.
                    let hex = line.split(|&b| b == b';').next().unwrap_or_default();
                    let hex = std::str::from_utf8(hex).unwrap_or("").trim_matches([' ', '\t', '\r']);
                    let digits = hex.bytes().all(|b| b.is_ascii_hexdigit());
                    match (digits, u64::from_str_radix(hex, 16)) {
                        (true, Ok(0)) => self.state = State::Trailers,
                        (true, Ok(n)) => self.state = State::ChunkData(n),
                        _ => {
                            self.state = State::Broken;
                            found.push(Found::Broken(format!("chunk size {hex:?} is not hexadecimal")));
                            return found;
                        }
                    }
                }
            }
        }
        found
    }

    /// A complete head in `buf`: the head and its length in bytes.
    fn parse_head(&self) -> Result<Option<(Head, usize)>, String> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        if self.is_response {
            let mut r = httparse::Response::new(&mut headers);
            match r.parse(&self.buf) {
                Ok(httparse::Status::Partial) => Ok(None),
                Ok(httparse::Status::Complete(len)) => {
                    let status = r.code.unwrap_or(0);
                    if !(100..=599).contains(&status) {
                        return Err(format!("status code {status} is outside 100–599"));
                    }
                    let body = body_from_headers(r.headers)?.unwrap_or(BodyMode::UntilClose);
                    Ok(Some((Head::Response { status, body }, len)))
                }
                Err(e) => Err(format!("expected a status line and headers: {e}")),
            }
        } else {
            let mut r = httparse::Request::new(&mut headers);
            match r.parse(&self.buf) {
                Ok(httparse::Status::Partial) => Ok(None),
                Ok(httparse::Status::Complete(len)) => {
                    let method = super::method_text(r.method.unwrap_or(""));
                    let path = r.path.unwrap_or("");
                    let target: super::Text = match path.char_indices().nth(256) {
                        Some((cut, _)) => path[..cut].into(),
                        None => path.into(),
                    };
                    // A request without Content-Length or chunked coding has no body.
                    let body = body_from_headers(r.headers)?.unwrap_or(BodyMode::None);
                    let upgrade = &*method == "CONNECT" || r.headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade"));
                    Ok(Some((Head::Request { method, target, body, upgrade }, len)))
                }
                Err(e) => Err(format!("expected a request line and headers: {e}")),
            }
        }
    }
}

/// The body of a response as RFC 9110/9112 frame it, given the request it answers.
pub fn response_body(status: u16, headers_say: BodyMode, request_method: Option<&str>) -> BodyMode {
    match (status, request_method) {
        (101, _) => BodyMode::Tunnel,
        (200..=299, Some("CONNECT")) => BodyMode::Tunnel,
        (100..=199, _) | (204, _) | (304, _) => BodyMode::None,
        (_, Some("HEAD")) => BodyMode::None,
        _ => headers_say,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(f: &mut Framer, data: &[u8]) -> Vec<Found> {
        f.feed(data, 7, &mut |h| match h {
            Head::Request { body, .. } => *body,
            Head::Response { status, body } => response_body(*status, *body, None),
        })
    }

    #[test]
    fn a_head_a_byte_at_a_time_is_parsed_a_bounded_number_of_times() {
        let mut head = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..50 {
            head += &format!("X-Field-{i}: {}\r\n", "v".repeat(600));
        }
        head += "Content-Length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\n";
        let mut whole = Framer::new(true);
        let want = statuses(&heads(&mut whole, head.as_bytes()));
        let mut f = Framer::new(true);
        let mut got = Vec::new();
        for b in head.as_bytes() {
            got.extend(statuses(&heads(&mut f, std::slice::from_ref(b))));
        }
        assert_eq!((got, want), (vec![200, 204], vec![200, 204]));
        // About 30 KB a byte at a time: once per doubling and once at each end, not per byte.
        assert!(f.parses <= 40, "{} parses", f.parses);
    }

    fn statuses(found: &[Found]) -> Vec<u16> {
        found.iter().filter_map(|f| if let Found::Head(Head::Response { status, .. }, _) = f { Some(*status) } else { None }).collect()
    }

    #[test]
    fn strict_lengths_and_status_codes() {
        for bad in ["+5", "-5", "5 5", "0x5", "", "18446744073709551616"] {
            let mut f = Framer::new(true);
            let found = heads(&mut f, format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n").as_bytes());
            assert!(matches!(found.as_slice(), [Found::Broken(_)]), "Content-Length {bad:?}: {found:?}");
        }
        let mut f = Framer::new(true);
        assert_eq!(statuses(&heads(&mut f, b"HTTP/1.1 200 OK\r\nContent-Length: \t007 \r\n\r\n1234567")), vec![200]);
        assert!(f.is_idle());
        for bad in [b"HTTP/1.1 600 Nope\r\n\r\n".as_slice(), b"HTTP/1.1 099 Nope\r\n\r\n"] {
            let mut f = Framer::new(true);
            assert!(matches!(heads(&mut f, bad).as_slice(), [Found::Broken(_)]), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_body_that_looks_like_a_response_is_not_one() {
        let mut f = Framer::new(true);
        let body = b"HTTP/1.1 500 Internal Server Error\r\n\r\n";
        let mut msg = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        msg.extend_from_slice(body);
        msg.extend_from_slice(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(statuses(&heads(&mut f, &msg)), vec![200, 404]);
        assert!(f.is_idle());
    }

    #[test]
    fn heads_split_anywhere_across_segments() {
        let msg = b"HTTP/1.1 301 Moved\r\nLocation: /x\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 204 No Content\r\n\r\n";
        for cut in 1..msg.len() {
            let mut f = Framer::new(true);
            let mut found = heads(&mut f, &msg[..cut]);
            found.extend(heads(&mut f, &msg[cut..]));
            assert_eq!(statuses(&found), vec![301, 204], "cut at {cut}");
        }
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers() {
        let mut f = Framer::new(true);
        let msg = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nHTTP/\r\n10\r\n1.1 200 OK\r\n\r\n\r\n\r\n0\r\nX-Trailer: y\r\n\r\nHTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(statuses(&heads(&mut f, msg)), vec![200, 502]);
        assert!(f.is_idle());
    }

    #[test]
    fn responses_without_bodies() {
        assert_eq!(response_body(204, BodyMode::Length(10), Some("GET")), BodyMode::None);
        assert_eq!(response_body(304, BodyMode::UntilClose, Some("GET")), BodyMode::None);
        assert_eq!(response_body(200, BodyMode::Length(10), Some("HEAD")), BodyMode::None);
        assert_eq!(response_body(100, BodyMode::UntilClose, Some("POST")), BodyMode::None);
        assert_eq!(response_body(101, BodyMode::None, Some("GET")), BodyMode::Tunnel);
        assert_eq!(response_body(200, BodyMode::None, Some("CONNECT")), BodyMode::Tunnel);
        assert_eq!(response_body(200, BodyMode::Length(3), Some("GET")), BodyMode::Length(3));
    }

    #[test]
    fn pipelined_requests_in_one_write() {
        let mut f = Framer::new(false);
        let found =
            heads(&mut f, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nGET HEAD /c HTTP/1.1\r\nHost: h\r\n\r\n");
        let methods: Vec<&str> =
            found.iter().filter_map(|f| if let Found::Head(Head::Request { method, .. }, _) = f { Some(&**method) } else { None }).collect();
        assert_eq!(methods, vec!["GET", "POST", "HEAD"]);
    }

    #[test]
    fn garbage_breaks_the_stream() {
        let mut f = Framer::new(true);
        let found = heads(&mut f, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03");
        assert!(matches!(found.as_slice(), [Found::Broken(_)]));
        assert!(f.is_broken());
    }

    #[test]
    fn skipping_a_body_keeps_the_framing() {
        let mut f = Framer::new(true);
        assert_eq!(statuses(&heads(&mut f, b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nabc")), vec![200]);
        assert_eq!(f.skippable(), 999_997);
        f.skipped(999_997);
        assert!(f.is_idle());
        assert_eq!(statuses(&heads(&mut f, b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")), vec![503]);
    }
}
