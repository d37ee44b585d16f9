//! curl runs of several operations on one connection cache, each with its own options, that
//! report every status line curl received (interim ones included).
use std::{
    net::{IpAddr, SocketAddr},
    process::ExitStatus,
    time::Duration,
};

use crate::{curl::Transfer, netns::Netns};

/// One operation of [`curl_each`]: a URL and the options that apply to it alone (`-I`,
/// `--data-binary @file`, `-H ...`).
#[derive(Clone, Debug)]
pub struct CurlOp {
    pub url: String,
    pub args: Vec<String>,
}

impl CurlOp {
    pub fn get(url: impl Into<String>) -> CurlOp {
        CurlOp { url: url.into(), args: Vec::new() }
    }

    /// `curl -I`: a HEAD request, reading no body.
    pub fn head(url: impl Into<String>) -> CurlOp {
        CurlOp { url: url.into(), args: vec!["--head".into()] }
    }

    /// Adds options for this URL.
    pub fn with(mut self, args: &[&str]) -> CurlOp {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The request method curl sends for this operation.
    pub fn method(&self) -> &str {
        if self.args.iter().any(|a| a == "--head" || a == "-I") {
            "HEAD"
        } else if let Some(i) = self.args.iter().position(|a| a == "--request" || a == "-X") {
            &self.args[i + 1]
        } else if self.args.iter().any(|a| a.starts_with("--data")) {
            "POST"
        } else {
            "GET"
        }
    }
}

/// What one [`curl_each`] run reports.
#[derive(Clone, Debug)]
pub struct CurlRun {
    /// One per operation (`http_code` 0 for a transfer that got no response).
    pub transfers: Vec<Transfer>,
    /// Per operation: seconds from the start of the transfer until its connection was
    /// established (`%{time_connect}`: before the request was sent; about 0 on a reused
    /// connection) and until the first response byte arrived (`%{time_starttransfer}`).
    pub times: Vec<(f64, f64)>,
    /// Every status line curl received, interim ones included, in order (from `--verbose`).
    pub status_lines: Vec<u16>,
    pub status: ExitStatus,
    pub stderr: String,
}

const WRITE_OUT: &str = "%{http_code} %{size_request} %{size_header} %{size_download} %{num_connects} %{local_ip} %{local_port} %{remote_ip} %{remote_port} %{time_connect} %{time_starttransfer}\\n";

/// Runs one curl in `ns` performing `ops` in order (`--next` between them: one connection cache,
/// so a keep-alive connection is reused across operations), bodies discarded, each transfer
/// bounded by `max_time`. Does not fail on transfer errors: the caller reads `status`.
pub fn curl_each(ns: &Netns, ops: &[CurlOp], max_time: Duration) -> CurlRun {
    let mut args: Vec<String> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            args.push("--next".into());
        }
        args.extend(["--silent", "--show-error", "--verbose", "--globoff", "--max-time"].iter().map(|s| s.to_string()));
        args.push(format!("{}", max_time.as_secs_f64()));
        args.extend(["--write-out".into(), WRITE_OUT.into(), "--output".into(), "/dev/null".into()]);
        args.extend(op.args.iter().cloned());
        args.push(op.url.clone());
    }
    let out = ns.exec("curl", &args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut transfers = Vec::new();
    let mut times = Vec::new();
    for l in stdout.lines() {
        let (t, pre, start) = parse_write_out(l).unwrap_or_else(|| panic!("cannot parse curl's --write-out line {l:?}\nstderr:\n{stderr}"));
        transfers.push(t);
        times.push((pre, start));
    }
    let status_lines = stderr.lines().filter_map(|l| l.strip_prefix("< HTTP/1.")).filter_map(|s| s.get(2..5).and_then(|c| c.parse().ok())).collect();
    CurlRun { transfers, times, status_lines, status: out.status, stderr }
}

fn parse_write_out(line: &str) -> Option<(Transfer, f64, f64)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let [code, req, hdr, dl, conns, lip, lport, rip, rport, pre, start] = f[..] else { return None };
    let ip = |s: &str| s.parse::<IpAddr>().ok();
    let t = Transfer {
        http_code: code.parse().ok()?,
        size_request: req.parse().ok()?,
        size_header: hdr.parse().ok()?,
        size_download: dl.parse().ok()?,
        num_connects: conns.parse().ok()?,
        local: SocketAddr::new(ip(lip)?, lport.parse().ok()?),
        remote: SocketAddr::new(ip(rip)?, rport.parse().ok()?),
    };
    Some((t, pre.parse().ok()?, start.parse().ok()?))
}
