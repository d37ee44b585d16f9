//! The Prometheus text format as a scraper reads it, and `promtool check metrics` on it.
use std::{
    collections::BTreeMap,
    io::Write,
    process::{Command, ExitStatus, Stdio},
    time::Duration,
};

use crate::{poll, Observer};

/// One sample line of the Prometheus text format.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    /// The line as received.
    pub line: String,
}

/// A parsed exposition: `# TYPE` per family and every sample line.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Exposition {
    /// Parses the text format; panics, quoting the line, on anything it cannot read.
    pub fn parse(text: &str) -> Exposition {
        let mut e = Exposition { text: text.to_owned(), ..Default::default() };
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE line {line:?}"));
                e.types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            e.samples.push(parse_sample(line).unwrap_or_else(|| panic!("cannot parse sample line {line:?}")));
        }
        e
    }

    /// Samples of the metric called exactly `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The family a sample belongs to: its name, or for histogram/summary parts the name without
    /// `_bucket`, `_sum`, `_count`.
    pub fn family_of<'a>(&'a self, sample_name: &'a str) -> &'a str {
        if self.types.contains_key(sample_name) {
            return sample_name;
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample_name.strip_suffix(suffix) {
                if self.types.contains_key(base) {
                    return base;
                }
            }
        }
        sample_name
    }

    /// The value of the sample `name` with exactly `labels`, if present.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.named(name).find(|s| s.labels == want).map(|s| s.value)
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name_end, mut labels) = match line.find('{') {
        Some(open) if open < line.find(' ').unwrap_or(usize::MAX) => (open, BTreeMap::new()),
        _ => (line.find(' ')?, BTreeMap::new()),
    };
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        // name="value" pairs; values may hold escaped quotes, backslashes and newlines.
        let mut chars = inner.char_indices().peekable();
        let mut consumed = None;
        loop {
            while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    consumed = Some(*i + 1);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, '"') => break,
                    (_, c) => value.push(c),
                }
            }
            labels.insert(key, value);
        }
        rest = &inner[consumed?..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name, labels, value, line: line.to_owned() })
}

/// What `promtool check metrics` said about a text: its exit status and what it printed (lint
/// findings go to stdout or stderr depending on the version).
pub struct PromtoolReport {
    pub status: ExitStatus,
    pub output: String,
}

/// Pipes `text` to `promtool check metrics` on stdin.
pub fn promtool_check_metrics(text: &str) -> PromtoolReport {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool (Debian package `prometheus`, see `cargo xtask setup`): {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let text = text.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().expect("waiting for promtool");
    writer.join().expect("writer thread").expect("writing to promtool");
    PromtoolReport { status: out.status, output: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)) }
}

/// Polls `/metrics` until `done` holds; panics with the last text.
pub fn wait_metrics(obs: &Observer, what: &str, timeout: Duration, done: impl Fn(&Exposition) -> bool) -> Exposition {
    let mut last = Exposition::default();
    poll(timeout, Duration::from_millis(100), || {
        last = Exposition::parse(&obs.metrics());
        done(&last).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("waited {timeout:?} for /metrics to show {what}; it has:\n{}", last.text))
}
