//! The storage seam end to end: a `Policy` of the test's own grants a `Storage` of the test's
//! own, and the server stores uploads and reads downloads through it and nothing else. The
//! storage here keeps files as they are but counts every byte the session core hands it, as
//! a sealing or journaling storage would see them: in order or not, each exactly once.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_engine::control::{FileEntry, FileStatus};
use ferry_engine::crypto::CipherSuite;
use ferry_engine::io::docroot::{Docroot, RelPath};
use ferry_engine::io::files::{Destination, SinkLimits};
use ferry_engine::io::source::{self, SourceFile, SourceLimits};
use ferry_engine::io::storage::{Outgoing, PlainFiles, Storage};
use ferry_engine::rate::Policy as RatePolicy;
use ferry_engine::session::{BlockSink, BlockSource, SinkError};
use ferry_net::client::{self, ClientOptions, HostKey, Transfer};
use ferry_net::identity::Identity;
use ferry_net::multi::{self, Retry};
use ferry_net::server::{Grant, Policy, Server, ServerOptions};

/// Plain files, with a count of the bytes written to sinks and read from sources.
#[derive(Debug, Default)]
struct Counting {
    written: Arc<AtomicU64>,
    read: Arc<AtomicU64>,
}

struct CountingSink {
    inner: Box<dyn BlockSink + Send>,
    written: Arc<AtomicU64>,
}

impl BlockSink for CountingSink {
    fn open(&mut self, file: &FileEntry) -> std::io::Result<()> {
        self.inner.open(file)
    }
    fn write(&mut self, file: u32, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        self.inner.write(file, offset, data)?;
        self.written.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }
    fn free_blocks(&self) -> u64 {
        self.inner.free_blocks()
    }
    fn finish(&mut self, file: u32, verified: bool) -> std::io::Result<()> {
        self.inner.finish(file, verified)
    }
}

struct CountingSource {
    inner: Box<dyn BlockSource + Send>,
    read: Arc<AtomicU64>,
}

impl BlockSource for CountingSource {
    fn read(&mut self, file: u32, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read(file, offset, buf)?;
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl Storage for Counting {
    fn sink(
        &self,
        root: Arc<Docroot>,
        dest: Destination,
        limits: SinkLimits,
    ) -> std::io::Result<Box<dyn BlockSink + Send>> {
        let inner = PlainFiles.sink(root, dest, limits)?;
        Ok(Box::new(CountingSink { inner, written: self.written.clone() }))
    }

    fn source(&self, files: Vec<SourceFile>, limits: SourceLimits) -> std::io::Result<Outgoing> {
        let Outgoing { entries, source } = PlainFiles.source(files, limits)?;
        Ok(Outgoing {
            entries,
            source: Box::new(CountingSource { inner: source, read: self.read.clone() }),
        })
    }
}

/// Grants one key the docroot with the counting storage.
#[derive(Debug)]
struct OneKey {
    key: [u8; 32],
    docroot: Arc<Docroot>,
    storage: Arc<Counting>,
}

impl Policy for OneKey {
    fn authorize(&self, _user: &str, key: &[u8; 32], _peer: IpAddr) -> Result<Grant, String> {
        if key != &self.key {
            return Err("not the test's key".into());
        }
        Ok(Grant {
            user: "counted".into(),
            docroot: self.docroot.clone(),
            storage: self.storage.clone(),
            rights: Default::default(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_granted_storage_stores_and_reads_everything() {
    let server_dir = tempfile::tempdir().unwrap();
    let client_dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> =
        (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(client_dir.path().join("up.bin"), &data).unwrap();
    let client_id = Identity::generate("client");
    let storage = Arc::new(Counting::default());
    let policy = Arc::new(OneKey {
        key: *client_id.public(),
        docroot: Arc::new(Docroot::open(server_dir.path()).unwrap()),
        storage: storage.clone(),
    });
    let options = ServerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        identity: Identity::generate("host"),
        pre: Default::default(),
        post: Default::default(),
        rules: Default::default(),
        sweep: Vec::new(),
    };
    let server = Server::bind(options, policy).unwrap();
    let (port, fingerprint) = (server.local_addr().port(), server.fingerprint().to_owned());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
        "test over"
    }));
    let opts = ClientOptions {
        host: "127.0.0.1".into(),
        port,
        identity: client_id,
        host_key: HostKey::Pinned(fingerprint),
        cipher: CipherSuite::Aes128,
        target_rate: 200_000_000,
        min_rate: 0,
        policy: RatePolicy::Fixed,
        user: String::new(),
        datagram_size: None,
        create_dir: false,
        preserve_times: false,
        resume: 0,
        overwrite: Default::default(),
        sealed: false,
        partial_suffix: None,
    };
    let run = |transfer: Transfer| {
        let (_tx, cancel) = tokio::sync::watch::channel(None);
        let fut = client::transfer(&opts, transfer, Arc::new(|_| {}), cancel);
        tokio::time::timeout(Duration::from_secs(60), fut)
    };

    // Upload: every byte reaches the granted storage's sink, and lands.
    let local = Arc::new(Docroot::open(client_dir.path()).unwrap());
    let listed =
        source::list(&local, &RelPath::parse("up.bin").unwrap(), SourceLimits::default()).unwrap();
    let files = PlainFiles.source(listed, SourceLimits::default()).unwrap();
    let report = run(Transfer::Upload { files, path: String::new() }).await.unwrap().unwrap();
    assert_eq!(report.files.len(), 1);
    assert_eq!(std::fs::read(server_dir.path().join("up.bin")).unwrap(), data);
    assert_eq!(storage.written.load(Ordering::Relaxed), data.len() as u64);

    // A three-session upload of the file in parts and two small files beside it: every byte
    // is written exactly once, the parts assemble into the file under its name, and nothing
    // else is left.
    let small: Vec<u8> = data[..5000].to_vec();
    std::fs::create_dir(client_dir.path().join("more")).unwrap();
    std::fs::copy(client_dir.path().join("up.bin"), client_dir.path().join("more/up.bin")).unwrap();
    std::fs::write(client_dir.path().join("more/a"), &small).unwrap();
    std::fs::write(client_dir.path().join("more/b"), &small).unwrap();
    let listed =
        source::list(&local, &RelPath::parse("more").unwrap(), SourceLimits::default()).unwrap();
    let shares = source::shares(listed, 3, 1 << 20, source::transfer_id());
    assert_eq!(shares.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1], "{shares:?}");
    let before = storage.written.load(Ordering::Relaxed);
    let (_tx, cancel) = tokio::sync::watch::channel(None);
    let multi = multi::upload(
        &opts,
        &PlainFiles,
        shares,
        "",
        false,
        Retry::default(),
        Arc::new(|_| {}),
        cancel,
    );
    let report = tokio::time::timeout(Duration::from_secs(60), multi).await.unwrap().unwrap();
    assert_eq!(report.files.len(), 3, "one report per file: {:?}", report.files);
    assert!(report.files.iter().all(|f| f.status == FileStatus::Verified), "{:?}", report.files);
    assert_eq!(report.file_bytes, data.len() as u64 + 10_000);
    assert_eq!(storage.written.load(Ordering::Relaxed) - before, data.len() as u64 + 10_000);
    assert_eq!(std::fs::read(server_dir.path().join("more/up.bin")).unwrap(), data);
    assert_eq!(std::fs::read(server_dir.path().join("more/a")).unwrap(), small);
    let mut landed: Vec<_> = std::fs::read_dir(server_dir.path().join("more"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    landed.sort();
    assert_eq!(landed, ["a", "b", "up.bin"]);

    // One file in two parts to a new name: both parts land under that name.
    let listed =
        source::list(&local, &RelPath::parse("up.bin").unwrap(), SourceLimits::default()).unwrap();
    let shares = source::shares(listed, 2, 1 << 20, source::transfer_id());
    assert!(shares.iter().all(|s| s.len() == 1 && s[0].part.is_some()), "{shares:?}");
    let (_tx, cancel) = tokio::sync::watch::channel(None);
    let multi = multi::upload(
        &opts,
        &PlainFiles,
        shares,
        "renamed.bin",
        true,
        Retry::default(),
        Arc::new(|_| {}),
        cancel,
    );
    let report = tokio::time::timeout(Duration::from_secs(60), multi).await.unwrap().unwrap();
    assert_eq!(report.files.len(), 1, "{:?}", report.files);
    assert_eq!(report.files[0].status, FileStatus::Verified, "{:?}", report.files);
    assert_eq!(std::fs::read(server_dir.path().join("renamed.bin")).unwrap(), data);

    // Download: every byte comes out of the granted storage's source.
    let back = tempfile::tempdir().unwrap();
    let root = Arc::new(Docroot::open(back.path()).unwrap());
    let sink = PlainFiles.sink(root, Destination::Dir(RelPath::root()), SinkLimits::default());
    let transfer = Transfer::Download { path: "up.bin".into(), sink: sink.unwrap() };
    run(transfer).await.unwrap().unwrap();
    assert_eq!(std::fs::read(back.path().join("up.bin")).unwrap(), data);
    assert!(storage.read.load(Ordering::Relaxed) >= data.len() as u64);

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(20), serving).await.unwrap().unwrap();
}
