//! Message bodies and what frames them, end to end: bodies (and request bodies, one of them
//! chunked) full of fake message heads stay bodies, chunked responses with extensions and trailers
//! are framed exactly, `100 Continue` is an interim response of a request counted once, and
//! responses without a body (HEAD, 204, 304) never swallow the next one.
//!
//! Ground truth, and how entries are matched to it: see `observer_tests::http_lab`.
use std::{fs, io::Write, net::SocketAddr};

use observer_tests::{
    addr::http_base,
    http_lab::{
        assert_http, assert_metrics, assert_outbound_nginx, assert_outbound_scripted, assert_proxy_log, assert_recent, curl_ok, entry_of, fake_heads,
        one_connection, proxy_v4, request_of, script, url, url_port, HttpLab, GATEWAY_SCRIPTED_PORT, UPSTREAM_SCRIPTED_PORT,
    },
    http_view::expected_window,
    root_or_skip,
    scripted::{connect, CurlOp, ResponseReader, ScriptedServer, Served},
    ConnectionExt,
};

#[test]
fn status_lines_inside_bodies_are_not_responses() {
    const TEST: &str = "status_lines_inside_bodies_are_not_responses";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    // Small bodies reach the daemon whole; large ones are skipped in the kernel once the daemon
    // knows their length; odd sizes put fake heads across the 4 KiB record boundaries.
    let files: [(&str, usize); 4] = [("starts", 3_000), ("odd", 12_345), ("large", 300_000), ("huge", 2_000_000)];
    for (name, n) in files {
        lab.add_fake(name, &fake_heads(n));
    }
    // Request bodies full of request lines too, one of them chunked.
    let small_post = lab.topo.path("post-small");
    let large_post = lab.topo.path("post-large");
    fs::write(&small_post, fake_heads(5_000)).unwrap();
    fs::write(&large_post, fake_heads(200_000)).unwrap();
    let post = |file: &std::path::Path| format!("@{}", file.display());
    let (small_arg, large_arg) = (post(&small_post), post(&large_post));
    let ops = vec![
        CurlOp::get(url(proxy_v4(), "/fake/starts")),
        CurlOp::get(url(proxy_v4(), "/fake/odd")),
        CurlOp::get(url(proxy_v4(), "/ok")).with(&["--data-binary", &small_arg, "--header", "Expect:"]),
        CurlOp::get(url(proxy_v4(), "/fake/large")),
        CurlOp::get(url(proxy_v4(), "/ok")).with(&["--data-binary", &large_arg, "--header", "Expect:"]),
        CurlOp::get(url(proxy_v4(), "/ok")).with(&["--data-binary", &large_arg, "--header", "Expect:", "--header", "Transfer-Encoding: chunked"]),
        CurlOp::head(url(proxy_v4(), "/fake/huge")),
        CurlOp::get(url(proxy_v4(), "/fake/huge")),
        CurlOp::get(url(proxy_v4(), "/fake/starts")),
    ];
    let run = curl_ok(&lab, &ops);
    let client_end = one_connection(&run);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, vec![200; ops.len()]);
    assert_eq!(run.status_lines, codes, "curl itself saw one status line per request");
    let sizes: Vec<u64> = run.transfers.iter().map(|t| t.size_download).collect();
    assert_eq!(sizes, vec![3_000, 12_345, 3, 300_000, 3, 3, 0, 2_000_000, 3_000], "bodies as curl received them");
    assert!(run.stderr.contains("> Transfer-Encoding: chunked"), "curl sent a chunked request body:\n{}", run.stderr);
    assert_proxy_log(&lab, client_end, &codes);

    let n = ops.len() as u64;
    let snap = lab.wait_settled("the client's keep-alive connection", 1, n, n, |c| c.remote_addr() == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &expected_window(n, &codes, 0));
    let want: Vec<(u16, &str, &str)> = ops.iter().map(|o| (200, o.method(), o.url.strip_prefix(&http_base(proxy_v4())).unwrap())).collect();
    assert_recent(c, h, &want);
    assert_outbound_nginx(&lab, ops.len());
    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, n, &codes, 0);
    assert_metrics(&m, "outbound", 80, n, &codes, 0);
}

/// Chunked operations for the scripted servers: (status, pieces, piece length).
const CHUNKED: &[(u16, u64, u64)] = &[(200, 3, 100), (404, 1, 10), (500, 5, 5_000), (200, 2, 40_000), (200, 0, 0), (201, 300, 7), (503, 1, 1)];

#[test]
fn chunked_responses_with_extensions_and_trailers_are_framed_exactly() {
    const TEST: &str = "chunked_responses_with_extensions_and_trailers_are_framed_exactly";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);

    // 1. Through nginx: the scripted upstream's hand-made chunked responses (extensions,
    //    trailers) on the outbound side, nginx's own chunked re-encoding on the inbound side.
    let mut ops: Vec<CurlOp> = CHUNKED.iter().map(|(s, p, l)| CurlOp::get(url(proxy_v4(), &format!("/scripted/chunked/{s}/{p}/{l}")))).collect();
    ops.push(CurlOp::get(url(proxy_v4(), "/ok")));
    let run = curl_ok(&lab, &ops);
    let client_end = one_connection(&run);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    let mut want_codes: Vec<u16> = CHUNKED.iter().map(|c| c.0).collect();
    want_codes.push(200);
    assert_eq!(codes, want_codes);
    for (t, (_, p, l)) in run.transfers.iter().zip(CHUNKED) {
        assert_eq!(t.size_download, p * l, "decoded body of {t:?}");
    }
    assert_proxy_log(&lab, client_end, &codes);
    let n = ops.len() as u64;
    let snap = lab.wait_settled("the client's keep-alive connection", 1, n, n, |c| c.remote_addr() == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &expected_window(n, &run.status_lines, 0));
    let targets: Vec<String> = ops.iter().map(|o| o.url.strip_prefix(&http_base(proxy_v4())).unwrap().to_owned()).collect();
    let want: Vec<(u16, &str, &str)> = codes.iter().zip(&targets).map(|(s, t)| (*s, "GET", t.as_str())).collect();
    assert_recent(c, h, &want);
    let served = assert_outbound_scripted(&lab, CHUNKED.len());
    assert_eq!(served.iter().map(|s| s.status).collect::<Vec<_>>(), &want_codes[..CHUNKED.len()], "what the scripted upstream wrote");
    assert_outbound_nginx(&lab, 1);

    // 2. Without nginx: a scripted server in the gateway answers one keep-alive connection with
    //    the hand-made chunked responses, the last one delimited by closing the connection.
    let gateway = ScriptedServer::start(&lab.topo.gateway, SocketAddr::new(proxy_v4(), GATEWAY_SCRIPTED_PORT), script);
    let mut ops: Vec<CurlOp> =
        CHUNKED.iter().map(|(s, p, l)| CurlOp::get(url_port(proxy_v4(), GATEWAY_SCRIPTED_PORT, &format!("/chunked/{s}/{p}/{l}")))).collect();
    ops.push(CurlOp::get(url_port(proxy_v4(), GATEWAY_SCRIPTED_PORT, "/until-close/200/20000")));
    let direct = curl_ok(&lab, &ops);
    let direct_end = one_connection(&direct);
    let served: Vec<Served> = gateway.served().into_iter().filter(|s| s.peer == direct_end).collect();
    let direct_codes: Vec<u16> = served.iter().map(|s| s.status).collect();
    assert_eq!(direct.status_lines, direct_codes, "status lines curl received vs what the scripted server wrote");
    assert_eq!(direct.transfers.last().unwrap().size_download, 20_000);
    let n = ops.len() as u64;
    let snap = lab.wait_settled("the keep-alive connection to the scripted server", 1, n, n, |c| c.remote_addr() == direct_end);
    let c = entry_of(&snap, direct_end);
    assert_eq!(c.local_addr().port(), GATEWAY_SCRIPTED_PORT);
    let h = assert_http(&lab, c, &expected_window(n, &direct_codes, 0));
    assert_eq!(h.last_status, Some(200));
    let want: Vec<(u16, &str, &str)> = served.iter().map(|s| (s.status, s.method.as_str(), s.target.as_str())).collect();
    assert_recent(c, h, &want);

    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, codes.len() as u64, &codes, 0);
    assert_metrics(&m, "outbound", UPSTREAM_SCRIPTED_PORT, CHUNKED.len() as u64, &want_codes[..CHUNKED.len()], 0);
    assert_metrics(&m, "inbound", GATEWAY_SCRIPTED_PORT, direct_codes.len() as u64, &direct_codes, 0);
}

#[test]
fn continue_is_an_interim_1xx_and_the_request_counts_once() {
    const TEST: &str = "continue_is_an_interim_1xx_and_the_request_counts_once";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    let big = lab.topo.path("post-big");
    let small = lab.topo.path("post-small");
    fs::write(&big, fake_heads(2_000_000)).unwrap();
    fs::write(&small, b"a=1&b=2").unwrap();
    let (big_arg, small_arg) = (format!("@{}", big.display()), format!("@{}", small.display()));

    // 1. curl through nginx: nginx answers Expect itself with 100 Continue.
    let ops = vec![
        CurlOp::get(url(proxy_v4(), "/ok")).with(&["--data-binary", &big_arg, "--header", "Expect: 100-continue"]),
        CurlOp::get(url(proxy_v4(), "/status/404")),
        CurlOp::get(url(proxy_v4(), "/ok")).with(&["--data-binary", &small_arg, "--header", "Expect: 100-continue"]),
    ];
    let run = curl_ok(&lab, &ops);
    let client_end = one_connection(&run);
    assert_eq!(run.status_lines, vec![100, 200, 404, 100, 200], "status lines curl received:\n{}", run.stderr);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    let log = assert_proxy_log(&lab, client_end, &codes);
    assert!(log[0].request_length > 2_000_000, "the proxy received the big body: {:?}", log[0]);
    let snap = lab.wait_settled("the client's keep-alive connection", 1, 3, 5, |c| c.remote_addr() == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &expected_window(3, &run.status_lines, 0));
    assert_eq!(h.last_status, Some(200));
    assert_recent(c, h, &[(100, "POST", "/ok"), (200, "POST", "/ok"), (404, "GET", "/status/404"), (100, "POST", "/ok"), (200, "POST", "/ok")]);
    // nginx does not forward Expect: the upstream answers each request once. (The upstream logs a
    // request when it is done with it, which for the big upload can come after the next one: compare
    // the statuses, not their order in its log.)
    let upstream = assert_outbound_nginx(&lab, 3);
    let mut logged: Vec<u16> = upstream.iter().map(|e| e.status).collect();
    let mut sent = codes.clone();
    logged.sort_unstable();
    sent.sort_unstable();
    assert_eq!(logged, sent);

    // 2. A raw client and a scripted server in the gateway: the head, 100 Continue, the body, the
    //    final response, then another request on the same connection.
    let gateway = ScriptedServer::start(&lab.topo.gateway, SocketAddr::new(proxy_v4(), GATEWAY_SCRIPTED_PORT), script);
    let mut s = connect(&lab.topo.client, gateway.addr);
    let client_end = s.local_addr().unwrap();
    let body = fake_heads(5_000);
    write!(s, "POST /continue/201 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n", body.len()).unwrap();
    let mut reader = ResponseReader::new(s.try_clone().unwrap());
    let interim = reader.read(false).expect("100 Continue");
    assert_eq!(interim.status, 100);
    s.write_all(&body).unwrap();
    let done = reader.read(false).expect("the final response");
    assert_eq!((done.status, done.body.as_slice()), (201, &b"got 5000 bytes\n"[..]));
    s.write_all(b"GET /chunked/200/2/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let last = reader.read(false).expect("the last response");
    assert_eq!((last.status, last.body.len()), (200, 20));
    drop(reader);
    drop(s);
    let served: Vec<u16> = gateway.served().iter().filter(|x| x.peer == client_end).map(|x| x.status).collect();
    assert_eq!(served, vec![100, 201, 200]);
    let snap = lab.wait_settled("the raw client's connection", 1, 2, 3, |c| c.remote_addr() == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &expected_window(2, &served, 0));
    assert_recent(c, h, &[(100, "POST", "/continue/201"), (201, "POST", "/continue/201"), (200, "GET", "/chunked/200/2/10")]);

    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, 3, &run.status_lines, 0);
    assert_metrics(&m, "outbound", 80, 3, &codes, 0);
    assert_metrics(&m, "inbound", GATEWAY_SCRIPTED_PORT, 2, &served, 0);
}

#[test]
fn head_responses_do_not_swallow_the_next_response() {
    const TEST: &str = "head_responses_do_not_swallow_the_next_response";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    let ops = vec![
        CurlOp::head(url(proxy_v4(), "/size/100000")),
        CurlOp::get(url(proxy_v4(), "/ok")),
        CurlOp::head(url(proxy_v4(), "/size/10000")),
        CurlOp::get(url(proxy_v4(), "/size/1000")),
        CurlOp::head(url(proxy_v4(), "/status/404")),
        CurlOp::get(url(proxy_v4(), "/status/503")),
        CurlOp::head(url(proxy_v4(), "/size/1000000")),
        CurlOp::head(url(proxy_v4(), "/size/0")),
        CurlOp::get(url(proxy_v4(), "/size/100")),
        CurlOp::head(url(proxy_v4(), "/redirect")),
        CurlOp::get(url(proxy_v4(), "/status/429")),
    ];
    let run = curl_ok(&lab, &ops);
    let client_end = one_connection(&run);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, vec![200, 200, 200, 200, 404, 503, 200, 200, 200, 301, 429]);
    for (t, o) in run.transfers.iter().zip(&ops) {
        if o.method() == "HEAD" {
            assert_eq!(t.size_download, 0, "a HEAD response has no body: {t:?}");
        }
    }
    let log = assert_proxy_log(&lab, client_end, &codes);
    let logged: Vec<String> = log.iter().map(|e| request_of(e).0).collect();
    assert_eq!(logged, ops.iter().map(|o| o.method().to_owned()).collect::<Vec<_>>(), "methods the proxy logged");
    let n = ops.len() as u64;
    let snap = lab.wait_settled("the client's keep-alive connection", 1, n, n, |c| c.remote_addr() == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &expected_window(n, &codes, 0));
    let want: Vec<(u16, &str, &str)> = ops.iter().zip(&codes).map(|(o, s)| (*s, o.method(), o.url.strip_prefix(&http_base(proxy_v4())).unwrap())).collect();
    assert_recent(c, h, &want);
    let upstream = assert_outbound_nginx(&lab, ops.len());
    assert_eq!(upstream.iter().map(|e| request_of(e).0).collect::<Vec<_>>(), logged, "nginx forwards HEAD as HEAD");
    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, n, &codes, 0);
    assert_metrics(&m, "outbound", 80, n, &codes, 0);
}
