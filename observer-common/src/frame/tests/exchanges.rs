//! Whole exchanges: keep-alive, pipelining, bodies, chunked coding, responses without a body,
//! interim responses, empty lines and case.

use super::*;

#[test]
fn keep_alive_exchanges() {
    let mut c = Conn::new();
    c.send(C, &get("/a"));
    c.send(S, &resp(200, "hello"));
    c.send(C, b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world");
    c.send(S, &resp(201, ""));
    c.send(C, b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    c.send(S, b"HTTP/1.1 204 No Content\r\n\r\n");
    c.send(C, b"DELETE /d HTTP/1.1\r\n\r\n");
    c.send(S, b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnope\r\n0\r\n\r\n");
    c.send(C, b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
    c.send(S, &resp(302, ""));
    c.send(C, b"PATCH /p HTTP/1.0\r\ncontent-length: 2\r\n\r\n{}");
    c.send(S, &resp(503, "busy"));
    assert_eq!(c.methods(), vec![Method::Get, Method::Post, Method::Put, Method::Delete, Method::Options, Method::Patch]);
    assert_eq!(c.statuses(), vec![200, 201, 204, 404, 302, 503]);
    let n = c.f.counts;
    assert_eq!((n.requests, n.responses_2xx, n.responses_3xx, n.responses_4xx, n.responses_5xx), (6, 3, 1, 1, 1));
    assert_eq!(n.latency_count, 6);
    assert_eq!(n.latency_sum_ns, 6 * 1_000_000, "each response one segment after its request");
    assert_eq!(c.completed, [6, 6]);
    assert_eq!(c.f.in_flight(), 0);
    assert_eq!((c.f.phase(C), c.f.phase(S)), (Phase::Idle, Phase::Idle));
    assert!(c.events.iter().all(|(_, e)| !matches!(e, Event::Response { latency_ns: None, .. })));
    assert_eq!(c.f.close(), Closed { unanswered: 0, lost: false });
}

#[test]
fn pipelined_requests_and_responses_in_one_segment() {
    let mut c = Conn::new();
    c.send(C, b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: h\r\n\r\nGET /3 HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(c.f.in_flight(), 3);
    // The HEAD response announces a length but has no body.
    let mut all = resp(200, "one");
    all.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 9999\r\n\r\n");
    all.extend(resp(503, ""));
    c.send(S, &all);
    assert_eq!(c.methods(), vec![Method::Get, Method::Head, Method::Get]);
    assert_eq!(c.statuses(), vec![200, 200, 503]);
    assert_eq!(c.f.in_flight(), 0);
    assert_eq!(c.completed, [3, 3]);
    assert_eq!(c.f.phase(S), Phase::Idle);
}

#[test]
fn bodies_that_look_like_responses_are_not_responses() {
    let mut c = Conn::new();
    let inner = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n";
    c.send(C, &get("/"));
    c.send(C, &get("/"));
    let mut all = resp(200, inner);
    // And in chunk data, including something that looks like the last chunk.
    all.extend_from_slice(format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{inner}0\r\n\r\n\r\n0\r\n\r\n", inner.len() + 5).as_bytes());
    c.send(S, &all);
    c.send(C, &get("/"));
    c.send(S, &resp(404, ""));
    assert_eq!(c.statuses(), vec![200, 200, 404]);
}

#[test]
fn conversation_counts() {
    let (q, r) = conversation();
    let c = run_conversation(&q, &r, &[], &[]);
    assert_eq!(c.losses(), vec![]);
    assert_eq!(c.methods(), vec![Method::Get, Method::Post, Method::Head, Method::Put, Method::Get]);
    assert_eq!(c.statuses(), vec![200, 100, 103, 201, 200, 304, 502]);
    assert_eq!(c.f.counts.responses_1xx, 2);
    assert_eq!(c.f.counts.latency_count, 5, "interim responses answer nothing");
    assert_eq!(c.completed, [5, 7]);
    assert_eq!((c.f.phase(C), c.f.phase(S)), (Phase::Idle, Phase::Idle));
}

#[test]
fn chunked_with_extensions_and_trailers() {
    let mut c = Conn::new();
    c.send(C, &get("/"));
    c.send(C, &get("/"));
    let msg = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nHTTP/\r\n10\r\n1.1 200 OK\r\n\r\n\r\n\r\n0\r\nX-Trailer: y\r\n\r\nHTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n";
    c.send(S, msg);
    assert_eq!(c.statuses(), vec![200, 502]);
    assert_eq!(c.f.phase(S), Phase::Idle);

    // Upper-case hex, whitespace before extensions, several trailers, a chunked request.
    let mut c = Conn::new();
    c.send(C, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1A ; a=b ; c\r\nabcdefghijklmnopqrstuvwxyz\r\n0;last\r\nT1: a\r\nT2: b\r\n\r\n");
    c.send(C, &get("/2"));
    assert_eq!(c.methods(), vec![Method::Post, Method::Get]);
    assert_eq!(c.completed[C as usize], 2);
    c.send(S, b"HTTP/1.1 200 OK\r\ntransfer-encoding: CHUNKED\r\n\r\n000003\r\nabc\r\n0\r\n\r\n");
    c.send(S, &resp(200, ""));
    assert_eq!(c.statuses(), vec![200, 200]);
}

#[test]
fn chunk_data_is_skipped_without_loads() {
    let mut c = Conn::new();
    c.send(C, &get("/"));
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n";
    c.send(S, head);
    let loads = c.loads;
    let data = vec![b'x'; 0x10_0000];
    for piece in data.chunks(1448) {
        c.send(S, piece);
    }
    assert_eq!(c.loads, loads, "chunk data costs no load");
    c.send(S, b"\r\n0\r\n\r\n");
    c.send(C, &get("/"));
    c.send(S, &resp(204, ""));
    assert_eq!(c.statuses(), vec![200, 204]);
}

#[test]
fn responses_without_bodies() {
    let mut c = Conn::new();
    c.send(C, b"HEAD / HTTP/1.1\r\n\r\nHEAD / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n");
    c.send(S, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
    c.send(S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    c.send(S, b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n");
    c.send(S, b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(c.statuses(), vec![200, 200, 204, 304]);
    assert_eq!(c.completed[S as usize], 4);
    assert_eq!(c.f.phase(S), Phase::Idle);
}

#[test]
fn interim_responses_do_not_answer() {
    let mut c = Conn::new();
    c.send(C, b"POST /u HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    c.send(S, b"HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!(c.f.in_flight(), 1);
    c.send(C, b"hello");
    c.send(S, b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(c.statuses(), vec![100, 103, 201]);
    assert_eq!(c.f.in_flight(), 0);
    let latencies: Vec<Option<u64>> =
        c.events.iter().filter_map(|(_, e)| if let Event::Response { latency_ns, .. } = e { Some(*latency_ns) } else { None }).collect();
    assert_eq!(latencies, vec![None, None, Some(3_000_000)]);
    c.send(C, &get("/never"));
    assert_eq!(c.f.close(), Closed { unanswered: 1, lost: false });
    assert_eq!(c.f.counts.unanswered, 1);
}

#[test]
fn empty_lines_and_case() {
    let mut c = Conn::new();
    c.send(C, b"\r\n\r\n\nGET / HTTP/1.1\r\nHOST: h\r\n\r\n\r\nPOST / HTTP/1.1\r\ncOnTeNt-LeNgTh: 3\r\n\r\nabc");
    c.send(S, b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH: 2\r\n\r\nok\r\nHTTP/1.1 200 OK\r\nTRANSFER-ENCODING: Chunked\r\n\r\n0\r\n\r\n");
    assert_eq!(c.methods(), vec![Method::Get, Method::Post]);
    assert_eq!(c.statuses(), vec![200, 200]);
    assert_eq!(c.losses(), vec![]);
    // Bare LF line ends.
    let mut c = Conn::new();
    c.send(C, b"GET / HTTP/1.1\nHost: h\n\nGET / HTTP/1.1\n\n");
    c.send(S, b"HTTP/1.1 200 OK\nContent-Length: 1\n\nxHTTP/1.1 204\n\n");
    assert_eq!(c.statuses(), vec![200, 204]);
    assert_eq!(c.losses(), vec![]);
}
