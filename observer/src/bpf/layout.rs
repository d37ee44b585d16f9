//! What the programs need to know of this kernel's structures, from its BTF: where a socket's
//! fields are (the BTF-typed lifecycle hook), a retransmitted skb's segment count, and the
//! network namespace filter. Each falls back to a safe default, with a log line saying the cost.
use anyhow::Context as _;
use observer_common::tracepoint::{NetnsFilter, SkbSegs, SockLayout};

/// What a program needs from the kernel's BTF (`find`), or `fallback` when BTF or a member is
/// missing, with a log line at `level` saying what that costs.
fn from_btf<T>(btf: Option<&crate::btf::Btf>, find: impl FnOnce(&crate::btf::Btf) -> anyhow::Result<T>, fallback: T, level: log::Level, cost: &str) -> T {
    match btf.context("no kernel BTF").and_then(find) {
        Ok(found) => found,
        Err(e) => {
            log::log!(level, "{cost} ({e:#})");
            fallback
        }
    }
}

/// Where a retransmitted skb's segment count is (`skb->cb` as `struct tcp_skb_cb`), from BTF.
pub(super) fn skb_segs(btf: Option<&crate::btf::Btf>) -> SkbSegs {
    let find = |btf: &crate::btf::Btf| -> anyhow::Result<SkbSegs> {
        let cb = btf.offset_of("sk_buff", &["cb"])?;
        let segs = btf.offset_of("tcp_skb_cb", &["tcp_gso_segs"])?;
        let total = btf.offset_of("tcp_sock", &["total_retrans"]);
        if let Err(e) = &total {
            log::warn!("retransmissions are counted from the tracepoint's records, not read from the socket ({e:#})");
        }
        Ok(SkbSegs { enabled: 1, offset: cb + segs, total_enabled: u32::from(total.is_ok()), total_retrans: total.unwrap_or(0) })
    };
    from_btf(btf, find, SkbSegs::disabled(), log::Level::Warn, "retransmissions will count skbs, not segments")
}

/// Where the BTF-typed lifecycle hook finds a socket's protocol, family, ports and addresses.
pub(super) fn sock_layout(btf: Option<&crate::btf::Btf>) -> SockLayout {
    let find = |btf: &crate::btf::Btf| -> anyhow::Result<SockLayout> {
        let at = |path: &[&str]| -> anyhow::Result<u16> { Ok(u16::try_from(btf.offset_of("sock", path)?)?) };
        let common = |m: &str| at(&["__sk_common", m]);
        Ok(SockLayout {
            present: 1,
            protocol: at(&["sk_protocol"])?,
            family: common("skc_family")?,
            sport: u16::try_from(btf.offset_of("inet_sock", &["inet_sport"])?)?,
            dport: common("skc_dport")?,
            rcv_saddr: common("skc_rcv_saddr")?,
            daddr: common("skc_daddr")?,
            v6_rcv_saddr: common("skc_v6_rcv_saddr")?,
            v6_daddr: common("skc_v6_daddr")?,
            _pad: 0,
        })
    };
    from_btf(btf, find, SockLayout::absent(), log::Level::Info, "the BTF-typed lifecycle hook cannot be used: the classic tracepoint follows state changes")
}

/// Socket tracepoints fire for every network namespace: keep to ours, found through the
/// kernel's BTF (`sock.__sk_common.skc_net` -> `net.ns.inum`). Without BTF offsets, every
/// namespace is observed, and the log says so.
pub(super) fn netns_filter(btf: Option<&crate::btf::Btf>) -> NetnsFilter {
    use std::os::unix::fs::MetadataExt;
    let find = |btf: &crate::btf::Btf| -> anyhow::Result<NetnsFilter> {
        Ok(NetnsFilter {
            enabled: 1,
            inum: std::fs::metadata("/proc/self/ns/net")?.ino() as u32,
            sock_net: btf.offset_of("sock", &["__sk_common", "skc_net"])?,
            net_inum: btf.offset_of("net", &["ns", "inum"])?,
        })
    };
    from_btf(
        btf,
        find,
        NetnsFilter::disabled(),
        log::Level::Warn,
        "socket events cannot be limited to this network namespace: connections of other namespaces may appear",
    )
}
