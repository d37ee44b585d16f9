//! `observer`: a kernel-level edge traffic observer for Linux gateway hosts, as a library the
//! binary (`main.rs`) and the end-to-end tests use.
//!
//! One response from the wire to `/metrics`: the tc program (`observer-ebpf/src/tc.rs`) sees the
//! segment and the kernel framer (`observer-ebpf/src/frame.rs`, parsing with
//! `observer_common::frame`) counts its status in the `HTTP_AGG` map; [`bpf::Maps`] reads that
//! map; [`state::State::render_metrics`] asks for it at each scrape; [`metrics::Metrics`] adds
//! it to `observer_http_responses_total`. docs/architecture.md draws the rest.
// `unsafe` is refused everywhere but at the two boundaries: the kernel's (aya, ring records) and
// the host's (libc calls).
#![deny(unsafe_code)]

pub mod api;
#[allow(unsafe_code, reason = "the kernel boundary: ring records read from kernel memory, statfs")]
pub mod bpf;
pub mod btf;
pub mod cli;
pub mod client;
pub mod command;
pub mod config;
pub mod daemon;
pub mod http;
pub mod kernel_http;
pub mod man;
pub mod metrics;
pub mod model;
pub mod query;
pub mod ring_lag;
pub mod state;
#[allow(unsafe_code, reason = "the host boundary: capabilities, mount, umask, clocks through libc")]
pub mod sys;
pub mod table;
pub mod term;
pub mod timeline;
pub mod trace;
pub mod tracefs;
pub mod unix_socket;

pub use command::DEFAULT_LISTEN;
