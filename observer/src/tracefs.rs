//! Tracepoint record layouts from tracefs `format` files, for the socket programs.
#![forbid(unsafe_code)]
use std::{fs, path::Path};

use observer_common::tracepoint::{TpLayout, ABSENT};

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// One `field:TYPE NAME;\toffset:N;\tsize:N;\tsigned:N;` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u16,
    pub size: u16,
}

/// Parses the fields of a tracepoint `format` file.
pub fn parse_format(text: &str) -> Vec<Field> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let decl = line.strip_prefix("field:")?.split(';').next()?;
            // The name is the last word of the declaration, without an array suffix.
            let name = decl.split_whitespace().last()?.split('[').next()?.to_owned();
            let num = |key: &str| -> Option<u16> { line.split(';').map(str::trim).find_map(|part| part.strip_prefix(key)).and_then(|v| v.parse().ok()) };
            Some(Field { name, offset: num("offset:")?, size: num("size:")? })
        })
        .collect()
}

/// The layout of a socket tracepoint record from its fields. `None` when the fields this
/// program needs to build a four-tuple are not there in a known form.
pub fn layout(fields: &[Field]) -> Option<TpLayout> {
    let find = |name: &str| fields.iter().find(|f| f.name == name);
    let off = |name: &str| find(name).map_or(ABSENT, |f| f.offset);
    let mut l = TpLayout::absent();
    l.skaddr = off("skaddr");
    l.skbaddr = off("skbaddr");
    l.sport = off("sport");
    l.dport = off("dport");
    l.family = off("family");
    l.saddr = off("saddr");
    l.daddr = off("daddr");
    l.saddr_v6 = off("saddr_v6");
    l.daddr_v6 = off("daddr_v6");
    l.oldstate = off("oldstate");
    l.newstate = off("newstate");
    l.protocol = off("protocol");
    l.err = off("err");
    // Since 6.10 some records keep whole `sockaddr_in6`-sized addresses instead (28 bytes).
    l.sockaddr_form = u16::from(find("saddr").is_some_and(|f| f.size == 28) && l.sport == ABSENT);
    let separate =
        l.sport != ABSENT && l.dport != ABSENT && l.family != ABSENT && l.saddr != ABSENT && l.daddr != ABSENT && l.saddr_v6 != ABSENT && l.daddr_v6 != ABSENT;
    if l.skaddr == ABSENT || !(separate || l.sockaddr_form == 1) {
        return None;
    }
    l.present = 1;
    Some(l)
}

/// Why a tracepoint cannot be used on this kernel.
#[derive(Debug, thiserror::Error)]
pub enum TracepointError {
    #[error("tracepoint {0} does not exist on this kernel (no {1})")]
    Missing(String, String),
    #[error("tracepoint {0}: {1} is not readable by this user (tracefs is root's by default): run the daemon as root, or mount tracefs readable by its group (`mount -t tracefs -o remount,gid=GROUP,mode=0750 tracefs {TRACEFS}`); tp_btf hooks need no tracefs")]
    Unreadable(String, String),
    #[error("tracepoint {0}: tracefs is not mounted at {TRACEFS} (mounting it needs CAP_SYS_ADMIN): `mount -t tracefs tracefs {TRACEFS}`")]
    NotMounted(String),
    #[error("tracepoint {0} has a record layout observer does not know: {1:?}")]
    UnknownLayout(String, Vec<String>),
}

/// Reads `events/<category>/<name>/format` and returns its layout.
pub fn read_layout(category: &str, name: &str) -> Result<TpLayout, TracepointError> {
    let path = Path::new(TRACEFS).join("events").join(category).join(name).join("format");
    let tp = format!("{category}:{name}");
    let denied = |e: &std::io::Error| e.kind() == std::io::ErrorKind::PermissionDenied;
    match fs::metadata(Path::new(TRACEFS).join("events")) {
        Err(e) if denied(&e) => return Err(TracepointError::Unreadable(tp, TRACEFS.into())),
        Err(_) => return Err(TracepointError::NotMounted(tp)),
        Ok(_) => {}
    }
    let text = fs::read_to_string(&path).map_err(|e| {
        if denied(&e) {
            TracepointError::Unreadable(tp.clone(), path.display().to_string())
        } else {
            TracepointError::Missing(tp.clone(), path.display().to_string())
        }
    })?;
    let fields = parse_format(&text);
    layout(&fields).ok_or_else(|| TracepointError::UnknownLayout(tp, fields.iter().map(|f| f.name.clone()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Record layouts as two kernels print them (6.18 here; 6.1 for the older tcp_send_reset).
    const SET_STATE_6_18: &str = "name: inet_sock_set_state\nID: 1\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;\n\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;\n\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;\n\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;\n\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;\n\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;\n\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;\n\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;\n\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;\n\nprint fmt: \"...\"\n";
    const SEND_RESET_6_18: &str = "format:\n\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;\n\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;\n\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;\n";
    const SEND_RESET_6_1: &str = "format:\n\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;\n\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;\n\tfield:__u16 family;\toffset:32;\tsize:2;\tsigned:0;\n\tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;\n\tfield:__u8 daddr[4];\toffset:38;\tsize:4;\tsigned:0;\n\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;\n\tfield:__u8 daddr_v6[16];\toffset:58;\tsize:16;\tsigned:0;\n";

    #[test]
    fn set_state_layout() {
        let l = layout(&parse_format(SET_STATE_6_18)).unwrap();
        assert_eq!((l.skaddr, l.oldstate, l.newstate, l.sport, l.dport, l.family, l.protocol), (8, 16, 20, 24, 26, 28, 30));
        assert_eq!((l.saddr, l.daddr, l.saddr_v6, l.daddr_v6), (32, 36, 40, 56));
        assert_eq!((l.sockaddr_form, l.err, l.present), (0, ABSENT, 1));
    }

    #[test]
    fn send_reset_changed_in_6_10() {
        let new = layout(&parse_format(SEND_RESET_6_18)).unwrap();
        assert_eq!((new.sockaddr_form, new.saddr, new.daddr, new.skaddr), (1, 32, 60, 16));
        let old = layout(&parse_format(SEND_RESET_6_1)).unwrap();
        assert_eq!((old.sockaddr_form, old.sport, old.saddr_v6), (0, 28, 42));
    }

    #[test]
    fn unknown_layouts_are_refused() {
        assert_eq!(layout(&parse_format("format:\n\tfield:int foo;\toffset:8;\tsize:4;\tsigned:1;\n")), None);
    }
}
