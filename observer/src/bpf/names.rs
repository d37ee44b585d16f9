//! Every name the daemon looks up in the kernel object, once: maps, programs and the globals it
//! writes before loading. The kernel crate declares them (`observer-ebpf/src/maps.rs`, the
//! program functions); a unit test checks this table against the embedded objects, so a rename
//! on either side fails the build's tests instead of a daemon at start-up.

/// Maps, by the name of their `static` in the kernel crate.
pub mod map {
    pub const CONNS: &str = "CONNS";
    pub const HALF_OPEN: &str = "HALF_OPEN";
    pub const GLOBAL: &str = "GLOBAL";
    pub const EVENTS: &str = "EVENTS";
    pub const PAYLOAD: &str = "PAYLOAD";
    pub const TRACE: &str = "TRACE";
    pub const HTTP_HINTS: &str = "HTTP_HINTS";
    pub const HTTP_PORTS: &str = "HTTP_PORTS";
    pub const TLS_NAMES: &str = "TLS_NAMES";
    pub const HTTP_FRAMES: &str = "HTTP_FRAMES";
    pub const FRAME_LOST: &str = "FRAME_LOST";
    pub const HTTP_AGG: &str = "HTTP_AGG";
    pub const TRACE_FILTERS: &str = "TRACE_FILTERS";
    pub const TRACE_SHAPES: &str = "TRACE_SHAPES";
    /// aya-log's ring (not ours: named for the load error that mentions it).
    pub const AYA_LOGS: &str = "AYA_LOGS";

    /// Every map above that the daemon opens, sizes or pins.
    pub const ALL: [&str; 14] =
        [CONNS, HALF_OPEN, GLOBAL, EVENTS, PAYLOAD, TRACE, HTTP_HINTS, HTTP_PORTS, TLS_NAMES, HTTP_FRAMES, FRAME_LOST, HTTP_AGG, TRACE_FILTERS, TRACE_SHAPES];
}

/// Programs, by their function's name.
pub mod program {
    pub const TC_INGRESS: &str = "observer_tc_ingress";
    pub const TC_EGRESS: &str = "observer_tc_egress";
    pub const SOCK_SET_STATE: &str = "observer_sock_set_state";
    /// The BTF-typed twin of [`SOCK_SET_STATE`].
    pub const SOCK_SET_STATE_BTF: &str = "observer_sock_set_state_btf";
    pub const TCP_RETRANSMIT: &str = "observer_tcp_retransmit";
    pub const TCP_SEND_RESET: &str = "observer_tcp_send_reset";
    pub const TCP_RECEIVE_RESET: &str = "observer_tcp_receive_reset";
    pub const TCP_RETRANSMIT_SYNACK: &str = "observer_tcp_retransmit_synack";

    pub const ALL: [&str; 8] =
        [TC_INGRESS, TC_EGRESS, SOCK_SET_STATE, SOCK_SET_STATE_BTF, TCP_RETRANSMIT, TCP_SEND_RESET, TCP_RECEIVE_RESET, TCP_RETRANSMIT_SYNACK];
}

/// Read-only globals the daemon sets at load time (`EbpfLoader::override_global`).
pub mod global {
    pub const NETNS_FILTER: &str = "NETNS_FILTER";
    pub const SOCK_LAYOUT: &str = "SOCK_LAYOUT";
    pub const RETRANSMIT_SEGS: &str = "RETRANSMIT_SEGS";
    pub const HTTP_PORTS_ONLY: &str = "HTTP_PORTS_ONLY";
    pub const KERNEL_HTTP: &str = "KERNEL_HTTP";
    pub const LAYOUT_SET_STATE: &str = "LAYOUT_SET_STATE";
    pub const LAYOUT_RETRANSMIT: &str = "LAYOUT_RETRANSMIT";
    pub const LAYOUT_SEND_RESET: &str = "LAYOUT_SEND_RESET";
    pub const LAYOUT_RECEIVE_RESET: &str = "LAYOUT_RECEIVE_RESET";
    pub const LAYOUT_RETRANSMIT_SYNACK: &str = "LAYOUT_RETRANSMIT_SYNACK";

    pub const ALL: [&str; 10] = [
        NETNS_FILTER,
        SOCK_LAYOUT,
        RETRANSMIT_SEGS,
        HTTP_PORTS_ONLY,
        KERNEL_HTTP,
        LAYOUT_SET_STATE,
        LAYOUT_RETRANSMIT,
        LAYOUT_SEND_RESET,
        LAYOUT_RECEIVE_RESET,
        LAYOUT_RETRANSMIT_SYNACK,
    ];
}

/// The socket tracepoints: (program, category, tracepoint, global holding its record layout).
pub const TRACEPOINTS: [(&str, &str, &str, &str); 5] = [
    (program::SOCK_SET_STATE, "sock", "inet_sock_set_state", global::LAYOUT_SET_STATE),
    (program::TCP_RETRANSMIT, "tcp", "tcp_retransmit_skb", global::LAYOUT_RETRANSMIT),
    (program::TCP_SEND_RESET, "tcp", "tcp_send_reset", global::LAYOUT_SEND_RESET),
    (program::TCP_RECEIVE_RESET, "tcp", "tcp_receive_reset", global::LAYOUT_RECEIVE_RESET),
    (program::TCP_RETRANSMIT_SYNACK, "tcp", "tcp_retransmit_synack", global::LAYOUT_RETRANSMIT_SYNACK),
];

#[cfg(all(test, not(observer_no_ebpf)))]
mod tests {
    use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};

    use super::*;

    /// (name, section) of every named symbol of an object.
    fn symbols(elf: &[u8]) -> Vec<(String, String)> {
        let file = object::File::parse(elf).expect("the embedded kernel object is an ELF file");
        file.symbols()
            .filter_map(|s| {
                let section = file.section_by_index(s.section_index()?).ok()?;
                Some((s.name().ok()?.to_owned(), section.name().ok()?.to_owned()))
            })
            .collect()
    }

    /// Program entry points: function symbols in an executable section other than `.text`
    /// (aya puts each program in its own section: `classifier`, `tracepoint`, `tp_btf/...`).
    fn programs(elf: &[u8]) -> Vec<String> {
        let file = object::File::parse(elf).expect("an ELF file");
        file.symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.is_global())
            .filter_map(|s| {
                let section = file.section_by_index(s.section_index()?).ok()?;
                (section.kind() == SectionKind::Text && section.name().ok()? != ".text").then(|| s.name().ok().map(str::to_owned))?
            })
            .collect()
    }

    #[test]
    fn every_name_is_in_both_kernel_objects_and_every_program_has_a_name() {
        for (which, elf) in [("full", super::super::EBPF_OBJECT), ("lite", super::super::EBPF_OBJECT_LITE)] {
            let symbols = symbols(elf);
            let section_of = |name: &str| symbols.iter().find(|(n, _)| n == name).map(|(_, s)| s.as_str());
            for name in map::ALL {
                let section = section_of(name).unwrap_or_else(|| panic!("{which} object: no map {name}"));
                assert!(section.contains("maps"), "{which} object: {name} is in {section}, not a maps section");
            }
            for name in global::ALL {
                let section = section_of(name).unwrap_or_else(|| panic!("{which} object: no global {name}"));
                assert!(
                    section.starts_with(".rodata") || section.starts_with(".bss") || section.starts_with(".data"),
                    "{which} object: global {name} is in {section}"
                );
            }
            let mut found = programs(elf);
            found.sort();
            let mut named = program::ALL.map(str::to_owned).to_vec();
            named.sort();
            assert_eq!(found, named, "{which} object: the programs it holds and the ones named here");
        }
    }
}
