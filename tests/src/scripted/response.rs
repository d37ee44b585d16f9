//! HTTP/1.x responses as a raw client received them, framed as RFC 9112 says.
use std::io::{self, Read};

use super::find;

/// One HTTP response as a client received it.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads HTTP/1.x responses off a stream, framing each as RFC 9112 says: no body for 1xx, 204,
/// 304 and answers to HEAD; Content-Length; chunked (extensions and trailers); or until close.
pub struct ResponseReader<R> {
    pub inner: R,
    buf: Vec<u8>,
}

impl<R: Read> ResponseReader<R> {
    pub fn new(inner: R) -> Self {
        ResponseReader { inner, buf: Vec::new() }
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.inner.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            self.fill()?;
        }
    }

    fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    fn fields(&mut self) -> io::Result<Vec<(String, String)>> {
        let mut fields = Vec::new();
        loop {
            let l = self.line()?;
            if l.is_empty() {
                return Ok(fields);
            }
            let (n, v) = l.split_once(':').ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad header line {l:?}")))?;
            fields.push((n.to_owned(), v.trim().to_owned()));
        }
    }

    /// Reads one response (interim or final); `head` says the request was HEAD.
    pub fn read(&mut self, head: bool) -> io::Result<Response> {
        let r = self.read_head()?;
        if head || r.status < 200 || r.status == 204 || r.status == 304 {
            return Ok(r);
        }
        self.read_body(r)
    }

    /// Reads a response's status line and header fields, and no body (e.g. the answer to a
    /// CONNECT).
    pub fn read_head(&mut self) -> io::Result<Response> {
        let status_line = self.line()?;
        let status = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|s| s.get(2..5))
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {status_line:?}")))?;
        let headers = self.fields()?;
        Ok(Response { status, headers, body: Vec::new(), trailers: Vec::new() })
    }

    fn read_body(&mut self, mut r: Response) -> io::Result<Response> {
        if r.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            loop {
                let size_line = self.line()?;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size line {size_line:?}")))?;
                if size == 0 {
                    r.trailers = self.fields()?;
                    return Ok(r);
                }
                let data = self.take(size + 2)?;
                r.body.extend_from_slice(&data[..size]);
            }
        } else if let Some(n) = r.header("content-length") {
            let n: usize = n.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad Content-Length {n:?}")))?;
            r.body = self.take(n)?;
        } else {
            r.body = std::mem::take(&mut self.buf);
            self.inner.read_to_end(&mut r.body)?;
        }
        Ok(r)
    }

    /// Reads the interim responses and the final one that answer one request, in order.
    pub fn read_exchange(&mut self, head: bool) -> io::Result<Vec<Response>> {
        let mut all = Vec::new();
        loop {
            let r = self.read(head)?;
            let done = r.status >= 200 || r.status == 101;
            all.push(r);
            if done {
                return Ok(all);
            }
        }
    }

    /// Bytes received and not consumed by a response yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }
}
