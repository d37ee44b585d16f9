//! The NDJSON trace stream (`GET /api/v1/trace`), read directly off the socket.
use std::{
    io::{self, BufRead, BufReader, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use serde_json::Value;

use crate::{netns::Netns, observer::WAIT, poll};

/// `GET /api/v1/trace?QUERY` held open from inside the gateway namespace; a thread collects the
/// lines. Dropping it closes the connection (the daemon then drops the subscription).
pub struct TraceStream {
    pub status: u16,
    lines: Arc<Mutex<Vec<String>>>,
    socket: TcpStream,
    reader: Option<JoinHandle<()>>,
}

impl TraceStream {
    /// Opens the stream (HTTP/1.0: the body is delimited by the close, no chunked coding) and
    /// reads the status line and headers.
    pub fn open(ns: &Netns, api: SocketAddr, query: &str) -> io::Result<TraceStream> {
        // Bounds on failure only (the daemon answers at once unless the machine is loaded).
        let stream = ns.enter(move || TcpStream::connect_timeout(&api, WAIT))??;
        stream.set_read_timeout(Some(WAIT))?;
        write!(&stream, "GET /api/v1/trace?{query} HTTP/1.0\r\nHost: {api}\r\n\r\n")?;
        let mut r = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {line:?}")))?;
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                break;
            }
        }
        // From here on the reader blocks until lines come or the socket is shut down.
        stream.set_read_timeout(None)?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            let mut l = String::new();
            while let Ok(n) = r.read_line(&mut l) {
                if n == 0 {
                    break;
                }
                if l.ends_with('\n') {
                    sink.lock().expect("lines lock").push(l.trim_end().to_owned());
                    l.clear();
                }
            }
        });
        Ok(TraceStream { status, lines, socket: stream, reader: Some(reader) })
    }

    /// The lines received so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines lock").clone()
    }

    /// The lines received so far, parsed; panics on one that is not JSON.
    pub fn values(&self) -> Vec<Value> {
        self.lines().iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("trace line is not JSON ({e}): {l:?}"))).collect()
    }

    /// Polls until `done` holds for the lines received; panics with them after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let mut last = Vec::new();
        poll(timeout, Duration::from_millis(20), || {
            last = self.values();
            done(&last).then(|| last.clone())
        })
        .unwrap_or_else(|| panic!("waited {timeout:?} for {what}; the stream sent:\n{}", self.lines().join("\n")))
    }

    /// Closes the connection and returns every line received.
    pub fn close(mut self) -> Vec<Value> {
        self.shutdown();
        self.values()
    }

    fn shutdown(&mut self) {
        let _ = self.socket.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for TraceStream {
    fn drop(&mut self) {
        self.shutdown();
    }
}
