//! Slow, idle and hostile clients, against the real binary with short deadlines: each of their
//! connections is closed once its header or body deadline passes, the server's memory stays
//! bounded meanwhile and other clients are answered; at the connection cap new clients wait
//! for a free slot; and a shutdown is not held by them.

use std::time::{Duration, Instant};

use cutover_tests::{sample_in, TestDb};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::Child;

use crate::faults::{start_server, wait_healthy};
use cutover_tests::free_port;

/// `--header-read-timeout-ms` of these tests' servers.
const HEADER_TIMEOUT: Duration = Duration::from_millis(1_000);
/// `--body-read-timeout-ms` of these tests' servers.
const BODY_TIMEOUT: Duration = Duration::from_millis(1_500);
/// How late after its deadline a connection may close, on a loaded machine.
const SLACK: Duration = Duration::from_millis(1_500);
/// How often a dripping client sends its next byte.
const DRIP: Duration = Duration::from_millis(200);

/// A server on a database of its own with the test deadlines and `args`, healthy.
async fn slow_server(args: &[&str]) -> (Child, String, TestDb) {
    let db = TestDb::new().await;
    let port = free_port();
    let header = HEADER_TIMEOUT.as_millis().to_string();
    let body = BODY_TIMEOUT.as_millis().to_string();
    let mut flags = vec![
        "--header-read-timeout-ms",
        &header,
        "--body-read-timeout-ms",
        &body,
    ];
    flags.extend_from_slice(args);
    let server = start_server(&db.url(), port, &flags);
    let address = format!("127.0.0.1:{port}");
    wait_healthy(&reqwest::Client::new(), &format!("http://{address}")).await;
    (server, address, db)
}

/// What a slow client does after connecting.
#[derive(Clone, Copy, Debug)]
enum Slow {
    /// Sends nothing.
    Silent,
    /// Sends half a request header, then a byte at a time.
    DripHeader,
    /// Sends a whole header of a JSON body, then the body a byte at a time.
    DripBody,
    /// Sends one whole request, then nothing (a kept-alive connection left idle).
    Idle,
}

impl Slow {
    /// How long after connecting the server may close the connection.
    fn bound(self) -> Duration {
        match self {
            Self::DripBody => BODY_TIMEOUT + SLACK,
            Self::Silent | Self::DripHeader | Self::Idle => HEADER_TIMEOUT + SLACK,
        }
    }
}

/// A connection to `address` behaving as `kind`, until the server closes it: what the server
/// sent, and how long after connecting it closed (`None`: still open after 10 s).
async fn slow_client(address: &str, kind: Slow) -> (Vec<u8>, Option<Duration>) {
    let stream = TcpStream::connect(address).await.unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let opening = match kind {
        Slow::Silent => String::new(),
        Slow::DripHeader => "GET /health HTTP/1.1\r\nhost: slow\r\nx-drip: ".to_owned(),
        Slow::DripBody => format!(
            "POST /projects/{}/collections HTTP/1.1\r\nhost: slow\r\n\
             content-type: application/json\r\ncontent-length: 100000\r\n\r\n\
             {{\"collection_name\": \"",
            uuid::Uuid::new_v4()
        ),
        Slow::Idle => "GET /health HTTP/1.1\r\nhost: slow\r\n\r\n".to_owned(),
    };
    writer.write_all(opening.as_bytes()).await.unwrap();
    let drip = async {
        if matches!(kind, Slow::DripHeader | Slow::DripBody) {
            // until a write fails: the server has closed the connection
            while writer.write_all(b"a").await.is_ok() {
                tokio::time::sleep(DRIP).await;
            }
        } else {
            std::future::pending::<()>().await;
        }
    };
    let mut received = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let read = reader.read_to_end(&mut received);
        tokio::pin!(read);
        // EOF or a reset: closed either way
        tokio::select! {
            _ = &mut read => {}
            () = drip => { let _ = read.await; }
        }
    })
    .await;
    (received, closed.ok().map(|()| started.elapsed()))
}

/// The resident memory of process `pid`, in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in:\n{status}"))
}

/// How many slow clients of each kind the first test opens: 400 connections in all, within the
/// usual limit of 1,024 open files of the test process.
const EACH_KIND: usize = 100;

/// The most resident memory the server may use meanwhile.
const RSS_BOUND_KB: u64 = 100 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_closed_at_their_deadline_and_hold_little_memory() {
    let (server, address, _db) = slow_server(&[]).await;
    let pid = server.id().unwrap();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let peak_rss = tokio::spawn(async move {
        let mut peak = 0;
        while stopped.try_recv().is_err() {
            peak = peak.max(rss_kb(pid));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    });

    let mut clients = tokio::task::JoinSet::new();
    for kind in [Slow::Silent, Slow::DripHeader, Slow::DripBody, Slow::Idle] {
        for _ in 0..EACH_KIND {
            let address = address.clone();
            clients.spawn(async move { (kind, slow_client(&address, kind).await) });
        }
    }
    // Another client, meanwhile, is answered at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let health = reqwest::get(format!("http://{address}/health"))
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert!(asked.elapsed() < HEADER_TIMEOUT, "{:?}", asked.elapsed());

    while let Some(joined) = clients.join_next().await {
        let (kind, (received, closed)) = joined.unwrap();
        let closed = closed.unwrap_or_else(|| panic!("a {kind:?} connection is still open"));
        assert!(
            closed <= kind.bound(),
            "a {kind:?} connection closed after {closed:?}"
        );
        let answer = String::from_utf8_lossy(&received);
        match kind {
            Slow::Silent | Slow::DripHeader => assert!(received.is_empty(), "{answer}"),
            Slow::DripBody => assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}"),
            Slow::Idle => assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}"),
        }
    }
    stop.send(()).unwrap();
    let peak = peak_rss.await.unwrap();
    assert!(peak <= RSS_BOUND_KB, "the server's RSS rose to {peak} kB");
}

#[tokio::test]
async fn at_the_connection_cap_a_new_client_waits_for_a_free_slot() {
    let cap = 16;
    let (_server, address, _db) = slow_server(&["--max-http-connections", &cap.to_string()]).await;
    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..cap {
        silent.push(TcpStream::connect(&address).await.unwrap());
    }
    let health = reqwest::get(format!("http://{address}/health"))
        .await
        .unwrap();
    let waited = opened.elapsed();
    assert_eq!(health.status(), StatusCode::OK);
    // Answered once the header deadline had closed the silent connections, not before.
    assert!(waited >= HEADER_TIMEOUT, "answered after {waited:?}");
    assert!(
        waited <= HEADER_TIMEOUT + SLACK,
        "answered after {waited:?}"
    );
}

#[tokio::test]
async fn a_shutdown_closes_idle_connections_ends_streams_and_waits_for_no_slow_client() {
    let (mut server, address, _db) = slow_server(&[]).await;
    let base = format!("http://{address}");
    let mut stream = reqwest::get(format!("{base}/events/stream")).await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let silent = tokio::spawn({
        let address = address.clone();
        async move { slow_client(&address, Slow::Silent).await }
    });
    let dripping = tokio::spawn({
        let address = address.clone();
        async move { slow_client(&address, Slow::DripHeader).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let signalled = Instant::now();
    // (With a system call: a minimal machine has no `kill` program.)
    let pid = nix::unistd::Pid::from_raw(i32::try_from(server.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(HEADER_TIMEOUT + SLACK, server.wait())
        .await
        .expect("the server stopped within the header deadline")
        .unwrap();
    assert!(status.success(), "{status:?}");
    // The live stream ended with the server.
    while let Ok(Some(_)) = stream.chunk().await {}
    let (_, silent_closed) = silent.await.unwrap();
    let (_, dripping_closed) = dripping.await.unwrap();
    assert!(silent_closed.is_some() && dripping_closed.is_some());
    assert!(signalled.elapsed() <= HEADER_TIMEOUT + SLACK);
}

/// Sends `request` on a connection of its own and reads until the server closes it.
async fn raw(address: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    // The server may answer and close before it has read everything: a failed write is fine.
    let _ = stream.write_all(request).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received)).await;
    String::from_utf8_lossy(&received).into_owned()
}

/// A sample of `/metrics` (0 when the series does not exist yet).
async fn sample(address: &str, series: &str) -> f64 {
    let scrape = reqwest::get(format!("http://{address}/metrics")).await;
    let text = scrape.unwrap().text().await.unwrap();
    sample_in(&text, series).unwrap_or(0.0)
}

#[tokio::test]
async fn requests_refused_before_routing_are_counted() {
    let (_server, address, _db) = slow_server(&[]).await;
    let series =
        |reason: &str| format!("cutover_http_refused_before_routing_total{{reason=\"{reason}\"}}");

    let nul = raw(
        &address,
        b"GET /health HTTP/1.1\r\nhost: x\r\nx-bad: a\0b\r\n\r\n",
    )
    .await;
    assert!(nul.starts_with("HTTP/1.1 400 "), "{nul}");
    let long_header = format!(
        "GET /health HTTP/1.1\r\nhost: x\r\nx-long: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let answer = raw(&address, long_header.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    let long_uri = format!(
        "GET /health?{} HTTP/1.1\r\nhost: x\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let answer = raw(&address, long_uri.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 414 ") || answer.starts_with("HTTP/1.1 431 "),
        "{answer}"
    );
    let (received, closed) = slow_client(&address, Slow::Silent).await;
    assert!(received.is_empty() && closed.is_some());

    assert_eq!(sample(&address, &series("malformed")).await, 1.0);
    assert_eq!(sample(&address, &series("head_too_large")).await, 2.0);
    // (Idle kept-alive connections of other clients may have timed out as well.)
    assert!(sample(&address, &series("header_timeout")).await >= 1.0);
}
