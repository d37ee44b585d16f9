//! Types shared by observer's kernel programs (`observer-ebpf`) and its daemon (`observer`), and
//! pure parsers over byte arrays that run in both places.
//!
//! Everything here is `#[repr(C)]`, plain old data, and `no_std`: the kernel side writes these
//! structs into BPF maps and ring buffers, and the daemon reads the same bytes back. The `user`
//! feature adds what only user space needs (`aya::Pod`, `Display`).
#![no_std]

pub mod conn;
pub mod direction;
pub mod flags;
pub mod frame;
pub mod global;
pub mod http;
pub mod packet;
pub mod proto;
pub mod seq;
pub mod trace;
pub mod tracepoint;

pub use direction::Direction;

#[cfg(feature = "user")]
extern crate std;
