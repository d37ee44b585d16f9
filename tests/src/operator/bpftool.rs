//! The daemon's kernel maps, read with bpftool as an operator would.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::SocketAddr,
    process::Command,
};

use serde_json::Value;

use crate::netns::Netns;

/// The pid of `observer run` in `ns` (not the CLI processes that also run there).
pub fn daemon_pid(ns: &Netns) -> u32 {
    let out = Command::new("ip").args(["netns", "pids", ns.name()]).output().expect("ip netns pids");
    let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"observer")) && args.get(1).is_some_and(|a| *a == b"run")
        })
        .collect();
    assert_eq!(pids.len(), 1, "one `observer run` in {}: {pids:?}", ns.name());
    pids[0]
}

/// The ids of the BPF maps process `pid` holds open, by the name the kernel keeps (truncated to
/// 15 characters). Maps are global objects: each daemon has its own `TRACE_FILTERS`, so a test
/// finds its daemon's through the daemon's file descriptors (`/proc/PID/fdinfo`: `map_id`).
pub fn bpf_maps_of(ns: &Netns, pid: u32) -> BTreeMap<String, u32> {
    let mut ids = BTreeSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap_or_else(|e| panic!("/proc/{pid}/fdinfo: {e}")).flatten() {
        let info = fs::read_to_string(entry.path()).unwrap_or_default();
        if let Some(id) = info.lines().find_map(|l| l.strip_prefix("map_id:")).and_then(|v| v.trim().parse::<u32>().ok()) {
            ids.insert(id);
        }
    }
    let mut maps = BTreeMap::new();
    for id in ids {
        let v = bpftool(ns, &["map", "show", "id", &id.to_string()]);
        if let Some(name) = v.get("name").and_then(Value::as_str) {
            maps.insert(name.to_owned(), id);
        }
    }
    maps
}

/// `bpftool -j ARGS` inside `ns`, parsed.
pub fn bpftool(ns: &Netns, args: &[&str]) -> Value {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let out = ns.run("bpftool", &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bpftool {args:?}: not JSON ({e}): {out}"))
}

/// The entries of map `id` (`bpftool map dump`): a JSON array.
pub fn bpf_map_dump(ns: &Netns, id: u32) -> Vec<Value> {
    match bpftool(ns, &["map", "dump", "id", &id.to_string()]) {
        Value::Array(a) => a,
        other => panic!("bpftool map dump id {id}: not an array: {other}"),
    }
}

/// A map value as bpftool prints it without BTF (`"value": ["0x02", "0x00", ...]`) or with BTF
/// (`"formatted": {"value": 2}`), read as a little-endian unsigned number.
pub fn bpf_value_u64(entry: &Value) -> u64 {
    if let Some(v) = entry.get("formatted").and_then(|f| f.get("value")).and_then(Value::as_u64) {
        return v;
    }
    if let Some(v) = entry.get("value").and_then(Value::as_u64) {
        return v;
    }
    let bytes = entry.get("value").and_then(Value::as_array).unwrap_or_else(|| panic!("no value in {entry}"));
    bytes.iter().rev().map(|b| u64::from_str_radix(b.as_str().expect("a hex byte").trim_start_matches("0x"), 16).expect("hex")).fold(0, |acc, b| (acc << 8) | b)
}

/// The bytes of a map key or value as bpftool prints them without BTF (`["0x02", ...]`).
fn bpf_bytes(v: &Value) -> Vec<u8> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a byte array: {v}"))
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().expect("a hex byte").trim_start_matches("0x"), 16).expect("hex"))
        .collect()
}

/// The keys of the daemon's `CONNS` map (id `id`) as `(local, remote)` endpoints, decoded from
/// `observer_common::conn::ConnKey` (`family: u16, local_port: u16, remote_port: u16, _pad: u16,
/// local_addr: [u8; 16], remote_addr: [u8; 16]`, host byte order, IPv4 in the first 4 bytes).
pub fn bpf_conn_keys(ns: &Netns, id: u32) -> Vec<(SocketAddr, SocketAddr)> {
    bpf_map_dump(ns, id)
        .iter()
        .map(|e| {
            let k = bpf_bytes(&e["key"]);
            assert_eq!(k.len(), 40, "a ConnKey is 40 bytes: {e}");
            let u16_at = |i: usize| u16::from_ne_bytes([k[i], k[i + 1]]);
            let ip = |at: usize| -> std::net::IpAddr {
                match u16_at(0) as i32 {
                    libc::AF_INET => std::net::Ipv4Addr::new(k[at], k[at + 1], k[at + 2], k[at + 3]).into(),
                    libc::AF_INET6 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&k[at..at + 16]).expect("16 bytes")).into(),
                    f => panic!("family {f} in {e}"),
                }
            };
            (SocketAddr::new(ip(8), u16_at(2)), SocketAddr::new(ip(24), u16_at(4)))
        })
        .collect()
}
