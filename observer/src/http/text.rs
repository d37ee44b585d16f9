//! The text a request carries (method, target) as the daemon keeps it: shared [`Text`], the
//! methods the classifier knows allocated once, targets without their query strings unless the
//! operator asked for them, and method and target read from a kernel message record's first bytes.
use std::sync::{Arc, OnceLock};

use observer_common::http::Method;

/// Text a request carries (method, target): shared, so that the request waiting for its response,
/// what framing reports and the history entry hold one copy.
pub type Text = Arc<str>;

/// The methods the classifier knows ([`Method`], in the order of their numbers), as [`Text`]
/// allocated once for the daemon's life.
fn known_methods() -> &'static [Text] {
    static KNOWN: OnceLock<Vec<Text>> = OnceLock::new();
    KNOWN.get_or_init(|| (1..=u8::MAX).map_while(Method::from_u8).map(|m| Text::from(m.name())).collect())
}

/// Whether request targets keep their query strings (`observer run --show-query`). Off by
/// default: tokens in URLs stay out of the API and traces.
static KEEP_QUERY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_keep_query(keep: bool) {
    KEEP_QUERY.store(keep, std::sync::atomic::Ordering::Relaxed);
}

/// A request target as shown: its path, and `?…` where a query string was cut off (unless the
/// operator asked to keep queries).
pub(super) fn shown_target(target: Text) -> Text {
    if KEEP_QUERY.load(std::sync::atomic::Ordering::Relaxed) {
        return target;
    }
    match target.find('?') {
        Some(i) => Text::from(format!("{}?…", &target[..i])),
        None => target,
    }
}

/// The shared text of a known method.
fn known_method(m: Method) -> Text {
    known_methods()[(m as usize) - 1].clone()
}

/// A method as [`Text`]: a known one shared, any other allocated.
pub fn method_text(m: &str) -> Text {
    known_methods().iter().find(|k| ***k == *m).cloned().unwrap_or_else(|| Text::from(m))
}

/// Method and target from the first bytes of a request line (as many as the kernel's message
/// record carries: a target cut short ends in `…`).
pub(super) fn request_line(bytes: &[u8], method: u8) -> (Text, Text) {
    let known = Method::from_u8(method);
    let mut parts = bytes.splitn(3, |&b| b == b' ');
    let (m, t, rest) = (parts.next().unwrap_or_default(), parts.next(), parts.next());
    let method = match known {
        Some(k) => known_method(k),
        None if !m.is_empty() && t.is_some() => method_text(&String::from_utf8_lossy(m)),
        None => method_text("?"),
    };
    let target = match (t, rest) {
        (Some(t), Some(_)) => Text::from(String::from_utf8_lossy(t)),
        (Some(t), None) if !t.is_empty() => Text::from(format!("{}…", String::from_utf8_lossy(t))),
        _ => Text::from("?"),
    };
    (method, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_lose_their_query_strings_unless_asked() {
        assert_eq!(&*shown_target("/login?token=s3cret".into()), "/login?…");
        assert_eq!(&*shown_target("/plain".into()), "/plain");
    }

    #[test]
    fn request_lines_from_message_records() {
        assert_eq!(request_line(b"GET /api/orders?id=1 HTTP/1.1\r\nHost: x", Method::Get as u8), ("GET".into(), "/api/orders?id=1".into()));
        // Cut short: the target says so.
        assert_eq!(request_line(b"GET /a/very/long/pa", Method::Get as u8), ("GET".into(), "/a/very/long/pa…".into()));
        // A method the kernel does not know by name comes from the bytes.
        assert_eq!(request_line(b"PROPFIND /dav HTTP/1.1", 0), ("PROPFIND".into(), "/dav".into()));
        assert_eq!(request_line(b"", 0), ("?".into(), "?".into()));
        // Known methods are shared text, by number.
        for m in (1..=u8::MAX).map_while(Method::from_u8) {
            assert_eq!(&*known_method(m), m.name());
        }
        assert_eq!(known_methods().len(), 9);
    }
}
