//! Every BPF map and load-time global of observer, in one place. Sizes here are defaults; the
//! daemon overrides `max_entries` at load time from its configuration.
use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
    Global,
};
use observer_common::{
    conn::{ConnKey, ConnStats},
    global::COUNTERS,
    tracepoint::{NetnsFilter, TpLayout},
};

/// Exact counters per connection, keyed by the canonical four-tuple. LRU: when full, the least
/// recently used connection is evicted, never a new one refused.
#[map]
pub static CONNS: LruHashMap<ConnKey, ConnStats> = LruHashMap::with_max_entries(65_536, 0);

/// Host-wide counters, per CPU (see `observer_common::global::Counter`).
#[map]
pub static GLOBAL: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

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
/// Which network namespace the socket tracepoints report (the daemon's).
#[unsafe(no_mangle)]
pub static NETNS_FILTER: Global<NetnsFilter> = Global::new(NetnsFilter::disabled());
