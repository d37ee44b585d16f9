//! curl as the client, reporting per transfer what it sent and received.
use std::net::{IpAddr, SocketAddr};

use crate::netns::Netns;

/// What curl reports about one transfer (`--write-out`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub http_code: u16,
    /// `%{size_request}`: bytes of the request sent (request line, headers, body).
    pub size_request: u64,
    /// `%{size_header}`: bytes of response headers received (status line included).
    pub size_header: u64,
    /// `%{size_download}`: bytes of the response body received.
    pub size_download: u64,
    /// `%{num_connects}`: new connections this transfer opened (0 when it reused one).
    pub num_connects: u32,
    /// The client's end of the connection.
    pub local: SocketAddr,
    /// The server's end of the connection.
    pub remote: SocketAddr,
}

impl Transfer {
    /// Response bytes on the wire: headers and body.
    pub fn response_bytes(&self) -> u64 {
        self.size_header + self.size_download
    }
}

const WRITE_OUT: &str = "%{http_code} %{size_request} %{size_header} %{size_download} %{num_connects} %{local_ip} %{local_port} %{remote_ip} %{remote_port}\\n";

/// Runs one curl in `ns` fetching `urls` in order (bodies discarded) with `extra` arguments
/// (e.g. `-H 'Connection: close'`), and returns one [`Transfer`] per URL. One invocation reuses one
/// keep-alive connection for URLs on the same server unless told otherwise. Globbing is off, so
/// `http://[2001:db8:1::1]/` works as is. Panics if curl fails (a transfer error, not an HTTP
/// error status).
pub fn curl(ns: &Netns, urls: &[String], extra: &[&str]) -> Vec<Transfer> {
    let mut args: Vec<String> = ["--silent", "--show-error", "--globoff", "--max-time", "20", "--write-out", WRITE_OUT].iter().map(|s| s.to_string()).collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    for url in urls {
        args.extend(["--output".into(), "/dev/null".into(), url.clone()]);
    }
    let out = ns.run("curl", &args);
    let transfers: Vec<Transfer> = out.lines().map(|l| parse(l).unwrap_or_else(|| panic!("cannot parse curl's --write-out line {l:?}"))).collect();
    assert_eq!(transfers.len(), urls.len(), "curl reported {} transfers for {} URLs:\n{out}", transfers.len(), urls.len());
    transfers
}

fn parse(line: &str) -> Option<Transfer> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let [code, req, hdr, dl, conns, lip, lport, rip, rport] = f[..] else { return None };
    Some(Transfer {
        http_code: code.parse().ok()?,
        size_request: req.parse().ok()?,
        size_header: hdr.parse().ok()?,
        size_download: dl.parse().ok()?,
        num_connects: conns.parse().ok()?,
        local: SocketAddr::new(lip.parse::<IpAddr>().ok()?, lport.parse().ok()?),
        remote: SocketAddr::new(rip.parse::<IpAddr>().ok()?, rport.parse().ok()?),
    })
}
