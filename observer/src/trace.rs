//! Live traces: who follows which connections, the kernel filters that serve them (added for the
//! first subscriber of a filter, removed with the last), and the timeline lines they receive.
#![forbid(unsafe_code)]
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use observer_common::{
    conn::{ConnKey, FAMILY_IPV4, FAMILY_IPV6},
    trace::{filter_key, SHAPE_CONNECTION, SHAPE_LOCAL_PORT, SHAPE_REMOTE_ADDR, SHAPE_REMOTE_ENDPOINT},
};
use tokio::sync::mpsc;

// The daemon's packet pump (`daemon.rs`) calls it by this path; it is built in `timeline`, with
// the other lines.
use crate::{model::TimelineEvent, query::parse_connection};

mod pairing;

/// What a subscriber follows: one connection, or a partial four-tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    pub shape: u32,
    /// The fields of `shape` set, the rest zero (see `observer_common::trace::filter_key`).
    pub key: ConnKey,
}

fn key_with_remote(ip: IpAddr, port: u16) -> ConnKey {
    let mut k = ConnKey::zeroed();
    match ip {
        IpAddr::V4(v4) => {
            k.family = FAMILY_IPV4;
            k.remote_addr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            k.family = FAMILY_IPV6;
            k.remote_addr = v6.octets();
        }
    }
    k.remote_port = port;
    k
}

impl Filter {
    fn new(shape: u32, k: &ConnKey) -> Self {
        Self { shape, key: filter_key(shape, k) }
    }

    pub fn matches(&self, key: &ConnKey) -> bool {
        filter_key(self.shape, key) == self.key
    }
}

/// Which responses a trace keeps: one status code, or a class (`5xx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusMatch {
    Code(u16),
    /// The hundreds digit: 5 for `5xx`.
    Class(u16),
}

impl StatusMatch {
    pub fn parse(v: &str) -> Result<Self, String> {
        let expected = || format!("status={v:?}: expected a status code (502) or a class (5xx), from 100 to 599");
        let lower = v.to_ascii_lowercase();
        let m = match lower.strip_suffix("xx") {
            Some(class) => StatusMatch::Class(class.parse().map_err(|_| expected())?),
            None => StatusMatch::Code(lower.parse().map_err(|_| expected())?),
        };
        match m {
            StatusMatch::Class(1..=5) | StatusMatch::Code(100..=599) => Ok(m),
            _ => Err(expected()),
        }
    }

    pub fn matches(self, status: u64) -> bool {
        match self {
            StatusMatch::Code(c) => status == u64::from(c),
            StatusMatch::Class(c) => status / 100 == u64::from(c),
        }
    }
}

/// What one trace follows. The kernel filters by one shape only (one hash lookup per shape in
/// use, per packet); what a trace asks for beyond that (a local port as well as a remote, a
/// status) is checked here, on the lines the kernel's filter let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Follow {
    pub kernel: Filter,
    /// With `remote=`: only connections on this local port too.
    pub local_port: Option<u16>,
    /// Only `response` lines with a matching status, nothing else.
    pub status: Option<StatusMatch>,
}

impl Follow {
    /// From the trace route's parameters: `connection=LOCAL REMOTE`, `remote=ADDR` or
    /// `remote=ADDR:PORT`, `local_port=PORT`, or `remote=` and `local_port=` together; and
    /// `status=CODE|CLASS` with any of them.
    pub fn from_params(params: &HashMap<String, String>) -> Result<Self, String> {
        let expected = "expected connection=LOCAL REMOTE, remote=ADDRESS[:PORT], local_port=PORT, or remote= and local_port= together (and optionally status=502 or status=5xx)";
        let mut status = None;
        let (mut connection, mut remote, mut local_port) = (None, None, None);
        for (name, v) in params {
            match name.as_str() {
                "connection" => connection = Some(parse_connection(v)?),
                "remote" => {
                    remote = Some(match v.parse::<SocketAddr>() {
                        Ok(ep) => Filter::new(SHAPE_REMOTE_ENDPOINT, &key_with_remote(ep.ip(), ep.port())),
                        Err(_) => {
                            let ip: IpAddr = v.trim_start_matches('[').trim_end_matches(']').parse().map_err(|_| {
                                format!("remote={v:?}: expected an address (198.18.0.1, 2001:db8::1) or an endpoint (198.18.0.1:51234, [2001:db8::1]:443)")
                            })?;
                            Filter::new(SHAPE_REMOTE_ADDR, &key_with_remote(ip, 0))
                        }
                    })
                }
                "local_port" => local_port = Some(v.parse::<u16>().map_err(|_| format!("local_port={v:?}: expected a port from 0 to 65535"))?),
                "status" => status = Some(StatusMatch::parse(v)?),
                other => return Err(format!("unknown parameter {other:?}: {expected}")),
            }
        }
        let (kernel, local_port) = match (connection, remote, local_port) {
            (Some(c), None, None) => (Filter::new(SHAPE_CONNECTION, &c), None),
            // The remote's shape is the narrower one in the kernel: a remote has few
            // connections, a local port (80, 443) may have every connection of the host.
            (None, Some(r), p) => (r, p),
            (None, None, Some(p)) => {
                let mut k = ConnKey::zeroed();
                k.local_port = p;
                (Filter::new(SHAPE_LOCAL_PORT, &k), None)
            }
            _ => return Err(expected.into()),
        };
        Ok(Self { kernel, local_port, status })
    }

    fn matches(&self, key: &ConnKey) -> bool {
        self.kernel.matches(key) && self.local_port.is_none_or(|p| key.local_port == p)
    }

    /// Whether a timeline line of a matching connection goes to this trace.
    fn wants(&self, line: &TimelineEvent) -> bool {
        match (self.status, line) {
            (None, _) => true,
            (Some(m), TimelineEvent::Response { status, .. }) => m.matches(u64::from(*status)),
            (Some(_), _) => false,
        }
    }
}

struct Subscriber {
    follow: Follow,
    tx: mpsc::Sender<String>,
}

/// What the kernel must be told when subscriptions change.
pub trait KernelFilters: Send + Sync {
    fn add(&self, f: &Filter);
    fn remove(&self, f: &Filter);
    /// The union of shapes in use, for the programs' one-lookup fast path.
    fn set_shapes(&self, shapes: u32);
}

#[derive(Default)]
struct State {
    next_id: u64,
    subs: HashMap<u64, Subscriber>,
    /// The requests waiting on the connections followed by status, for the responses to name.
    pairing: pairing::Pairing,
}

/// Live traces at once, at most.
pub const MAX_SUBSCRIBERS: usize = 64;

/// Every live trace.
pub struct Hub {
    state: Mutex<State>,
    kernel: Box<dyn KernelFilters>,
}

/// Unsubscribes when dropped: when the client goes away, the response body (which owns it) is
/// dropped, and the kernel filter goes with the last subscriber.
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id);
    }
}

impl Hub {
    pub fn new(kernel: Box<dyn KernelFilters>) -> Self {
        Self { state: Mutex::new(State::default()), kernel }
    }

    fn shapes(state: &State) -> u32 {
        state.subs.values().fold(0, |m, s| m | s.follow.kernel.shape)
    }

    /// A new live trace, or `None` when [`MAX_SUBSCRIBERS`] are already following (each holds a
    /// queue of up to 4096 lines).
    pub fn subscribe(self: &Arc<Self>, follow: Follow) -> Option<(Subscription, mpsc::Receiver<String>)> {
        let mut st = self.state.lock().expect("trace lock");
        if st.subs.len() >= MAX_SUBSCRIBERS {
            return None;
        }
        let (tx, rx) = mpsc::channel(4096);
        if !st.subs.values().any(|s| s.follow.kernel == follow.kernel) {
            self.kernel.add(&follow.kernel);
        }
        st.next_id += 1;
        let id = st.next_id;
        st.subs.insert(id, Subscriber { follow, tx });
        self.kernel.set_shapes(Self::shapes(&st));
        Some((Subscription { hub: self.clone(), id }, rx))
    }

    fn unsubscribe(&self, id: u64) {
        let mut st = self.state.lock().expect("trace lock");
        let Some(gone) = st.subs.remove(&id) else { return };
        if !st.subs.values().any(|s| s.follow.kernel == gone.follow.kernel) {
            self.kernel.remove(&gone.follow.kernel);
        }
        self.kernel.set_shapes(Self::shapes(&st));
        if gone.follow.status.is_some() {
            let State { subs, pairing, .. } = &mut *st;
            pairing.retain(|k| subs.values().any(|s| s.follow.status.is_some() && s.follow.matches(k)));
        }
    }

    pub fn active(&self) -> usize {
        self.state.lock().expect("trace lock").subs.len()
    }

    /// Sends `line` (built only if someone follows `key`) to every matching subscriber. A full
    /// subscriber loses the line; its stream says so. A trace by status gets its `response`
    /// lines with the `method` and `target` of the request answered, when known.
    pub fn publish(&self, key: &ConnKey, line: impl FnOnce() -> TimelineEvent) {
        let mut st = self.state.lock().expect("trace lock");
        let State { subs, pairing, .. } = &mut *st;
        let matching: Vec<&Subscriber> = subs.values().filter(|s| s.follow.matches(key)).collect();
        if matching.is_empty() {
            return;
        }
        let line = line();
        // Only a trace by status drops the request lines: the others show the request already.
        let answered = if matching.iter().any(|s| s.follow.status.is_some()) { pairing.observe(key, &line) } else { None };
        let (mut plain, mut named) = (None, None);
        for s in matching.into_iter().filter(|s| s.follow.wants(&line)) {
            let text = match (&answered, s.follow.status) {
                (Some(request), Some(_)) => named.get_or_insert_with(|| crate::timeline::text(&with_request(&line, request))),
                _ => plain.get_or_insert_with(|| crate::timeline::text(&line)),
            };
            let _ = s.tx.try_send(text.clone());
        }
    }
}

/// A `response` line with the request it answers.
fn with_request(line: &TimelineEvent, request: &pairing::Request) -> TimelineEvent {
    let mut line = line.clone();
    if let TimelineEvent::Response { method, target, .. } = &mut line {
        *method = Some(request.method.clone());
        *target = Some(request.target.clone());
    }
    line
}

/// Timeline lines for the hub's and pairing's tests, with only what they read set.
#[cfg(test)]
mod lines {
    use crate::model::{PacketDirection, Role, TimelineEvent};

    pub fn opened(time: f64) -> TimelineEvent {
        TimelineEvent::Opened { time, connection: String::new(), role: Role::Inbound }
    }

    pub fn request(time: f64, target: &str) -> TimelineEvent {
        TimelineEvent::Request { time, connection: String::new(), method: "GET".into(), target: target.into() }
    }

    pub fn response(time: f64, status: u16, latency_ms: Option<f64>) -> TimelineEvent {
        TimelineEvent::Response { time, connection: String::new(), status, latency_ms, method: None, target: None }
    }

    pub fn no_response(time: f64) -> TimelineEvent {
        TimelineEvent::NoResponse { time, connection: String::new(), requests: 1 }
    }

    pub fn packet() -> TimelineEvent {
        TimelineEvent::Packet {
            time: 0.0,
            ts_us: 0,
            connection: String::new(),
            direction: PacketDirection::In,
            flags: "ACK".into(),
            seq: 0,
            ack: 0,
            window: 0,
            len: 0,
            retransmit: false,
            http: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Mutex<Vec<String>>);
    impl KernelFilters for Arc<Recorder> {
        fn add(&self, f: &Filter) {
            self.0.lock().unwrap().push(format!("add {}", f.shape));
        }
        fn remove(&self, f: &Filter) {
            self.0.lock().unwrap().push(format!("remove {}", f.shape));
        }
        fn set_shapes(&self, shapes: u32) {
            self.0.lock().unwrap().push(format!("shapes {shapes}"));
        }
    }

    fn params(k: &str, v: &str) -> HashMap<String, String> {
        HashMap::from([(k.to_owned(), v.to_owned())])
    }

    fn follow(pairs: &[(&str, &str)]) -> Result<Follow, String> {
        Follow::from_params(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn filters_parse_and_match() {
        let c = parse_connection("198.18.1.1:80 198.18.1.2:5000").unwrap();
        let other = parse_connection("198.18.1.1:80 198.18.1.3:5000").unwrap();
        let f = Follow::from_params(&params("connection", "198.18.1.1:80 198.18.1.2:5000")).unwrap();
        assert!(f.matches(&c) && !f.matches(&other));
        let f = Follow::from_params(&params("remote", "198.18.1.2")).unwrap();
        assert!(f.matches(&c) && !f.matches(&other));
        let f = Follow::from_params(&params("remote", "198.18.1.2:5001")).unwrap();
        assert!(!f.matches(&c));
        let f = Follow::from_params(&params("local_port", "80")).unwrap();
        assert!(f.matches(&c) && f.matches(&other));
        assert!(Follow::from_params(&params("remote", "nonsense")).unwrap_err().contains("expected an address"));
        assert!(Follow::from_params(&HashMap::new()).unwrap_err().contains("expected connection="));
    }

    #[test]
    fn a_remote_and_a_local_port_combine() {
        let on_80 = parse_connection("198.18.1.1:80 198.18.1.2:5000").unwrap();
        let on_8080 = parse_connection("198.18.1.1:8080 198.18.1.2:5001").unwrap();
        let elsewhere = parse_connection("198.18.1.1:80 198.18.1.3:5000").unwrap();
        let f = follow(&[("remote", "198.18.1.2"), ("local_port", "80")]).unwrap();
        assert_eq!((f.kernel.shape, f.local_port), (SHAPE_REMOTE_ADDR, Some(80)), "the kernel filters by the remote");
        assert_eq!((f.matches(&on_80), f.matches(&on_8080), f.matches(&elsewhere)), (true, false, false));
        let f = follow(&[("remote", "198.18.1.2:5001"), ("local_port", "8080")]).unwrap();
        assert_eq!((f.matches(&on_80), f.matches(&on_8080)), (false, true));
        assert!(follow(&[("connection", "198.18.1.1:80 198.18.1.2:5000"), ("local_port", "80")]).unwrap_err().contains("together"));
    }

    #[test]
    fn a_status_keeps_only_the_responses_it_names() {
        let response = |status: u16| lines::response(0.0, status, None);
        let class = follow(&[("local_port", "80"), ("status", "5xx")]).unwrap();
        let code = follow(&[("local_port", "80"), ("status", "502")]).unwrap();
        assert_eq!([500, 502, 599, 404, 200].map(|s| class.wants(&response(s))), [true, true, true, false, false]);
        assert_eq!([500, 502, 503].map(|s| code.wants(&response(s))), [false, true, false]);
        for other in [lines::request(0.0, "/502"), lines::packet(), lines::no_response(0.0)] {
            assert!(!class.wants(&other) && !code.wants(&other), "{other:?}");
        }
        assert!(follow(&[("local_port", "80")]).unwrap().wants(&lines::packet()));
        for bad in ["6xx", "0xx", "99", "600", "5x", "error"] {
            assert!(follow(&[("local_port", "80"), ("status", bad)]).unwrap_err().contains("a class (5xx)"), "{bad}");
        }
    }

    #[test]
    fn published_lines_reach_only_the_traces_that_want_them() {
        let hub = Arc::new(Hub::new(Box::new(Arc::new(Recorder(Mutex::new(Vec::new()))))));
        let (_all, mut all) = hub.subscribe(follow(&[("remote", "198.18.1.2")]).unwrap()).unwrap();
        let (_errors, mut errors) = hub.subscribe(follow(&[("remote", "198.18.1.2"), ("local_port", "80"), ("status", "5xx")]).unwrap()).unwrap();
        let on_80 = parse_connection("198.18.1.1:80 198.18.1.2:5000").unwrap();
        let on_81 = parse_connection("198.18.1.1:81 198.18.1.2:5001").unwrap();
        for (key, status) in [(on_80, 200), (on_80, 502), (on_81, 503)] {
            hub.publish(&key, || lines::response(0.0, status, None));
        }
        let status = |l: TimelineEvent| match l {
            TimelineEvent::Response { status, .. } => status,
            other => panic!("not a response: {other:?}"),
        };
        let drain =
            |rx: &mut mpsc::Receiver<String>| std::iter::from_fn(|| rx.try_recv().ok()).map(|l| status(serde_json::from_str(&l).unwrap())).collect::<Vec<_>>();
        assert_eq!(drain(&mut all), [200, 502, 503]);
        assert_eq!(drain(&mut errors), [502]);
    }

    #[test]
    fn a_trace_by_status_names_the_request_each_response_answers() {
        let hub = Arc::new(Hub::new(Box::new(Arc::new(Recorder(Mutex::new(Vec::new()))))));
        let (_all, mut all) = hub.subscribe(follow(&[("local_port", "80")]).unwrap()).unwrap();
        let (errors_sub, mut errors) = hub.subscribe(follow(&[("local_port", "80"), ("status", "5xx")]).unwrap()).unwrap();
        let c = parse_connection("198.18.1.1:80 198.18.1.2:5000").unwrap();
        let t = 1_750_000_000.0;
        hub.publish(&c, || lines::opened(t));
        for target in ["/ok", "/api/orders"] {
            hub.publish(&c, || lines::request(t + 0.001, target));
        }
        for status in [200, 502] {
            hub.publish(&c, || lines::response(t + 0.002, status, Some(1.0)));
        }
        let received = |rx: &mut mpsc::Receiver<String>| {
            std::iter::from_fn(|| rx.try_recv().ok()).map(|l| serde_json::from_str::<serde_json::Value>(&l).unwrap()).collect::<Vec<_>>()
        };
        let five = received(&mut errors);
        assert_eq!(five.len(), 1, "{five:?}");
        assert_eq!((&five[0]["status"], &five[0]["method"], &five[0]["target"]), (&502.into(), &"GET".into(), &"/api/orders".into()));
        // The unfiltered trace has the request lines: its responses stay as they were.
        assert!(received(&mut all).iter().all(|l| l.get("method").is_none() || l["type"] == "request"));
        // The last trace by status gone, nothing is kept for it.
        assert_eq!(hub.state.lock().unwrap().pairing.len(), 1);
        drop(errors_sub);
        assert_eq!(hub.state.lock().unwrap().pairing.len(), 0);
    }

    #[test]
    fn the_kernel_filter_leaves_with_the_last_subscriber() {
        let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
        let hub = Arc::new(Hub::new(Box::new(rec.clone())));
        let f = Follow::from_params(&params("local_port", "80")).unwrap();
        let (a, _ra) = hub.subscribe(f).expect("room");
        let (b, _rb) = hub.subscribe(f).expect("room");
        drop(a);
        assert_eq!(hub.active(), 1);
        drop(b);
        assert_eq!(hub.active(), 0);
        assert_eq!(*rec.0.lock().unwrap(), vec!["add 8", "shapes 8", "shapes 8", "shapes 8", "remove 8", "shapes 0"]);
    }

    #[test]
    fn subscribers_are_capped() {
        let hub = Arc::new(Hub::new(Box::new(Arc::new(Recorder(Mutex::new(Vec::new()))))));
        let f = Follow::from_params(&params("local_port", "80")).unwrap();
        let held: Vec<_> = (0..MAX_SUBSCRIBERS).map(|_| hub.subscribe(f).expect("room")).collect();
        assert!(hub.subscribe(f).is_none());
        drop(held);
        assert!(hub.subscribe(f).is_some());
    }
}
