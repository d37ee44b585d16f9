//! Prometheus metrics. Aggregates only: never a four-tuple label.
use prometheus::{Encoder, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::bpf::Attachment;

pub struct Metrics {
    registry: Registry,
    packets_seen: IntCounter,
    packets_not_tcp: IntCounter,
    packets_parse_failures: IntCounter,
    conn_insert_failures: IntCounter,
    connections_tracked: IntGauge,
}

/// What the kernel counted, read at scrape time.
pub struct KernelCounters {
    pub packets_seen: u64,
    pub not_tcp: u64,
    pub parse_failures: u64,
    pub conn_insert_failures: u64,
    pub connections_tracked: u64,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric name");
    registry.register(Box::new(c.clone())).expect("metric registered once");
    c
}

impl Metrics {
    pub fn new(attachments: &[Attachment]) -> Self {
        let registry = Registry::new();
        let info = IntGaugeVec::new(Opts::new("observer_build_info", "Version of the running observer (always 1)."), &["version", "kernel"]).expect("valid");
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), &crate::sys::kernel_release()]).set(1);
        registry.register(Box::new(info)).expect("registered once");
        let attached = IntGaugeVec::new(
            Opts::new("observer_tc_attached", "tc programs attached, by interface, direction and mode (tcx or clsact); 1 while attached."),
            &["interface", "direction", "mode"],
        )
        .expect("valid");
        for a in attachments {
            attached.with_label_values(&[&a.interface, a.direction, a.mode]).set(1);
        }
        registry.register(Box::new(attached)).expect("registered once");
        let connections_tracked = IntGauge::new("observer_connections_tracked", "Connections currently in the kernel's CONNS map.").expect("valid");
        registry.register(Box::new(connections_tracked.clone())).expect("registered once");
        Self {
            packets_seen: counter(&registry, "observer_packets_seen_total", "Packets the tc programs saw, on every attached interface and direction."),
            packets_not_tcp: counter(&registry, "observer_packets_not_tcp_total", "Well-formed packets that are not TCP (ARP, UDP, ICMP, ...)."),
            packets_parse_failures: counter(&registry, "observer_packets_parse_failures_total", "Packets whose headers could not be parsed (truncated, IP fragments, long IPv6 extension chains)."),
            conn_insert_failures: counter(&registry, "observer_connection_insert_failures_total", "New connections the kernel map refused (expected to stay 0)."),
            connections_tracked,
            registry,
        }
    }

    /// Brings the counters up to the kernel's values and renders the text exposition format.
    pub fn render(&self, k: &KernelCounters) -> String {
        let KernelCounters { packets_seen, not_tcp, parse_failures, conn_insert_failures, connections_tracked } = *k;
        for (c, v) in [
            (&self.packets_seen, packets_seen),
            (&self.packets_not_tcp, not_tcp),
            (&self.packets_parse_failures, parse_failures),
            (&self.conn_insert_failures, conn_insert_failures),
        ] {
            // Kernel counters only grow; a scrape brings ours up to theirs.
            c.inc_by(v.saturating_sub(c.get()));
        }
        self.connections_tracked.set(connections_tracked as i64);
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}
