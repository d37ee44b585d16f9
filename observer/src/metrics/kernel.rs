//! The kernel's global counters (`GLOBAL`, indexed by [`Counter`]) as Prometheus families: read
//! from the map at each scrape by a collector, so `/metrics` shows the kernel's own values, never
//! a copy that lags them. The API's `kernel_counters` object is the same reading.
#![forbid(unsafe_code)]
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex,
};

use observer_common::global::{Counter, COUNTERS};
use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    IntCounterVec, IntGaugeVec, Opts,
};

use crate::bpf::Maps;

/// Every kernel counter, summed over CPUs (gauges: the highest CPU's value), by [`Counter`].
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelCounters([u64; COUNTERS as usize]);

impl KernelCounters {
    pub fn read(maps: &Maps) -> Self {
        let mut values = [0; COUNTERS as usize];
        for c in Counter::ALL {
            values[c as usize] = if c.is_gauge() { maps.counter_max(c) } else { maps.counter(c) };
        }
        Self(values)
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }
}

/// `{"packets_seen": 12, ...}`: each counter under its name, in [`Counter::ALL`] order.
impl serde::Serialize for KernelCounters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(Counter::ALL.len()))?;
        for c in Counter::ALL {
            map.serialize_entry(c.name(), &self.get(c))?;
        }
        map.end()
    }
}

/// A family read from kernel counters: name, help, and its samples (counter, label pair).
struct Family {
    name: &'static str,
    help: &'static str,
    label: Option<&'static str>,
    samples: &'static [(Counter, &'static str)],
}

/// A family of one unlabelled sample.
const fn one(name: &'static str, help: &'static str, sample: &'static [(Counter, &'static str); 1]) -> Family {
    Family { name, help, label: None, samples: sample }
}

/// Every family the kernel's counters feed. Counters not here are in [`NOT_EXPORTED`].
const FAMILIES: [Family; 17] = [
    one("observer_packets_seen_total", "Packets the tc programs saw, on every attached interface and direction.", &[(Counter::PacketsSeen, "")]),
    one("observer_packets_not_tcp_total", "Well-formed packets that are not TCP (ARP, UDP, ICMP, ...).", &[(Counter::NotTcp, "")]),
    one("observer_packets_parse_failures_total", "Packets whose headers could not be parsed (truncated, IP fragments, long IPv6 extension chains).", &[(Counter::ParseFailures, "")]),
    one("observer_connection_insert_failures_total", "New connections the kernel map refused (expected to stay 0: the map is LRU).", &[(Counter::ConnInsertFailures, "")]),
    one("observer_events_lost_total", "Lifecycle events dropped because the ring buffer was full; per-connection counters stay exact.", &[(Counter::EventsLost, "")]),
    Family {
        name: "observer_resets_total",
        help: "TCP resets by direction (sent by this host's stack, received from peers), every connection together.",
        label: Some("direction"),
        samples: &[(Counter::ResetsSent, "sent"), (Counter::ResetsReceived, "received")],
    },
    one("observer_retransmits_total", "TCP segments this host retransmitted, every connection together.", &[(Counter::Retransmits, "")]),
    one("observer_payload_records_lost_total", "HTTP payload records dropped because the payload ring buffer was full.", &[(Counter::PayloadLost, "")]),
    one("observer_trace_records_lost_total", "Trace records dropped because the trace ring buffer was full.", &[(Counter::TraceLost, "")]),
    one("observer_seq_contention_total", "Segments whose per-direction sequence bookkeeping lost every compare-and-exchange attempt to another CPU (their bytes were counted as new). Should stay 0.", &[(Counter::SeqContention, "")]),
    one("observer_http_kernel_frame_insert_failures_total", "Connections whose kernel HTTP framing state the HTTP_FRAMES map refused (should stay 0: the map is LRU).", &[(Counter::FrameInsertFailures, "")]),
    one("observer_http_kernel_aggregates_full_total", "Messages the kernel framer counted that its full HTTP_AGG map could not add to the aggregates: /metrics misses them (should stay 0).", &[(Counter::HttpAggFull, "")]),
    one("observer_inbound_attempts_total", "Inbound connection attempts (a peer's SYN on a four-tuple without a connection), held apart from the connection map until the handshake completes: spoofed SYNs never evict a connection.", &[(Counter::HalfOpened, "")]),
    one("observer_inbound_attempts_completed_total", "Inbound attempts whose handshake completed (moved to the connection map); the rest were refused, abandoned, or a SYN flood.", &[(Counter::HalfOpenPromoted, "")]),
    one("observer_bad_checksum_segments_total", "Segments received with a checksum (TCP, or IPv4 header) the host's stack rejects: dropped there, so counted nowhere else (no packets, bytes, connection or HTTP message).", &[(Counter::BadChecksum, "")]),
    Family {
        name: "observer_ringbuf_backlog_bytes",
        help: "Bytes waiting in a ring buffer when a kernel program last wrote to it (fill; compare with observer_ringbuf_size_bytes).",
        label: Some("ring"),
        samples: &[(Counter::PayloadBacklog, "payload"), (Counter::EventsBacklog, "events")],
    },
    Family {
        name: NOT_HTTP,
        help: "Connections found not to be HTTP/1.x (TLS, binary protocols), never parsed: by the kernel from their first bytes, or by the daemon when those were too few to tell.",
        label: Some("detected_by"),
        samples: &[(Counter::NotHttp, "kernel")],
    },
];

const NOT_HTTP: &str = "observer_not_http_connections_total";

/// Counters read elsewhere: `ConnInserts` feeds `observer_connection_evictions_total` (inserts
/// minus entries), the payload ones are in the API only.
#[cfg_attr(not(test), allow(dead_code, reason = "the test checks every counter is exported or listed here"))]
const NOT_EXPORTED: [Counter; 3] = [Counter::ConnInserts, Counter::PayloadSkipped, Counter::PayloadSent];

/// Reads the kernel counters at each scrape.
pub struct KernelCollector {
    maps: Arc<Mutex<Maps>>,
    /// The `detected_by="daemon"` sample of `observer_not_http_connections_total`.
    pub not_http_daemon: AtomicU64,
    descs: Vec<Desc>,
}

impl KernelCollector {
    pub fn new(maps: Arc<Mutex<Maps>>) -> Self {
        let descs = FAMILIES.iter().map(|f| family(f, &[])).chain([fallbacks(&[])]).flat_map(|c| c.desc().into_iter().cloned().collect::<Vec<_>>()).collect();
        Self { maps, not_http_daemon: AtomicU64::new(0), descs }
    }
}

/// A family's metric with `values` (label value, value) set.
fn family(f: &Family, values: &[(&str, u64)]) -> Box<dyn Collector> {
    let labels: Vec<&str> = f.label.into_iter().collect();
    let opts = Opts::new(f.name, f.help);
    if f.samples[0].0.is_gauge() {
        let g = IntGaugeVec::new(opts, &labels).expect("a valid family");
        for (l, v) in values {
            g.with_label_values(&labels.iter().map(|_| *l).collect::<Vec<_>>()).set(*v as i64);
        }
        Box::new(g)
    } else {
        let c = IntCounterVec::new(opts, &labels).expect("a valid family");
        for (l, v) in values {
            c.with_label_values(&labels.iter().map(|_| *l).collect::<Vec<_>>()).inc_by(*v);
        }
        Box::new(c)
    }
}

/// Times the kernel framer lost its place (`FRAME_LOST`, by reason).
fn fallbacks(values: &[(&str, u64)]) -> Box<dyn Collector> {
    let c = IntCounterVec::new(
        Opts::new("observer_http_fallback_total", "Times the kernel's HTTP framer lost its place in a connection direction and handed it to the daemon's framer, by reason (gap, head_too_long, bad_length, pipeline_too_deep, unknown_coding, bad_chunk, bad_head, unpaired, budget; not_http: nobody frames it)."),
        &["reason"],
    )
    .expect("a valid family");
    for (reason, v) in values {
        c.with_label_values(&[reason]).inc_by(*v);
    }
    Box::new(c)
}

impl Collector for KernelCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (k, lost) = {
            let maps = self.maps.lock().expect("maps lock poisoned");
            (KernelCounters::read(&maps), maps.framing_lost())
        };
        let lost: Vec<(&str, u64)> = lost.into_iter().map(|(r, n)| (r.name(), n)).collect();
        let mut families: Vec<MetricFamily> = FAMILIES
            .iter()
            .flat_map(|f| {
                let mut values: Vec<(&str, u64)> = f.samples.iter().map(|(c, l)| (*l, k.get(*c))).collect();
                if f.name == NOT_HTTP {
                    values.push(("daemon", self.not_http_daemon.load(Ordering::Relaxed)));
                }
                family(f, &values).collect()
            })
            .collect();
        families.extend(fallbacks(&lost).collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_counter_is_exported_once_or_said_not_to_be() {
        for c in Counter::ALL {
            let exported = FAMILIES.iter().flat_map(|f| f.samples).filter(|(s, _)| *s == c).count();
            let skipped = NOT_EXPORTED.contains(&c);
            assert!(exported + usize::from(skipped) == 1, "{c:?}: in {exported} families, not exported: {skipped}");
        }
        for f in &FAMILIES {
            assert!(!f.samples.is_empty() && (f.label.is_some() || f.samples.len() == 1), "{}", f.name);
            assert!(f.samples.iter().all(|(c, _)| c.is_gauge() == f.samples[0].0.is_gauge()), "{}: counters and gauges mixed", f.name);
        }
    }
}
