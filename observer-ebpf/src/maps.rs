//! Every BPF map and load-time global of observer, in one place. Sizes here are defaults; the
//! daemon overrides `max_entries` at load time from its configuration.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    Global,
};
use observer_common::{
    conn::{ConnKey, ConnStats},
    frame::ConnFrame,
    global::GLOBAL_SLOTS,
    http::{AggKey, HttpHints, PayloadEvent},
    tracepoint::{NetnsFilter, SkbSegs, SockLayout, TpLayout},
};

/// Exact counters per connection, keyed by the canonical four-tuple. LRU: when full, the least
/// recently used connection is evicted, never a new one refused.
#[map]
pub static CONNS: LruHashMap<ConnKey, ConnStats> = LruHashMap::with_max_entries(65_536, 0);

/// Where a new `CONNS` entry is assembled: a `ConnStats` is too big for the programs' 512-byte
/// stacks next to everything else they hold.
#[map]
pub static CONN_SCRATCH: PerCpuArray<ConnStats> = PerCpuArray::with_max_entries(1, 0);

/// Where `csum::observer_csum_check` sums a segment, one 512-byte block at a time.
#[map]
pub static CSUM_SCRATCH: PerCpuArray<[u32; crate::csum::BLOCK / 4]> = PerCpuArray::with_max_entries(1, 0);

/// TLS connections' server names (`proto::observer_protocol`), by four-tuple.
#[map]
pub static TLS_NAMES: LruHashMap<ConnKey, observer_common::proto::ServerName> = LruHashMap::with_max_entries(65_536, 0);

/// A connection's first segment, copied for `proto::observer_protocol`, and the name it finds.
#[map]
pub static HELLO_SCRATCH: PerCpuArray<[u8; observer_common::proto::HELLO_LEN]> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static NAME_SCRATCH: PerCpuArray<observer_common::proto::ServerName> = PerCpuArray::with_max_entries(1, 0);

/// A key copied into map memory (`conn::observer_superseded`).
#[map]
pub static KEY_SCRATCH: PerCpuArray<ConnKey> = PerCpuArray::with_max_entries(1, 0);

/// The classifier's arguments for `tc::observer_account`.
#[map]
pub static ACCOUNT_ARGS: PerCpuArray<crate::tc::AccountArgs> = PerCpuArray::with_max_entries(1, 0);

/// Inbound connection attempts whose handshake has not completed: a SYN from a peer creates its
/// entry here, not in `CONNS`, so a flood of spoofed SYNs evicts only other attempts, never an
/// established connection. The entry moves to `CONNS` when the peer completes the handshake (or
/// is refused with a reset). Same value as `CONNS`.
#[map]
pub static HALF_OPEN: LruHashMap<ConnKey, ConnStats> = LruHashMap::with_max_entries(16_384, 0);

/// HTTP framing and counts per connection, in the kernel (`observer_common::frame`).
#[map]
pub static HTTP_FRAMES: LruHashMap<ConnKey, ConnFrame> = LruHashMap::with_max_entries(65_536, 0);

/// The classifier's arguments for `frame::observer_http_frame` (a global function takes the
/// context only).
#[cfg(feature = "kernel-framer")]
#[map]
pub static FRAME_ARGS: PerCpuArray<crate::frame::FrameArgs> = PerCpuArray::with_max_entries(1, 0);
/// A zeroed `ConnFrame`, never written: new `HTTP_FRAMES` entries are inserted from it (too big
/// for the stack).
#[cfg(feature = "kernel-framer")]
#[map]
pub static FRAME_SCRATCH: PerCpuArray<ConnFrame> = PerCpuArray::with_max_entries(1, 0);
/// Times the kernel framer lost a direction's place, per CPU, by `LostReason` (index).
#[map]
pub static FRAME_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(16, 0);

/// What the kernel framer counted, host-wide, per CPU: requests and responses by role, service
/// port and status (`observer_common::http::AggKey`). The daemon sums them at scrape.
#[map]
pub static HTTP_AGG: PerCpuHashMap<AggKey, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// Where the framer keeps a segment's block and position between `bpf_loop` turns.
#[cfg(feature = "kernel-framer")]
#[map]
pub static FRAME_SCAN: PerCpuArray<observer_common::frame::Scan> = PerCpuArray::with_max_entries(1, 0);

/// Host-wide counters, per CPU (see `observer_common::global::Counter`).
#[map]
pub static GLOBAL: PerCpuArray<u64> = PerCpuArray::with_max_entries(GLOBAL_SLOTS, 0);

/// Lifecycle events (`observer_common::conn::ConnEvent`) for the daemon.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Record layouts of the socket tracepoints on the running kernel, set by the daemon at load.
#[unsafe(no_mangle)]
pub static LAYOUT_SET_STATE: Global<TpLayout> = Global::new(TpLayout::absent());
#[unsafe(no_mangle)]
pub static LAYOUT_RETRANSMIT: Global<TpLayout> = Global::new(TpLayout::absent());
#[unsafe(no_mangle)]
pub static LAYOUT_SEND_RESET: Global<TpLayout> = Global::new(TpLayout::absent());
#[unsafe(no_mangle)]
pub static LAYOUT_RECEIVE_RESET: Global<TpLayout> = Global::new(TpLayout::absent());
#[unsafe(no_mangle)]
pub static LAYOUT_RETRANSMIT_SYNACK: Global<TpLayout> = Global::new(TpLayout::absent());
/// Where a retransmitted skb keeps its segment count.
#[unsafe(no_mangle)]
pub static RETRANSMIT_SEGS: Global<SkbSegs> = Global::new(SkbSegs::disabled());
/// Offsets in `struct sock` for the BTF-typed lifecycle hook (`sock::observer_sock_set_state_btf`).
#[unsafe(no_mangle)]
pub static SOCK_LAYOUT: Global<SockLayout> = Global::new(SockLayout::absent());
/// Which network namespace the socket tracepoints report (the daemon's).
#[unsafe(no_mangle)]
pub static NETNS_FILTER: Global<NetnsFilter> = Global::new(NetnsFilter::disabled());

/// Payload of data segments for HTTP framing in the daemon (`observer_common::http`).
#[map]
pub static PAYLOAD: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// The daemon's hints per connection: not HTTP, or which bytes lie inside a body.
#[map]
pub static HTTP_HINTS: LruHashMap<ConnKey, HttpHints> = LruHashMap::with_max_entries(65_536, 0);

/// Scratch space to assemble one `PAYLOAD` record (too big for the 512-byte BPF stack).
#[map]
pub static SCRATCH: PerCpuArray<PayloadEvent> = PerCpuArray::with_max_entries(1, 0);

/// Ports whose connections are parsed as HTTP, when `HTTP_PORTS_ONLY` is 1 (value unused).
#[map]
pub static HTTP_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(256, 0);

/// 1: run the kernel's HTTP framer (`frame`); 0: not (the default while it is experimental).
#[unsafe(no_mangle)]
pub static KERNEL_HTTP: Global<u32> = Global::new(0);

/// 0: look for HTTP on every port (by content); 1: only on the ports in `HTTP_PORTS`.
#[unsafe(no_mangle)]
pub static HTTP_PORTS_ONLY: Global<u32> = Global::new(0);

/// Bits of the trace filter shapes in use (`observer_common::trace::SHAPE_*`); 0: nobody traces,
/// and a packet costs this one lookup.
#[map]
pub static TRACE_SHAPES: Array<u32> = Array::with_max_entries(1, 0);

/// Active trace filters (`observer_common::trace::filter_key`), value: subscriber count.
#[map]
pub static TRACE_FILTERS: HashMap<ConnKey, u32> = HashMap::with_max_entries(1024, 0);

/// Records of traced packets (`observer_common::trace::TraceRecord`).
#[map]
pub static TRACE: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);
