//! The bounded `upstream` label of outbound connections (`observer_upstream_*`): the gateway's
//! requests to the servers behind it, by upstream, equal to what those servers logged.
//! - Without rules, each upstream endpoint is its own label (`198.18.2.2:80`): nginx's default
//!   proxy opens one connection per request, so every count arrives with a connection's close.
//! - With rules (`--upstream ENDPOINT=NAME`, first match wins) over a keep-alive pool whose
//!   connections stay open: the counts arrive with each scrape; a location pointing at a port
//!   nobody listens on gives refused connections under the network rule's name, and no request.
use std::{net::SocketAddr, time::Duration};

use observer_tests::{
    addr::{self, proxy_url},
    curl,
    http_view::Metrics,
    root_or_skip, Nginx, Observer, Topology,
};

const WAIT: Duration = Duration::from_secs(30);

/// Polls /metrics until `done`, else panics with the last text.
fn metrics_until(observer: &Observer, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
    let mut last = String::new();
    observer_tests::poll(WAIT, Duration::from_millis(50), || {
        let m = Metrics::new(observer.metrics());
        last = m.text.clone();
        done(&m).then_some(m)
    })
    .unwrap_or_else(|| panic!("{what}; /metrics:\n{}", last.lines().filter(|l| l.contains("upstream")).collect::<Vec<_>>().join("\n")))
}

#[test]
fn each_upstream_endpoint_counts_the_requests_its_server_logged() {
    const TEST: &str = "each_upstream_endpoint_counts_the_requests_its_server_logged";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = observer_tests::Lab::start(TEST);
    let paths = ["/ok", "/ok", "/status/503", "/status/404", "/ok", "/missing"];
    let t = curl(&lab.topo.client, &paths.map(proxy_url), &[]);
    assert_eq!(t.iter().map(|t| t.http_code).collect::<Vec<_>>(), vec![200, 200, 503, 404, 200, 404]);
    let log = lab.upstream.wait_for_requests(paths.len());
    let upstream = SocketAddr::new(addr::UPSTREAM_V4.into(), 80).to_string();
    let u = [("upstream", upstream.as_str())];
    let m = metrics_until(&lab.observer, "6 upstream requests and 6 closed upstream connections", |m| {
        m.count("observer_upstream_http_requests_total", &u) == 6 && m.count("observer_upstream_connections_closed_total", &u) == 6
    });
    let logged = |class: u16| log.entries.iter().filter(|e| e.status / 100 == class).count() as u64;
    for (class, hundreds, n) in [("2xx", 2, 3), ("4xx", 4, 2), ("5xx", 5, 1)] {
        assert_eq!(m.count("observer_upstream_http_responses_total", &[u[0], ("class", class)]), n, "{class}");
        assert_eq!(n, logged(hundreds), "the upstream's access log agrees on {class}");
    }
    assert_eq!(m.count("observer_upstream_http_requests_total", &[]), 6, "only one upstream label: {}", m.text);
    assert_eq!(m.count("observer_upstream_http_requests_unanswered_total", &[]), 0);
    assert_eq!(m.count("observer_upstream_connections_opened_total", &u), 6, "one connection per request (HTTP/1.0 to the upstream)");
    assert_eq!(m.count("observer_upstream_connections_closed_total", &[u[0], ("reason", "normal")]), 6);
    assert_eq!(m.count("observer_upstream_http_requests_total", &[("upstream", "other")]), 0);
    // Inbound connections (the client's) have no upstream.
    assert_eq!(m.count("observer_http_requests_total", &[("role", "inbound")]), 6);
    // Scrapes after the closes add nothing: each connection counted once.
    std::thread::sleep(Duration::from_millis(1200));
    let again = Metrics::new(lab.observer.metrics());
    assert_eq!(again.count("observer_upstream_http_requests_total", &u), 6);
    assert_eq!(again.count("observer_upstream_http_responses_total", &u), 6);
}

#[test]
fn rules_name_upstreams_on_open_keepalive_connections_and_refused_ones() {
    const TEST: &str = "rules_name_upstreams_on_open_keepalive_connections_and_refused_ones";
    if !root_or_skip(TEST) {
        return;
    }
    let topo = Topology::new(TEST);
    let upstream = Nginx::upstream(&topo);
    let pool = format!("    upstream backend {{ server {}:80; keepalive 16; }}\n", addr::UPSTREAM_V4);
    // `/dead/` goes to a port nobody listens on: the upstream refuses, nginx answers 502.
    let locations = format!(
        "        location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n        location /dead/ {{ proxy_pass http://{}:81; }}\n",
        addr::UPSTREAM_V4
    );
    let listen = vec![SocketAddr::new(addr::GATEWAY_CLIENT_SIDE_V4.into(), 80)];
    let _proxy = Nginx::start_with_capacity(&topo.gateway, "proxy", topo.path("proxy"), listen, &locations, None, &pool);
    let observer = Observer::start_with(
        &topo,
        &[addr::GW_CLIENT_IF, addr::GW_UPSTREAM_IF],
        &["--upstream", "198.18.2.2:80=backend", "--upstream", "198.18.2.0/24=upstream-net"],
    );
    let paths = ["/ok", "/status/503", "/dead/a", "/ok", "/dead/b", "/status/201"];
    let t = curl(&topo.client, &paths.map(proxy_url), &[]);
    assert_eq!(t.iter().map(|t| t.http_code).collect::<Vec<_>>(), vec![200, 503, 502, 200, 502, 201]);
    upstream.wait_for_requests(4);
    let backend = [("upstream", "backend")];
    let net = [("upstream", "upstream-net")];
    let m = metrics_until(&observer, "4 requests to backend, 2 refused connections to upstream-net", |m| {
        m.count("observer_upstream_http_requests_total", &backend) == 4
            && m.count("observer_upstream_connections_closed_total", &[net[0], ("reason", "refused")]) == 2
    });
    assert_eq!(m.count("observer_upstream_http_responses_total", &[backend[0], ("class", "2xx")]), 3);
    assert_eq!(m.count("observer_upstream_http_responses_total", &[backend[0], ("class", "5xx")]), 1);
    assert_eq!(m.count("observer_upstream_http_requests_total", &net), 0, "refused connections carry no request");
    assert_eq!(m.count("observer_upstream_connections_opened_total", &net), 0, "a refused connection never opened");
    assert_eq!(m.count("observer_upstream_connections_closed_total", &backend), 0, "the pool's connection is still open");
    assert!(m.count("observer_upstream_connections_opened_total", &backend) >= 1);
    assert!(!m.text.contains("upstream=\"198.18.2.2:80\""), "with rules, endpoints are not labels:\n{}", m.text);
    let status = observer.status();
    assert_eq!(status["config"]["upstreams"]["rules"], serde_json::json!(["backend", "upstream-net"]), "{status}");
    // The open connection's counts were added at scrapes, as deltas: once each.
    std::thread::sleep(Duration::from_millis(1200));
    let again = Metrics::new(observer.metrics());
    assert_eq!(again.count("observer_upstream_http_requests_total", &backend), 4);
    assert_eq!(again.count("observer_upstream_http_responses_total", &backend), 4);
}
