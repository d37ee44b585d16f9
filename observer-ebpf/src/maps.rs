//! Every BPF map of observer, in one place. Sizes here are defaults; the daemon overrides
//! `max_entries` at load time from its configuration.
use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use observer_common::{
    conn::{ConnKey, ConnStats},
    global::COUNTERS,
};

/// Exact counters per connection, keyed by the canonical four-tuple. LRU: when full, the least
/// recently used connection is evicted, never a new one refused.
#[map]
pub static CONNS: LruHashMap<ConnKey, ConnStats> = LruHashMap::with_max_entries(65_536, 0);

/// Host-wide counters, per CPU (see `observer_common::global::Counter`).
#[map]
pub static GLOBAL: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);
