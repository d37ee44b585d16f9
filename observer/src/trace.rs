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
    http::DIR_IN,
    trace::{filter_key, TraceRecord, SHAPE_CONNECTION, SHAPE_LOCAL_PORT, SHAPE_REMOTE_ADDR, SHAPE_REMOTE_ENDPOINT},
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::{query::parse_connection, sys::ktime_to_unix_seconds};

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
    /// From the trace route's parameters: `connection=LOCAL REMOTE`, `remote=ADDR` or
    /// `remote=ADDR:PORT`, or `local_port=PORT`, exactly one.
    pub fn from_params(params: &HashMap<String, String>) -> Result<Self, String> {
        let expected = "expected exactly one of connection=LOCAL REMOTE, remote=ADDRESS, remote=ADDRESS:PORT, local_port=PORT";
        if params.len() != 1 {
            return Err(expected.into());
        }
        let (name, v) = params.iter().next().expect("one parameter");
        let (shape, k) = match name.as_str() {
            "connection" => (SHAPE_CONNECTION, parse_connection(v)?),
            "remote" => match v.parse::<SocketAddr>() {
                Ok(ep) => (SHAPE_REMOTE_ENDPOINT, key_with_remote(ep.ip(), ep.port())),
                Err(_) => {
                    let ip: IpAddr = v.trim_start_matches('[').trim_end_matches(']').parse().map_err(|_| format!("remote={v:?}: expected an address (198.18.0.1, 2001:db8::1) or an endpoint (198.18.0.1:51234, [2001:db8::1]:443)"))?;
                    (SHAPE_REMOTE_ADDR, key_with_remote(ip, 0))
                }
            },
            "local_port" => {
                let mut k = ConnKey::zeroed();
                k.local_port = v.parse().map_err(|_| format!("local_port={v:?}: expected a port from 0 to 65535"))?;
                (SHAPE_LOCAL_PORT, k)
            }
            other => return Err(format!("unknown parameter {other:?}: {expected}")),
        };
        Ok(Self { shape, key: filter_key(shape, &k) })
    }

    pub fn matches(&self, key: &ConnKey) -> bool {
        filter_key(self.shape, key) == self.key
    }
}

struct Subscriber {
    filter: Filter,
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
        state.subs.values().fold(0, |m, s| m | s.filter.shape)
    }

    /// A new live trace, or `None` when [`MAX_SUBSCRIBERS`] are already following (each holds a
    /// queue of up to 4096 lines).
    pub fn subscribe(self: &Arc<Self>, filter: Filter) -> Option<(Subscription, mpsc::Receiver<String>)> {
        let mut st = self.state.lock().expect("trace lock");
        if st.subs.len() >= MAX_SUBSCRIBERS {
            return None;
        }
        let (tx, rx) = mpsc::channel(4096);
        if !st.subs.values().any(|s| s.filter == filter) {
            self.kernel.add(&filter);
        }
        st.next_id += 1;
        let id = st.next_id;
        st.subs.insert(id, Subscriber { filter, tx });
        self.kernel.set_shapes(Self::shapes(&st));
        Some((Subscription { hub: self.clone(), id }, rx))
    }

    fn unsubscribe(&self, id: u64) {
        let mut st = self.state.lock().expect("trace lock");
        let Some(gone) = st.subs.remove(&id) else { return };
        if !st.subs.values().any(|s| s.filter == gone.filter) {
            self.kernel.remove(&gone.filter);
        }
        self.kernel.set_shapes(Self::shapes(&st));
    }

    pub fn active(&self) -> usize {
        self.state.lock().expect("trace lock").subs.len()
    }

    /// Sends `line` (built only if someone follows `key`) to every matching subscriber. A full
    /// subscriber loses the line; its stream says so.
    pub fn publish(&self, key: &ConnKey, line: impl FnOnce() -> Value) {
        let st = self.state.lock().expect("trace lock");
        let matching: Vec<&Subscriber> = st.subs.values().filter(|s| s.filter.matches(key)).collect();
        if matching.is_empty() {
            return;
        }
        let text = line().to_string();
        for s in matching {
            let _ = s.tx.try_send(text.clone());
        }
    }
}

fn flags(f: u8) -> String {
    let names = [(0x02, "SYN"), (0x10, "ACK"), (0x08, "PSH"), (0x01, "FIN"), (0x04, "RST"), (0x20, "URG")];
    names.iter().filter(|(b, _)| f & b != 0).map(|(_, n)| *n).collect::<Vec<_>>().join(",")
}

/// A traced packet as a timeline line.
pub fn packet_line(r: &TraceRecord) -> Value {
    let n = (r.line_len as usize).min(r.line.len());
    let payload = &r.line[..n];
    // The request or status line, when the segment starts with one.
    let first_line = payload.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or_default();
    let mut b = [0u8; observer_common::http::START_LEN];
    let m = payload.len().min(b.len());
    b[..m].copy_from_slice(&payload[..m]);
    let http = match observer_common::http::classify(&b, m) {
        observer_common::http::Start::Neither => None,
        _ => Some(String::from_utf8_lossy(first_line).into_owned()),
    };
    json!({
        "type": "packet",
        "time": ktime_to_unix_seconds(r.ts_ns),
        "ts_us": r.ts_ns / 1000,
        "connection": r.key.to_string(),
        "direction": if r.dir == DIR_IN { "in" } else { "out" },
        "flags": flags(r.tcp_flags),
        "seq": r.seq,
        "ack": r.ack,
        "window": r.window,
        "len": r.payload_len,
        "retransmit": r.retransmit != 0,
        "http": http,
    })
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

    #[test]
    fn filters_parse_and_match() {
        let c = parse_connection("198.18.1.1:80 198.18.1.2:5000").unwrap();
        let other = parse_connection("198.18.1.1:80 198.18.1.3:5000").unwrap();
        let f = Filter::from_params(&params("connection", "198.18.1.1:80 198.18.1.2:5000")).unwrap();
        assert!(f.matches(&c) && !f.matches(&other));
        let f = Filter::from_params(&params("remote", "198.18.1.2")).unwrap();
        assert!(f.matches(&c) && !f.matches(&other));
        let f = Filter::from_params(&params("remote", "198.18.1.2:5001")).unwrap();
        assert!(!f.matches(&c));
        let f = Filter::from_params(&params("local_port", "80")).unwrap();
        assert!(f.matches(&c) && f.matches(&other));
        assert!(Filter::from_params(&params("remote", "nonsense")).unwrap_err().contains("expected an address"));
        assert!(Filter::from_params(&HashMap::new()).unwrap_err().contains("exactly one"));
    }

    #[test]
    fn the_kernel_filter_leaves_with_the_last_subscriber() {
        let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
        let hub = Arc::new(Hub::new(Box::new(rec.clone())));
        let f = Filter::from_params(&params("local_port", "80")).unwrap();
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
        let f = Filter::from_params(&params("local_port", "80")).unwrap();
        let held: Vec<_> = (0..MAX_SUBSCRIBERS).map(|_| hub.subscribe(f).expect("room")).collect();
        assert!(hub.subscribe(f).is_none());
        drop(held);
        assert!(hub.subscribe(f).is_some());
    }
}
