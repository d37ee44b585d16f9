//! The written forms of `/api/v1/status` and of the trace lines, exactly as the daemon wrote
//! them before these types existed (its `json!` objects: members in name order), and read back.
use std::collections::BTreeMap;

use super::*;

const C: &str = "198.18.1.1:80 198.18.1.2:5000";
const T: f64 = 1_750_000_000.25;

fn status() -> Status {
    Status {
        version: "0.1.0".into(),
        kernel: "6.8.0-45-generic".into(),
        uptime_seconds: 12.5,
        attachments: vec![Attachment { interface: "eth0".into(), direction: "ingress".into(), program: "tc_ingress".into(), mode: "tcx".into() }],
        tracepoints: vec![
            Tracepoint { tracepoint: "sock:inet_sock_set_state".into(), attached: true },
            Tracepoint { tracepoint: "tcp:tcp_retransmit_skb".into(), attached: false },
        ],
        netns_filter: true,
        lifecycle_hook: "tp_btf".into(),
        capabilities: vec!["CAP_BPF".into(), "CAP_NET_ADMIN".into()],
        programs: vec![ProgramStats { program: "tc_ingress".into(), id: 42, run_count: 10, run_time_ns: 2000, verified_instructions: Some(1234) }],
        traces_active: 1,
        rings: vec![RingLag { ring: "events".into(), lag_seconds: 0.0 }, RingLag { ring: "payload".into(), lag_seconds: 0.25 }],
        sweeps: 7,
        kernel_counters: KernelCounters(BTreeMap::from([("packets_seen".into(), 100), ("events_lost".into(), 0)])),
        connections_tracked: 3,
        table: TableGauges {
            kernel_entries: 3,
            open_inbound: 1,
            open_outbound: 1,
            open_unknown: 0,
            closed_kept: 1,
            bounds: vec![("closed_max".into(), 0), ("trace_subscribers".into(), 2)],
        },
        config: DaemonConfig {
            interfaces: vec!["eth0".into()],
            listen: "127.0.0.1:9470".into(),
            metrics_listen: None,
            state_dir: Some("/sys/fs/bpf/observer".into()),
            top_k: 20,
            http_ports: vec![80, 8080],
            lifecycle_hook: Some("auto".into()),
            max_connections: 65536,
            events_bytes: 262_144,
            payload_bytes: 4_194_304,
            closed_retention_seconds: 300,
            closed_max: 10000,
            http_framing: HttpFraming::Kernel,
            http_framing_refused: None,
            ready_max_lag_seconds: 2.0,
            unix_socket: None,
            upstreams: Upstreams::FirstEndpoints(16),
        },
    }
}

const STATUS: &str = concat!(
    r#"{"attachments":[{"direction":"ingress","interface":"eth0","mode":"tcx","program":"tc_ingress"}],"#,
    r#""capabilities":["CAP_BPF","CAP_NET_ADMIN"],"#,
    r#""config":{"closed_max":10000,"closed_retention_seconds":300,"events_bytes":262144,"http_framing":"kernel","http_framing_refused":null,"http_ports":[80,8080],"#,
    r#""interfaces":["eth0"],"lifecycle_hook":"auto","listen":"127.0.0.1:9470","max_connections":65536,"metrics_listen":null,"payload_bytes":4194304,"#,
    r#""ready_max_lag_seconds":2.0,"state_dir":"/sys/fs/bpf/observer","top_k":20,"unix_socket":null,"upstreams":{"first_endpoints":16}},"#,
    r#""connections_tracked":3,"kernel":"6.8.0-45-generic","kernel_counters":{"events_lost":0,"packets_seen":100},"lifecycle_hook":"tp_btf","netns_filter":true,"#,
    r#""programs":[{"id":42,"program":"tc_ingress","run_count":10,"run_time_ns":2000,"verified_instructions":1234}],"#,
    r#""rings":[{"lag_seconds":0.0,"ring":"events"},{"lag_seconds":0.25,"ring":"payload"}],"sweeps":7,"#,
    r#""table":{"bounds":[["closed_max",0],["trace_subscribers",2]],"closed_kept":1,"kernel_entries":3,"open_inbound":1,"open_outbound":1,"open_unknown":0},"#,
    r#""tracepoints":[{"attached":true,"tracepoint":"sock:inet_sock_set_state"},{"attached":false,"tracepoint":"tcp:tcp_retransmit_skb"}],"#,
    r#""traces_active":1,"uptime_seconds":12.5,"version":"0.1.0"}"#,
);

#[test]
fn the_status_is_written_as_before_and_read_back() {
    let status = status();
    assert_eq!(written(&status).unwrap().to_string(), STATUS);
    assert_eq!(serde_json::from_str::<Status>(STATUS).unwrap(), status);

    let mut with_rules = status;
    with_rules.config.upstreams = Upstreams::Rules(vec!["api".into(), "10.0.0.0/8".into()]);
    with_rules.config.http_framing = HttpFraming::Daemon;
    with_rules.config.http_framing_refused = Some("the kernel's verifier refused the framer".into());
    let text = written(&with_rules).unwrap().to_string();
    assert!(text.contains(r#""upstreams":{"rules":["api","10.0.0.0/8"]}"#), "{text}");
    assert!(text.contains(r#""http_framing":"daemon","http_framing_refused":"the kernel's verifier refused the framer""#), "{text}");
    assert_eq!(serde_json::from_str::<Status>(&text).unwrap(), with_rules);
}

#[test]
fn every_trace_line_is_written_as_before_and_read_back() {
    let c = || C.to_owned();
    let response = |latency_ms, request: Option<(&str, &str)>| TimelineEvent::Response {
        time: T,
        connection: c(),
        status: 502,
        latency_ms,
        method: request.map(|r| r.0.into()),
        target: request.map(|r| r.1.into()),
    };
    let packet = |http: Option<&str>| TimelineEvent::Packet {
        time: T,
        ts_us: 123_456_789,
        connection: c(),
        direction: PacketDirection::In,
        flags: "SYN,ACK".into(),
        seq: 4_000_000_000,
        ack: 1,
        window: 64240,
        len: 0,
        retransmit: false,
        http: http.map(Into::into),
    };
    let cases = [
        (
            TimelineEvent::Subscribed { filter: BTreeMap::from([("status".into(), "5xx".into()), ("local_port".into(), "80".into())]) },
            r#"{"filter":{"local_port":"80","status":"5xx"},"type":"subscribed"}"#.to_owned(),
        ),
        (
            TimelineEvent::Opened { time: T, connection: c(), role: Role::Inbound },
            format!(r#"{{"connection":"{C}","role":"inbound","time":1750000000.25,"type":"opened"}}"#),
        ),
        (
            TimelineEvent::Closed { time: T, connection: c(), state_before: TcpState::FinWait2 },
            format!(r#"{{"connection":"{C}","state_before":"fin_wait2","time":1750000000.25,"type":"closed"}}"#),
        ),
        (
            TimelineEvent::Reset { time: T, connection: c(), direction: ResetDirection::Sent },
            format!(r#"{{"connection":"{C}","direction":"sent","time":1750000000.25,"type":"reset"}}"#),
        ),
        (
            TimelineEvent::Reset { time: T, connection: c(), direction: ResetDirection::Received },
            format!(r#"{{"connection":"{C}","direction":"received","time":1750000000.25,"type":"reset"}}"#),
        ),
        (
            TimelineEvent::Request { time: T, connection: c(), method: "GET".into(), target: "/api/orders".into() },
            format!(r#"{{"connection":"{C}","method":"GET","target":"/api/orders","time":1750000000.25,"type":"request"}}"#),
        ),
        (response(Some(31.21), None), format!(r#"{{"connection":"{C}","latency_ms":31.21,"status":502,"time":1750000000.25,"type":"response"}}"#)),
        (response(None, None), format!(r#"{{"connection":"{C}","latency_ms":null,"status":502,"time":1750000000.25,"type":"response"}}"#)),
        (
            response(Some(1.5), Some(("GET", "/api/orders"))),
            format!(r#"{{"connection":"{C}","latency_ms":1.5,"method":"GET","status":502,"target":"/api/orders","time":1750000000.25,"type":"response"}}"#),
        ),
        (
            TimelineEvent::NoResponse { time: T, connection: c(), requests: 2 },
            format!(r#"{{"connection":"{C}","requests":2,"time":1750000000.25,"type":"no_response"}}"#),
        ),
        (TimelineEvent::FramingLost { time: T, connection: c() }, format!(r#"{{"connection":"{C}","time":1750000000.25,"type":"framing_lost"}}"#)),
        (TimelineEvent::NotHttp { time: T, connection: c() }, format!(r#"{{"connection":"{C}","time":1750000000.25,"type":"not_http"}}"#)),
        (
            packet(None),
            format!(
                r#"{{"ack":1,"connection":"{C}","direction":"in","flags":"SYN,ACK","http":null,"len":0,"retransmit":false,"seq":4000000000,"time":1750000000.25,"ts_us":123456789,"type":"packet","window":64240}}"#
            ),
        ),
        (
            packet(Some("GET / HTTP/1.1")),
            format!(
                r#"{{"ack":1,"connection":"{C}","direction":"in","flags":"SYN,ACK","http":"GET / HTTP/1.1","len":0,"retransmit":false,"seq":4000000000,"time":1750000000.25,"ts_us":123456789,"type":"packet","window":64240}}"#
            ),
        ),
    ];
    for (event, line) in cases {
        assert_eq!(crate::timeline::text(&event), line);
        assert_eq!(serde_json::from_str::<TimelineEvent>(&line).unwrap(), event, "{line}");
    }
}

#[test]
fn errors_and_readiness_are_written_as_before() {
    assert_eq!(written(&ApiError { error: "no such route".into() }).unwrap().to_string(), r#"{"error":"no such route"}"#);
    let r = Readiness { ready: false, problems: vec!["interface eth1 is gone".into()] };
    assert_eq!(written(&r).unwrap().to_string(), r#"{"problems":["interface eth1 is gone"],"ready":false}"#);
    assert_eq!(serde_json::from_str::<Readiness>(r#"{"problems":["interface eth1 is gone"],"ready":false}"#).unwrap(), r);
}
