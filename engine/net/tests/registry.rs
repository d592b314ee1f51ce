//! The library end to end in one process: a `Server` with the `Users::single` policy, a client
//! download through `client::transfer`, and the server's session registry: the running session
//! is listed with its progress, its rate is changed while it runs, and cancelling it ends the
//! client's transfer with a typed, retryable error and removes it from the registry. An upload
//! is paced within the caps of the server's rules and the policy's grant from its start
//! (RATE_LIMIT), and within the operator's changes while it runs.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_engine::crypto::CipherSuite;
use ferry_engine::io::docroot::{Docroot, RelPath};
use ferry_engine::io::files::{Destination, SinkLimits};
use ferry_engine::io::source::{self, SourceLimits};
use ferry_engine::io::storage::{PlainFiles, Storage};
use ferry_engine::rate::{Policy, RateLimits};
use ferry_engine::setup::{Direction, Rules};
use ferry_net::client::{self, ClientError, ClientEvent, ClientOptions, HostKey, Transfer};
use ferry_net::identity::Identity;
use ferry_net::server::{Grant, Policy as ServerPolicy, Registry, Server, ServerOptions};
use ferry_net::users::{Rights, Users};

/// A running server and what the tests need of it.
struct Running {
    addr: SocketAddr,
    fingerprint: String,
    registry: Arc<Registry>,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<()>,
}

fn serve(policy: Arc<dyn ServerPolicy>, rules: Rules) -> Running {
    let options = ServerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        identity: Identity::generate("host"),
        pre: Default::default(),
        post: Default::default(),
        rules,
        sweep: Vec::new(),
    };
    let server = Server::bind(options, policy).unwrap();
    let (addr, fingerprint, registry) =
        (server.local_addr(), server.fingerprint().to_owned(), server.registry());
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
        "test over"
    }));
    Running { addr, fingerprint, registry, stop, serving }
}

impl Running {
    fn client(&self, identity: Identity, target_rate: u64) -> ClientOptions {
        ClientOptions {
            host: "127.0.0.1".into(),
            port: self.addr.port(),
            identity,
            host_key: HostKey::Pinned(self.fingerprint.clone()),
            cipher: CipherSuite::Aes128,
            target_rate,
            min_rate: 0,
            policy: Policy::Fixed,
            user: "tester".into(),
            datagram_size: None,
            create_dir: false,
            preserve_times: false,
            resume: 0,
            overwrite: Default::default(),
            sealed: false,
            partial_suffix: None,
        }
    }

    /// The first session listed with bytes moving.
    async fn moving(&self) -> ferry_net::server::SessionSnapshot {
        let started = Instant::now();
        loop {
            if let Some(s) = self.registry.list().into_iter().find(|s| s.progress.side.bytes > 0) {
                return s;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "no running session listed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Cancels `id` and checks the client is told with a retryable error.
    async fn cancel(
        &self,
        id: u64,
        client: tokio::task::JoinHandle<Result<ferry_engine::io::driver::DriveReport, ClientError>>,
    ) {
        assert!(self.registry.cancel(id, "cancelled by the operator").await);
        let result = tokio::time::timeout(Duration::from_secs(30), client).await.unwrap().unwrap();
        match result {
            Err(e @ ClientError::Aborted { .. }) => {
                assert!(e.retryable(), "{e}");
                assert!(e.to_string().contains("cancelled by the operator"), "{e}");
            }
            Ok(_) => panic!("the cancelled transfer completed"),
            Err(e) => panic!("unexpected error: {e}"),
        }
        let started = Instant::now();
        while !self.registry.list().is_empty() {
            assert!(started.elapsed() < Duration::from_secs(10), "the session stayed listed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!self.registry.cancel(id, "again").await, "no such session any more");
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.serving).await.unwrap().unwrap();
    }
}

/// A policy granting what [`Users::single`] grants, with a rate cap of its own.
#[derive(Debug)]
struct Capped(Users, u64);

impl ServerPolicy for Capped {
    fn authorize(&self, user: &str, key: &[u8; 32], peer: IpAddr) -> Result<Grant, String> {
        let grant = self.0.authorize(user, key, peer)?;
        Ok(Grant { rights: Rights { rate_cap: Some(self.1), ..grant.rights.clone() }, ..grant })
    }
}

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
    let policy = Arc::new(Users::single("tester", docroot.clone(), dir.path().join("ak")));
    let server = serve(policy, Rules::default());
    let registry = server.registry.clone();

    let back = tempfile::tempdir().unwrap();
    let sink_root = Arc::new(Docroot::open(back.path()).unwrap());
    let sink = PlainFiles.sink(sink_root, Destination::Dir(RelPath::root()), SinkLimits::default());
    let sink = sink.unwrap();
    // 24 MiB at 8 Mbit/s: 25 s, plenty of time to look at it.
    let opts = server.client(client_id, 8_000_000);
    let (_cancel_tx, cancel) = tokio::sync::watch::channel(None);
    let transfer = Transfer::Download { path: "big".into(), sink };
    let client =
        tokio::spawn(
            async move { client::transfer(&opts, transfer, Arc::new(|_| {}), cancel).await },
        );

    // Listed, with progress moving.
    let session = server.moving().await;
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
    server.cancel(session.id, client).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_paced_within_the_servers_caps_and_changes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let local = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..24u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(local.path().join("big"), &data).unwrap();
    let client_id = Identity::generate("client");
    std::fs::write(dir.path().join("ak"), format!("{}\n", client_id.public_line())).unwrap();
    let docroot = Arc::new(Docroot::open(&root).unwrap());
    let single = Users::single("tester", docroot, dir.path().join("ak"));
    // The rules cap at 100 Mbit/s, the grant at 8: the client asks for 400.
    let rules = Rules { rate_cap: Some(100_000_000), ..Rules::default() };
    let server = serve(Arc::new(Capped(single, 8_000_000)), rules);
    let opts = server.client(client_id, 400_000_000);
    let pacing = Arc::new(Mutex::new(Vec::new()));
    let seen = pacing.clone();
    let observer = Arc::new(move |e: ClientEvent<'_>| {
        if let ClientEvent::Progress(p) = e {
            seen.lock().unwrap().push(p.side.rate_bps);
        }
    });
    let local_root = Arc::new(Docroot::open(local.path()).unwrap());
    let rel = RelPath::parse("big").unwrap();
    let listed = source::list(&local_root, &rel, SourceLimits::default()).unwrap();
    let files = PlainFiles.source(listed, SourceLimits::default()).unwrap();
    let transfer = Transfer::Upload { files, path: String::new() };
    let (_cancel_tx, cancel) = tokio::sync::watch::channel(None);
    let client =
        tokio::spawn(async move { client::transfer(&opts, transfer, observer, cancel).await });

    let session = server.moving().await;
    assert_eq!(session.direction, Direction::Upload);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let capped = pacing.lock().unwrap().clone();
    assert!(!capped.is_empty() && capped.iter().all(|&r| r <= 8_000_000), "{capped:?}");
    // The operator raises it: the uploading client speeds up, to that and no further.
    let limits = RateLimits { target: 40_000_000, min: 0 };
    assert!(server.registry.set_limits(session.id, limits).await);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let raised = pacing.lock().unwrap()[capped.len()..].to_vec();
    assert!(raised.iter().any(|&r| r > 16_000_000), "{raised:?}");
    assert!(raised.iter().all(|&r| r <= 40_000_000), "{raised:?}");
    server.cancel(session.id, client).await;
    assert!(std::fs::read_dir(&root).unwrap().next().is_none(), "the cancelled upload left a file");
    server.stop().await;
}
