//! Scripted peers, for what curl and nginx cannot do: raw TCP servers that answer by a script
//! (delays, hand-made chunked responses, interim responses, echo: [`server`]), raw clients
//! (pipelining, split writes, resets: here), an HTTP/1.x response reader that is the ground truth of
//! what a raw client received ([`response`]), and curl runs with per-URL options that report every
//! status line curl received ([`curl_run`]).
//!
//! Sockets are created inside a namespace ([`Netns::enter`]) and stay in it whichever thread uses
//! them afterwards, so servers run on ordinary threads and clients are driven from the test's own.
use std::{
    io::{self, Read},
    net::{Shutdown, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

use crate::netns::Netns;

pub mod curl_run;
pub mod response;
pub mod server;

pub use curl_run::{curl_each, CurlOp, CurlRun};
pub use response::{Response, ResponseReader};
pub use server::{Peer, Request, ScriptedServer, Served};

/// How long a scripted peer waits for its counterpart before it gives up.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(30);

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A TCP connection from inside `ns` to `server`: Nagle off (each write leaves at once); connecting,
/// reads and writes bounded by [`PEER_TIMEOUT`]. Panics if it cannot connect.
pub fn connect(ns: &Netns, server: SocketAddr) -> TcpStream {
    let s = ns
        .enter(move || TcpStream::connect_timeout(&server, PEER_TIMEOUT))
        .and_then(|r| r)
        .unwrap_or_else(|e| panic!("connecting to {server} from {}: {e}", ns.name()));
    s.set_nodelay(true).expect("TCP_NODELAY");
    s.set_read_timeout(Some(PEER_TIMEOUT)).expect("a read timeout");
    s.set_write_timeout(Some(PEER_TIMEOUT)).expect("a write timeout");
    s
}

/// The kernel's `TCP_INFO` of a socket.
pub fn tcp_info(s: &TcpStream) -> libc::tcp_info {
    // SAFETY: tcp_info is plain old data; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, &mut info as *mut _ as *mut libc::c_void, &mut len);
        assert_eq!(rc, 0, "getsockopt(TCP_INFO): {}", io::Error::last_os_error());
        info
    }
}

/// Data segments this socket has sent, each once: `tcpi_data_segs_out` less the retransmitted
/// ones (`tcpi_total_retrans`), so that a tail loss probe on a loaded machine does not count.
pub fn data_segments_out(s: &TcpStream) -> u32 {
    let i = tcp_info(s);
    i.tcpi_data_segs_out - i.tcpi_total_retrans
}

/// Closes `s` with a reset (SO_LINGER with a zero timeout): what an aborting client does.
pub fn close_with_reset(s: TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt(SO_LINGER): {}", io::Error::last_os_error());
    drop(s);
}

/// Shuts down the writing half and reads until the server closes: returns what it sent.
pub fn finish(mut s: TcpStream) -> io::Result<Vec<u8>> {
    s.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    Ok(rest)
}
