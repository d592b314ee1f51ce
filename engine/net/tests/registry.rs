//! The library end to end in one process: a `Server` with the `SingleUser` policy, a client
//! download through `client::transfer`, and the server's session registry: the running session
//! is listed with its progress, its rate is changed while it runs, and cancelling it ends the
//! client's transfer with a typed, retryable error and removes it from the registry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_engine::crypto::CipherSuite;
use ferry_engine::io::docroot::{Docroot, RelPath};
use ferry_engine::io::files::{Destination, SinkLimits};
use ferry_engine::io::storage::{PlainFiles, Storage};
use ferry_engine::rate::{Policy, RateLimits};
use ferry_engine::setup::Direction;
use ferry_net::client::{self, ClientError, ClientOptions, HostKey, Transfer};
use ferry_net::identity::Identity;
use ferry_net::server::{Server, ServerOptions, SingleUser};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_listed_steered_and_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let data: Vec<u8> = (0..24u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("big"), &data).unwrap();
    let client_id = Identity::generate("client");
    std::fs::write(dir.path().join("ak"), format!("{}\n", client_id.public_line())).unwrap();
    let docroot = Arc::new(Docroot::open(&root).unwrap());
    let policy = Arc::new(SingleUser::new("tester", docroot.clone(), dir.path().join("ak")));
    let options = ServerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        identity: Identity::generate("host"),
        pre: Default::default(),
        post: Default::default(),
        rules: Default::default(),
        sweep: None,
    };
    let server = Server::bind(options, policy).unwrap();
    let (addr, fingerprint, registry) =
        (server.local_addr(), server.fingerprint().to_owned(), server.registry());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
        "test over"
    }));

    let back = tempfile::tempdir().unwrap();
    let sink_root = Arc::new(Docroot::open(back.path()).unwrap());
    let sink = PlainFiles.sink(sink_root, Destination::Dir(RelPath::root()), SinkLimits::default());
    let sink = sink.unwrap();
    let opts = ClientOptions {
        host: "127.0.0.1".into(),
        port: addr.port(),
        identity: client_id,
        host_key: HostKey::Pinned(fingerprint),
        cipher: CipherSuite::Aes128,
        // 24 MiB at 8 Mbit/s: 25 s, plenty of time to look at it.
        target_rate: 8_000_000,
        min_rate: 0,
        policy: Policy::Fixed,
    };
    let (_cancel_tx, cancel) = tokio::sync::watch::channel(None);
    let transfer = Transfer::Download { path: "big".into(), sink };
    let client =
        tokio::spawn(
            async move { client::transfer(&opts, transfer, Arc::new(|_| {}), cancel).await },
        );

    // Listed, with progress moving.
    let started = Instant::now();
    let session = loop {
        if let Some(s) = registry.list().into_iter().find(|s| s.progress.side.bytes > 0) {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no running session listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((session.direction, session.path.as_str()), (Direction::Download, "big"));
    assert!(session.key.starts_with("SHA256:"));
    assert_eq!(session.user, "tester");
    // Faster while it runs: the server is the sender of a download.
    // (40 Mbit/s: the rest still takes seconds, so the session is there to cancel.)
    let limits = RateLimits { target: 40_000_000, min: 0 };
    assert!(registry.set_limits(session.id, limits).await);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let now = registry.list().into_iter().find(|s| s.id == session.id).unwrap();
    assert!(now.progress.side.rate_bps > 16_000_000, "{:?}", now.progress.side);
    // Cancelled by the operator: the client is told, and may retry.
    assert!(registry.cancel(session.id, "cancelled by the operator").await);
    let result = tokio::time::timeout(Duration::from_secs(30), client).await.unwrap().unwrap();
    match result {
        Err(e @ ClientError::Aborted { .. }) => {
            assert!(e.retryable(), "{e}");
            assert!(e.to_string().contains("cancelled by the operator"), "{e}");
        }
        Ok(_) => panic!("the cancelled download completed"),
        Err(e) => panic!("unexpected error: {e}"),
    }
    let started = Instant::now();
    while !registry.list().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "the session stayed listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!registry.cancel(session.id, "again").await, "no such session any more");
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(20), serving).await.unwrap().unwrap();
}
