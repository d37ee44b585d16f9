//! Raw TCP endpoints inside a namespace, for scenarios curl cannot play: a client that sends half a
//! request and aborts with a reset, a server that answers a connection with a reset, a connection
//! held open while the test reads the kernel's own view of it (`ss -tin`).
//!
//! Sockets are created on a thread that joined the namespace ([`Netns::enter`]) and stay in that
//! namespace whichever thread uses them afterwards.
use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

use crate::netns::Netns;

/// How long connecting and each read or write may take: a bound on failure only (a connect or a
/// read returns as soon as it can), sized for a loaded machine. A handshake whose SYN or SYN-ACK
/// is lost on purpose completes only at a retransmission: 1, 3, 7 or 15 s after the first one.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Connects from `ns` to `server`; the stream has [`TIMEOUT`] as read and write timeout.
pub fn connect(ns: &Netns, server: SocketAddr) -> io::Result<TcpStream> {
    let s = ns.enter(move || TcpStream::connect_timeout(&server, TIMEOUT))??;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    Ok(s)
}

/// Listens on `addr` inside `ns`.
pub fn listen(ns: &Netns, addr: SocketAddr) -> io::Result<TcpListener> {
    ns.enter(move || TcpListener::bind(addr))?
}

/// Sets `SO_LINGER` to on with a zero timeout: closing the socket then sends a reset instead of a
/// FIN and discards whatever was not sent.
pub fn set_linger_zero(s: &impl AsRawFd) -> io::Result<()> {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket descriptor and a pointer to a live `linger` of the size given.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Closes `s` with a reset (`SO_LINGER` 0): the abort of a client or server that gives up.
pub fn abort(s: TcpStream) -> io::Result<()> {
    set_linger_zero(&s)?;
    drop(s);
    Ok(())
}

/// Sends `request` (a complete HTTP/1.1 request) on `s` and reads one response framed by
/// Content-Length: returns the status code, the head's length and the body's length. The
/// connection stays open.
pub fn http_exchange(s: &mut TcpStream, request: &str) -> io::Result<(u16, usize, usize)> {
    s.write_all(request.as_bytes())?;
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(bad(format!("the connection ended inside the response head: {:?}", String::from_utf8_lossy(&buf))));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| bad(format!("bad status line in {head:?}")))?;
    let length: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.trim().eq_ignore_ascii_case("content-length")).map(|(_, v)| v.trim().to_owned()))
        .ok_or_else(|| bad(format!("no Content-Length in {head:?}")))?
        .parse()
        .map_err(|_| bad(format!("bad Content-Length in {head:?}")))?;
    let mut body = buf.len() - head_end;
    while body < length {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(bad(format!("the connection ended after {body} of {length} body bytes")));
        }
        body += n;
    }
    if body != length {
        return Err(bad(format!("{body} body bytes for a Content-Length of {length}")));
    }
    Ok((status, head_end, body))
}

/// The kernel's own view of one TCP socket, from `ss -tin` inside the namespace that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    /// `ss`'s state column (`ESTAB`, `FIN-WAIT-2`, ...).
    pub state: String,
    /// `tcpi_total_retrans`: segments this socket retransmitted over its life (the `TOTAL` of
    /// `retrans:X/TOTAL`; `ss` omits the field while it is 0).
    pub total_retrans: u64,
    /// The whole `ss` output, for messages.
    pub raw: String,
}

impl SocketInfo {
    /// A `name:value` field of the `ss -i` output (`bytes_retrans`, `bytes_acked`, `unacked`, ...),
    /// as a number; `None` when `ss` did not print it (it omits most counters while they are 0).
    pub fn counter(&self, name: &str) -> Option<u64> {
        let prefix = format!("{name}:");
        self.raw
            .split_whitespace()
            .find_map(|t| t.strip_prefix(prefix.as_str()))
            .map(|v| v.parse().unwrap_or_else(|_| panic!("cannot parse {name} in `ss` output:\n{}", self.raw)))
    }
}

/// `ss -tin` for the socket `local` → `remote` in `ns`: `None` when there is no such socket.
pub fn socket_info(ns: &Netns, local: SocketAddr, remote: SocketAddr) -> Option<SocketInfo> {
    let filter = format!("src {} and dst {}", ss_endpoint(local), ss_endpoint(remote));
    let raw = ns.run("ss", ["-H", "-t", "-i", "-n", "state", "all", filter.as_str()]);
    let mut tokens = raw.split_whitespace();
    let state = tokens.next()?.to_owned();
    let total_retrans = raw
        .split_whitespace()
        .find_map(|t| t.strip_prefix("retrans:"))
        .map(|v| v.split_once('/').map_or(v, |(_, total)| total).parse().unwrap_or_else(|_| panic!("cannot parse retrans in `ss` output:\n{raw}")))
        .unwrap_or(0);
    Some(SocketInfo { state, total_retrans, raw })
}

/// An endpoint as `ss` filters take it (`[2001:db8::1]:80` for IPv6).
fn ss_endpoint(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v4) => v4.to_string(),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    }
}

/// `TCP_REPAIR` values and queues (linux/tcp.h).
const TCP_REPAIR_ON: libc::c_int = 1;
const TCP_REPAIR_OFF_NO_WP: libc::c_int = -1;
const TCP_RECV_QUEUE: libc::c_int = 1;
const TCP_SEND_QUEUE: libc::c_int = 2;

fn set_int(s: &impl AsRawFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid socket descriptor and a pointer to a live c_int of the size given.
    let rc = unsafe { libc::setsockopt(s.as_raw_fd(), level, name, (&v as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn get_u32(s: &impl AsRawFd, level: libc::c_int, name: libc::c_int) -> io::Result<u32> {
    let mut v: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: a valid socket descriptor, a live u32 and its length.
    let rc = unsafe { libc::getsockopt(s.as_raw_fd(), level, name, (&mut v as *mut u32).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// The sequence number of the next byte `s` sends and of the next byte it expects, read in repair
/// mode (`TCP_REPAIR`, CAP_NET_ADMIN), which it leaves without sending anything. `s` must have
/// nothing unsent.
pub fn sequence_numbers(s: &TcpStream) -> io::Result<(u32, u32)> {
    set_int(s, libc::IPPROTO_TCP, libc::TCP_REPAIR, TCP_REPAIR_ON)?;
    let read = (|| {
        set_int(s, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
        let snd = get_u32(s, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ)?;
        set_int(s, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
        let rcv = get_u32(s, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ)?;
        Ok((snd, rcv))
    })();
    set_int(s, libc::IPPROTO_TCP, libc::TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)?;
    read
}

/// The Internet checksum (RFC 1071) of `parts`, concatenated.
fn checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut sum: u32 = bytes.chunks(2).map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends one TCP segment (ACK and PSH, `payload`) from `from` to `to` through a raw socket in
/// `ns`, outside any socket's control: a segment a TCP stack would never send, such as bytes
/// ahead of what the connection sent so far.
pub fn send_raw_segment(ns: &Netns, from: std::net::SocketAddrV4, to: std::net::SocketAddrV4, seq: u32, ack: u32, payload: &[u8]) -> io::Result<()> {
    send_raw(ns, from, to, seq, ack, RAW_ACK_PSH, payload, false)
}

/// TCP flags for [`send_raw`].
pub const RAW_SYN: u8 = 0x02;
pub const RAW_ACK_PSH: u8 = 0x18;

/// Sends one TCP segment with `flags` (header length 20) through a raw socket in `ns`; with
/// `corrupt`, its checksum is off by one (the receiving stack drops it: `TcpInCsumErrors`).
#[expect(clippy::too_many_arguments, reason = "a segment is its fields")]
pub fn send_raw(
    ns: &Netns,
    from: std::net::SocketAddrV4,
    to: std::net::SocketAddrV4,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
    corrupt: bool,
) -> io::Result<()> {
    let mut tcp = Vec::with_capacity(20 + payload.len());
    tcp.extend(from.port().to_be_bytes());
    tcp.extend(to.port().to_be_bytes());
    tcp.extend(seq.to_be_bytes());
    tcp.extend(ack.to_be_bytes());
    tcp.extend([5 << 4, flags]);
    tcp.extend(0xffffu16.to_be_bytes()); // window
    tcp.extend([0, 0, 0, 0]); // checksum, urgent pointer
    tcp.extend_from_slice(payload);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend(from.ip().octets());
    pseudo.extend(to.ip().octets());
    pseudo.extend([0, libc::IPPROTO_TCP as u8]);
    pseudo.extend((tcp.len() as u16).to_be_bytes());
    let sum = checksum(&[&pseudo, &tcp]);
    let sum = if corrupt { sum.wrapping_add(1) } else { sum };
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    let to_ip = *to.ip();
    ns.enter(move || -> io::Result<()> {
        // SAFETY: plain socket calls on a descriptor this closure owns and closes.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(to_ip.octets()) },
                sin_zero: [0; 8],
            };
            let rc = libc::sendto(
                fd,
                tcp.as_ptr().cast(),
                tcp.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            let err = io::Error::last_os_error();
            libc::close(fd);
            if rc != tcp.len() as isize {
                return Err(err);
            }
        }
        Ok(())
    })?
}

/// Sends `count` SYNs to `to` from spoofed sources: random hosts of `subnet` (a /24, e.g.
/// 198.18.1.0) and random ports, through a raw socket in `ns` that writes the IP header itself
/// (`IPPROTO_RAW`). Returns how many the socket took.
pub fn syn_flood(ns: &Netns, subnet: std::net::Ipv4Addr, to: std::net::SocketAddrV4, count: usize, seed: u64) -> io::Result<usize> {
    ns.enter(move || -> io::Result<usize> {
        // SAFETY: plain socket calls on a descriptor this closure owns and closes.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(to.ip().octets()) },
            sin_zero: [0; 8],
        };
        // xorshift: reproducible sources for one seed.
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut sent = 0;
        for _ in 0..count {
            let r = next();
            let mut src = subnet.octets();
            src[3] = 3 + (r % 250) as u8; // .3 to .252: never the client (.2) or the gateway (.1)
            let sport = 1024 + ((r >> 8) % 60_000) as u16;
            let seq = (r >> 24) as u32;
            let mut tcp = Vec::with_capacity(20);
            tcp.extend(sport.to_be_bytes());
            tcp.extend(to.port().to_be_bytes());
            tcp.extend(seq.to_be_bytes());
            tcp.extend([0, 0, 0, 0]);
            tcp.extend([5 << 4, 0x02]); // header length 20, SYN
            tcp.extend(0xffffu16.to_be_bytes());
            tcp.extend([0, 0, 0, 0]);
            let mut pseudo = Vec::with_capacity(12);
            pseudo.extend(src);
            pseudo.extend(to.ip().octets());
            pseudo.extend([0, libc::IPPROTO_TCP as u8]);
            pseudo.extend(20u16.to_be_bytes());
            let sum = checksum(&[&pseudo, &tcp]);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            let mut packet = Vec::with_capacity(40);
            packet.extend([0x45, 0]);
            packet.extend(40u16.to_be_bytes());
            packet.extend([0, 0, 0x40, 0, 64, libc::IPPROTO_TCP as u8, 0, 0]); // id (kernel), DF, TTL, checksum (kernel)
            packet.extend(src);
            packet.extend(to.ip().octets());
            packet.extend(tcp);
            // SAFETY: a valid buffer and address for the socket above.
            let rc = unsafe {
                libc::sendto(
                    fd,
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&dst as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if rc == packet.len() as isize {
                sent += 1;
            }
        }
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
        Ok(sent)
    })?
}
