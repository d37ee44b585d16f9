//! `cargo xtask demo`, run to the end as a new user would: `observer top` puts the connection the
//! demo made bad first, with exactly the 502s nginx served on it, `observer trace` shows one of
//! them live, and nothing the demo made is left behind.
//!
//! Ground truth: the demo's own count of the 502s its bad connection received, which it checks
//! against nginx's access log and prints beside it; `ip netns list` and `/proc` afterwards.
use std::{
    path::Path,
    process::{Command, Stdio},
};

use observer_tests::{observer::observer_bin, root_or_skip};

/// The rows of the first table after the line `$ observer top ...` that follows `from`, with the
/// index of the 5XX cell in a row's whitespace-separated cells.
fn top_rows<'a>(lines: &[&'a str], from: usize) -> (usize, Vec<&'a str>) {
    let top = from + lines[from..].iter().position(|l| l.starts_with("$ observer top")).expect("a top snapshot");
    let header = top + lines[top..].iter().position(|l| l.starts_with("CONNECTION (local remote)")).expect("the table's header");
    // The header's first cell is three words, a row's connection two.
    let five_xx = lines[header].split_whitespace().position(|c| c == "5XX").expect("a 5XX column") - 1;
    let rows = lines[header + 1..].iter().copied().take_while(|l| !l.trim().is_empty() && !l.starts_with("502s served")).collect();
    (five_xx, rows)
}

#[test]
fn the_demo_finds_the_bad_connection_traces_its_502s_and_leaves_nothing_behind() {
    const TEST: &str = "the_demo_finds_the_bad_connection_traces_its_502s_and_leaves_nothing_behind";
    if !root_or_skip(TEST) {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--duration", "15"])
        .env("OBSERVER_BIN", observer_bin())
        .stdin(Stdio::null())
        .output()
        .expect("running the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the demo failed ({}):\n{stdout}\n{stderr}", out.status);
    let lines: Vec<&str> = stdout.lines().collect();
    let field = |prefix: &str| lines.iter().find_map(|l| l.strip_prefix(prefix)).unwrap_or_else(|| panic!("no line {prefix:?}:\n{stdout}")).trim().to_owned();
    let bad = field("bad connection: ");
    let namespaces = field("namespaces: ");

    // Both snapshots (the first, and the one after the trace and the rest of the traffic).
    let mut from = 0;
    for _ in 0..2 {
        let (five_xx, rows) = top_rows(&lines, from);
        let first = rows.first().unwrap_or_else(|| panic!("an empty top snapshot:\n{stdout}"));
        assert!(first.starts_with(&format!("{bad} ")), "the bad connection {bad} is first:\n{stdout}");
        let served_at = from + lines[from..].iter().position(|l| l.starts_with("502s served on it: ")).expect("the served count");
        let served = lines[served_at].strip_prefix("502s served on it: ").unwrap();
        let (count, logged) = served.split_once(" (nginx's access log: ").expect("the access log's count");
        assert_eq!(count, logged.trim_end_matches(')'), "the demo's count and nginx's access log agree: {served}");
        let cells: Vec<&str> = first.split_whitespace().collect();
        assert_eq!(cells[five_xx], count, "top's 5XX for {bad} is what nginx served:\n{stdout}");
        assert!(count.parse::<u64>().unwrap() > 0, "{stdout}");
        for row in &rows[1..] {
            assert!(!row.starts_with(&format!("{bad} ")), "the bad connection appears once:\n{stdout}");
        }
        from = served_at + 1;
    }

    let trace = lines.iter().position(|l| l.starts_with("$ observer trace ")).expect("the trace");
    assert_eq!(lines[trace], format!("$ observer trace {bad}"));
    assert!(lines[trace..].iter().any(|l| l.contains("← 502")), "the trace shows a 502 live:\n{stdout}");

    for ns in namespaces.split_whitespace() {
        assert!(!Path::new("/run/netns").join(ns).exists(), "namespace {ns} is left behind");
    }
    let listed = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    let listed = String::from_utf8_lossy(&listed.stdout);
    for ns in namespaces.split_whitespace() {
        assert!(!listed.lines().any(|l| l.split_whitespace().next() == Some(ns)), "namespace {ns} is left behind:\n{listed}");
    }
    let pid = field("observer daemon pid: ");
    assert!(!Path::new("/proc").join(&pid).exists(), "the daemon (pid {pid}) is still running");
}
