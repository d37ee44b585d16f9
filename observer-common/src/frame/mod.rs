//! HTTP/1.x message framing that runs inside the kernel programs (RFC 9112 sections 2, 6, 7):
//! per connection direction, where each message starts, counted at that boundary, and where the
//! next one starts, computed from the head (Content-Length, chunked transfer coding, no-body rules,
//! until close, tunnels). Body bytes are never copied: a body (or chunk data) that covers a segment
//! is skipped by arithmetic on sequence numbers, without loading a byte of it.
//!
//! The user-space framer (`observer::http::framing`, built on `httparse`) is the reference; a
//! differential test in the `observer` crate requires both to agree on every request and response.
//!
//! # Shape, for the BPF verifier
//! Only `core`, no allocation, no panicking paths (runtime indices are masked into fixed arrays),
//! no calls once compiled (no `memset`/`memcpy` either: see below), every helper
//! `#[inline(always)]`. The kernel copies packet bytes only into a fixed buffer, so the framer
//! loads [`BLOCK`]-sized blocks at the sequence number it needs, and none inside bodies.
//!
//! The work is cut into *turns* ([`ConnFrame::step`]): one byte outside bodies, or one jump over
//! body bytes. Between turns everything lives in the connection's [`ConnFrame`] and a per-CPU
//! [`Scan`], both map values, so a BPF program runs the turns with `bpf_loop` and the verifier
//! checks one turn, not every byte. (Measured on this project's kernel, 6.18: a bounded `for`
//! loop over the bytes of a single 64-byte block already exceeds the verifier's 1M instruction
//! limit, because it unrolls the loop and the scanner's paths multiply.)
//!
//! ```text
//! // conn: &mut ConnFrame (CONNS value), scan: &mut Scan (per-CPU array value)
//! let first = conn.begin_segment(scan, dir, seq, len, now);   // no load: retransmitted, body, gap
//! bpf_loop(MAX_STEPS, |_, ctx| match ctx.conn.step(ctx.scan, |off, block, n| load n bytes at payload + off) {
//!     Turn::Continue => 0,
//!     Turn::Event(e) => { emit e (request / status and latency / loss); 0 }
//!     Turn::Done => 1,
//! });
//! let last = conn.finish_segment(scan);                        // Lost(Budget) if turns ran out
//! ```
//! [`ConnFrame::feed_segment`] is the same with a bounded loop, for the host and the tests.
//! [`ConnFrame::skip`] alone (no load at all) tells whether a segment needs any of this.
//!
//! LLVM turns runs of zero stores (a zeroed array, a whole `zeroed()` struct assigned at run
//! time) into `memset` calls, which the BPF verifier rejects on the stack: create map values
//! from [`ConnFrame::zeroed`] in user space or by inserting from a scratch value.
//!
//! # Concurrency
//! The two directions of a connection may run on two CPUs at once (tc ingress and egress). Each
//! field has one writer: a direction's [`DirFrame`] is written by that direction only; in
//! [`Pending`], `tail` and the entries by the request direction, `head` and `switched` by the
//! response direction; in [`FrameCounts`], `requests` by the request direction, the rest by the
//! response direction (and [`ConnFrame::close`]). The request direction reads `head`/`switched`,
//! the response direction reads the entries and the other direction's phase. Whoever needs a
//! stronger guarantee than that (a spin lock) takes it around the calls.
//!
//! # Lost
//! Whatever the framer cannot follow exactly (not HTTP, a gap in the bytes, a head longer than
//! [`MAX_HEAD`], a bad length, a pipeline deeper than [`PENDING_DEPTH`], ...) makes the direction
//! [`Phase::Lost`] with a [`LostReason`]; it then consumes nothing until [`ConnFrame::sync`] or
//! [`ConnFrame::unsync`]: the caller hands the direction to the user-space framer.

mod chunked;
mod conn;
mod counts;
mod dir;
mod head;
mod phase;
mod skip;
mod syntax;
#[cfg(test)]
mod tests;
mod turn;

pub use conn::ConnFrame;
pub use counts::{FrameCounts, Pending};
pub use dir::DirFrame;
pub use phase::{LostReason, Phase, UnknownLostReason};
pub use turn::{Closed, Event, Scan, Step, Turn};

pub use crate::flags::ReqFlags;
// What the submodules share (each takes `use super::*`): the scanner's codes and the words of
// the rest of the crate it speaks.
use crate::direction::Direction;
use crate::http::{classify, seq_before, Method, Start, START_LEN};
use phase::*;
use syntax::*;

/// Bytes per block the caller loads (a power of two: indices into a block are masked with `BLOCK - 1`).
pub const BLOCK: usize = 64;
/// A suggested bound on turns ([`ConnFrame::step`]) per segment, e.g. `bpf_loop`'s `nr_loops`.
/// A turn is one byte outside bodies, or one jump over body bytes: a segment needs about
/// `bytes outside bodies + bodies` turns.
pub const MAX_STEPS: usize = 8192;
/// A message head (start line and header fields), or a trailer section, longer than this makes the
/// direction lost ([`LostReason::HeadTooLong`]).
pub const MAX_HEAD: u16 = 16 * 1024;
/// A chunk-size line (with its extensions) longer than this makes the direction lost ([`LostReason::BadChunk`]).
pub const MAX_CHUNK_LINE: u16 = 4096;
/// Requests a connection may have waiting for their responses (a power of two).
pub const PENDING_DEPTH: usize = 8;

const _: () = assert!(BLOCK.is_power_of_two() && START_LEN.is_power_of_two() && PENDING_DEPTH.is_power_of_two());
const _: () = assert!(START_LEN <= BLOCK);

// `Pending::flags`, one name per bit: see [`ReqFlags`].
/// The request's method is HEAD.
pub const REQ_HEAD: u8 = ReqFlags::HEAD.bits();
/// The request's method is CONNECT.
pub const REQ_CONNECT: u8 = ReqFlags::CONNECT.bits();

/// `*v`, read so that the compiler knows nothing of it: it cannot fold a bound the verifier must
/// see into another test, or drop a mask it knows to be a no-op. The skip loops exit on a
/// constant bound the verifier checks, and separately on this data-dependent one: folded into one
/// test (`k != min(avail, 32)`), the verifiers of older kernels (6.1) cannot tell the loop ends
/// and give up after 8192 branches. (The tc programs use it for a length they mask too.)
#[inline(always)]
pub fn opaque(v: &u32) -> u32 {
    // SAFETY: a valid, aligned reference.
    unsafe { core::ptr::read_volatile(v) }
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: #[repr(C)], integers and byte arrays only, no implicit padding (sizes are asserted
    // in the tests: 48, 80, 80, 264, 96).
    unsafe impl aya::Pod for DirFrame {}
    unsafe impl aya::Pod for Pending {}
    unsafe impl aya::Pod for FrameCounts {}
    unsafe impl aya::Pod for ConnFrame {}
    unsafe impl aya::Pod for Scan {}
}
