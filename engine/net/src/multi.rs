//! Transfers with retries, in one session or several at once (`ferry cp -C N`, ascp's `-C`):
//! each session has its own QUIC connection, data socket and data thread, so that more cores
//! (and, on a bonded or multi-queue NIC, more queues) move it.
//!
//! [`shares`](ferry_engine::io::source::shares) deals the files out (the client for an upload,
//! the server for a download): small files whole, large ones in parts, one part per session; the receiving end assembles the parts of a file
//! ([`assembly`](ferry_engine::io::assembly)) and moves it into place once all of them
//! verified. A session that fails with an error worth retrying ([`ClientError::retryable`]:
//! the network, a server that cancelled or restarted it) is run again for the files of its
//! share that had no outcome yet, as its [`Retry`] policy allows, while the other sessions go
//! on; a session that fails for good stops the others.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use ferry_engine::control::{FileEntry, FileStatus};
use ferry_engine::io::driver::{DriveReport, FileReport, Progress};
use ferry_engine::io::source::{SourceFile, SourceLimits};
use ferry_engine::io::storage::Storage;
use ferry_engine::session::{BlockSink, SinkError};
use ferry_engine::setup::Share;

use crate::bridge::Cancel;
use crate::client::{self, ClientError, ClientEvent, ClientOptions, Observer, Transfer};

/// When a failed session is run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Retries per share after its first session (0: none).
    pub retries: u32,
    /// No retry starts once this long has passed since the share's first failure.
    pub timeout: Duration,
    /// The wait before the first retry; it doubles for each next one, up to [`MAX_BACKOFF`].
    pub backoff: Duration,
}

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Default for Retry {
    /// `ferry cp`'s defaults: 5 retries, within 5 minutes of the first failure, waiting 1 s,
    /// 2 s, 4 s, ... in between.
    fn default() -> Self {
        Self { retries: 5, timeout: Duration::from_secs(300), backoff: Duration::from_secs(1) }
    }
}

impl Retry {
    /// No retries.
    pub const NONE: Retry = Retry { retries: 0, timeout: Duration::ZERO, backoff: Duration::ZERO };
}

/// A retry about to happen, as [`ClientEvent::Retry`] reports it.
#[derive(Debug, Clone)]
pub struct RetryInfo {
    /// The share (session slot) retried, from 0.
    pub share: usize,
    /// The attempt about to start (2 for the first retry).
    pub attempt: u32,
    /// The most attempts the policy allows.
    pub attempts: u32,
    /// The wait before it starts.
    pub delay: Duration,
    /// Why the last attempt failed.
    pub error: String,
    /// Files of the share still to go.
    pub files_left: usize,
}

/// Retries so far and when a share first failed: decides whether one more may start.
struct Attempts {
    policy: Retry,
    first_failure: Option<std::time::Instant>,
    backoff: Duration,
}

impl Attempts {
    fn new(policy: Retry) -> Self {
        Self { policy, first_failure: None, backoff: policy.backoff }
    }

    /// After attempt `attempt` of share `slot` failed with `e`, with `files_left` of its files
    /// still to go: `Err(e)` if no retry may follow, else the retry announced and waited for.
    async fn again(
        &mut self,
        e: ClientError,
        attempt: u32,
        slot: usize,
        files_left: usize,
        observer: &Observer,
        stop: &Cancel,
    ) -> Result<(), ClientError> {
        let Some(delay) = self.next(&e, attempt, stop) else { return Err(e) };
        let attempts = self.policy.retries + 1;
        let error = e.to_string();
        let info =
            RetryInfo { share: slot, attempt: attempt + 1, attempts, delay, error, files_left };
        before_retry(observer, info, stop).await;
        Ok(())
    }

    /// After attempt `attempt` failed with `e`: the wait before the next, if there is one.
    fn next(&mut self, e: &ClientError, attempt: u32, stop: &Cancel) -> Option<Duration> {
        let first = *self.first_failure.get_or_insert_with(std::time::Instant::now);
        let worth = e.retryable()
            && attempt <= self.policy.retries
            && stop.borrow().is_none()
            && first.elapsed() + self.backoff <= self.policy.timeout;
        if !worth {
            return None;
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Some(wait)
    }
}

/// A manifest entry as the transfer's report knows it: its path, and whether it is a part.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Entry {
    path: String,
    /// The part's offset, for a part.
    part: Option<u64>,
}

/// What one share did: each entry with its outcome, and the sessions' counters.
struct ShareOutcome {
    files: Vec<(Entry, FileReport)>,
    report: DriveReport,
}

type ShareFuture<'a> = Pin<Box<dyn Future<Output = Result<ShareOutcome, ClientError>> + Send + 'a>>;

/// Uploads `shares` (from [`shares`](ferry_engine::io::source::shares)), one session per
/// non-empty share, all at once, to `path` on the server. The report lists each file once, in
/// the shares' order: a file sent in parts is verified when every part is, else it failed with
/// the first failed part's reason. `single`: the transfer is of one file (which may be cut in
/// parts), so the destination may name it. Progress events add up the sessions'. One share is
/// a single-session transfer, retried as `retry` allows like any other.
#[allow(clippy::too_many_arguments)]
pub async fn upload(
    opts: &ClientOptions,
    storage: &dyn Storage,
    shares: Vec<Vec<SourceFile>>,
    path: &str,
    single: bool,
    retry: Retry,
    observer: Observer,
    cancel: Cancel,
) -> Result<DriveReport, ClientError> {
    let mut shares: Vec<_> = shares.into_iter().filter(|s| !s.is_empty()).collect();
    if shares.is_empty() {
        shares.push(Vec::new()); // an empty upload is still one session
    }
    let n = shares.len();
    let mut shares = shares.into_iter();
    run_all(n, observer, cancel, |i, observer, stop| {
        let share = shares.next().expect("one share per session");
        Box::pin(upload_share(opts, storage, share, path, single, (i, retry), observer, stop))
    })
    .await
}

/// Makes the sink of one session of a multi-session download (each session writes through its
/// own; the parts of a file meet in the process's [`assembly`](ferry_engine::io::assembly)).
pub type SinkFactory = dyn Fn() -> std::io::Result<Box<dyn BlockSink + Send>> + Send + Sync;

/// Downloads `path` in `sessions` sessions at once (1 to 16): with more than one, the server
/// deals its listing out as [`shares`](ferry_engine::io::source::shares) does (files of
/// `threshold` bytes or more in parts) and each session asks for its share; `sink` makes each
/// session's sink. A session that fails in a way worth retrying asks for its share again, as
/// `retry` allows (what an earlier attempt received is refused at once and keeps its outcome).
/// If the transfer fails, the partials of files it was assembling are removed.
#[allow(clippy::too_many_arguments)]
pub async fn download(
    opts: &ClientOptions,
    sink: &SinkFactory,
    path: &str,
    sessions: u8,
    threshold: u64,
    retry: Retry,
    observer: Observer,
    cancel: Cancel,
) -> Result<DriveReport, ClientError> {
    let transfer = ferry_engine::io::source::transfer_id();
    let count = sessions.clamp(1, 16);
    let result = run_all(count.into(), observer, cancel, |i, observer, stop| {
        let share = (count > 1).then_some(Share { index: i as u8, count, threshold, transfer });
        Box::pin(download_share(opts, sink, path, share, (i, retry), observer, stop))
    })
    .await;
    ferry_engine::io::assembly::abandon(&transfer);
    result
}

/// Runs `n` shares at once (`start(i, observer, stop)` makes share `i`'s future), stops the
/// others when one fails for good, and merges what they did.
async fn run_all<'a>(
    n: usize,
    observer: Observer,
    cancel: Cancel,
    mut start: impl FnMut(usize, Observer, Cancel) -> ShareFuture<'a>,
) -> Result<DriveReport, ClientError> {
    let (stop_tx, stop) = tokio::sync::watch::channel(None);
    let stop_tx = Arc::new(stop_tx);
    let forward = {
        let (tx, mut cancel) = (stop_tx.clone(), cancel);
        tokio::spawn(async move {
            let reason = match cancel.wait_for(Option::is_some).await {
                Ok(r) => *r,
                Err(_) => return,
            };
            let _ = tx.send(reason);
        })
    };
    let sum = Arc::new(Mutex::new(vec![ShareProgress::default(); n]));
    let mut running: Vec<Option<ShareFuture<'a>>> = (0..n)
        .map(|i| Some(start(i, summing(i, sum.clone(), observer.clone()), stop.clone())))
        .collect();
    let mut outcomes: Vec<Option<Result<ShareOutcome, ClientError>>> =
        running.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (slot, out) in running.iter_mut().zip(outcomes.iter_mut()) {
            let Some(f) = slot else { continue };
            if let Poll::Ready(r) = f.as_mut().poll(cx) {
                if r.is_err() {
                    // This share failed for good: the transfer cannot complete, so the other
                    // sessions stop now rather than send what will not be kept together.
                    let _ = stop_tx.send(Some(SIBLING_FAILED));
                }
                *out = Some(r);
                *slot = None;
            }
        }
        if running.iter().all(Option::is_none) { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    forward.abort();
    let mut merged = DriveReport::default();
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for outcome in outcomes.into_iter().flatten() {
        match outcome {
            Ok(o) => {
                add(&mut merged, &o.report);
                files.extend(o.files);
            }
            Err(e) => errors.push(e),
        }
    }
    // The failure that ended the transfer, not a session stopped because of it.
    let first = errors.iter().position(|e| !stopped_by_sibling(e)).unwrap_or(0);
    if !errors.is_empty() {
        return Err(errors.swap_remove(first));
    }
    merged.files = per_file(files);
    Ok(merged)
}

/// What a session stopped by [`upload`] because another failed reports.
const SIBLING_FAILED: &str = "another session of this transfer failed";

fn stopped_by_sibling(e: &ClientError) -> bool {
    matches!(e, ClientError::Cancelled { reason } if reason == SIBLING_FAILED)
}

/// Tells the observer a retry is about to start and waits it out (or until the transfer stops).
async fn before_retry(observer: &Observer, info: RetryInfo, stop: &Cancel) {
    tracing::info!(
        target: "ferry::multi",
        attempt = info.attempt,
        share = info.share,
        left = info.files_left,
        "a session of the transfer failed ({}); retrying in {:?}",
        info.error,
        info.delay
    );
    let delay = info.delay;
    observer(ClientEvent::Retry(&info));
    let mut stop = stop.clone();
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        _ = stop.wait_for(Option::is_some) => {}
    }
}

/// Runs one download share (the whole listing when `share` is `None`): a session, and again if
/// it failed in a way worth retrying.
async fn download_share(
    opts: &ClientOptions,
    make_sink: &SinkFactory,
    path: &str,
    share: Option<Share>,
    (slot, retry): (usize, Retry),
    observer: Observer,
    stop: Cancel,
) -> Result<ShareOutcome, ClientError> {
    let mut out = ShareOutcome { files: Vec::new(), report: DriveReport::default() };
    // Each entry's latest outcome, in the order first seen (and where each sits in it).
    let mut outcome: Vec<(Entry, FileReport)> = Vec::new();
    let mut slot_of: std::collections::HashMap<Entry, usize> = std::collections::HashMap::new();
    let received = Arc::new(Mutex::new(std::collections::HashSet::<Entry>::new()));
    let mut attempts = Attempts::new(retry);
    let role = client::Role { single: false, share };
    for attempt in 1.. {
        let inner = make_sink().map_err(|e| ClientError::Storage { message: e.to_string() })?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Recording { inner, seen: seen.clone(), received: received.clone() };
        let transfer = Transfer::Download { path: path.to_owned(), sink: Box::new(sink) };
        let (result, report) =
            client::attempt(opts, transfer, role, observer.clone(), stop.clone()).await;
        if let Some(r) = report {
            add_attempt(&mut out.report, &r);
            let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            for f in r.files {
                let Some((entry, earlier)) = seen.get(f.file as usize).cloned() else { continue };
                if earlier {
                    continue; // refused here because an earlier attempt received it
                }
                if f.status.is_ok() {
                    received.lock().unwrap_or_else(|e| e.into_inner()).insert(entry.clone());
                }
                match slot_of.get(&entry) {
                    Some(&i) => outcome[i].1 = f,
                    None => {
                        slot_of.insert(entry.clone(), outcome.len());
                        outcome.push((entry, f));
                    }
                }
            }
        }
        match result {
            Ok(()) => break,
            Err(e) => {
                let left = outcome.iter().filter(|(_, f)| !f.status.is_ok()).count();
                attempts.again(e, attempt, slot, left, &observer, &stop).await?;
            }
        }
    }
    out.files = outcome;
    Ok(out)
}

/// A download session's sink that notes each entry (path, part) and refuses at once an entry an
/// earlier attempt of its share received.
struct Recording {
    inner: Box<dyn BlockSink + Send>,
    /// Per file id: the entry, and whether it was refused as received before.
    seen: Arc<Mutex<Vec<(Entry, bool)>>>,
    received: Arc<Mutex<std::collections::HashSet<Entry>>>,
}

impl BlockSink for Recording {
    fn open(&mut self, file: &FileEntry) -> std::io::Result<()> {
        let entry = Entry { path: file.path.clone(), part: file.part.map(|p| p.offset) };
        let earlier = self.received.lock().unwrap_or_else(|e| e.into_inner()).contains(&entry);
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).push((entry, earlier));
        // The inner sink sees every file (its ids stay in sequence) and discards a refused one
        // when the session finishes it as failed.
        let opened = self.inner.open(file);
        if earlier {
            return Err(std::io::Error::other("received by an earlier session of this transfer"));
        }
        opened
    }
    fn write(&mut self, file: u32, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        self.inner.write(file, offset, data)
    }
    fn free_blocks(&self) -> u64 {
        self.inner.free_blocks()
    }
    fn finish(&mut self, file: u32, verified: bool) -> std::io::Result<()> {
        self.inner.finish(file, verified)
    }
    fn name(&self, file: u32) -> Option<String> {
        self.inner.name(file)
    }
    fn resumed(&mut self, file: u32) -> Vec<(u64, [u8; 32])> {
        self.inner.resumed(file)
    }
    fn chunk_received(&mut self, file: u32, offset: u64, cv: &[u8; 32]) {
        self.inner.chunk_received(file, offset, cv)
    }
    fn held_head(&mut self, file: u32) -> Vec<u8> {
        self.inner.held_head(file)
    }
    fn expect_sum(&mut self, file: u32, sum: Option<ferry_engine::control::FileSum>) {
        self.inner.expect_sum(file, sum)
    }
}

/// Runs one upload share: a session, and again for what had no outcome if it failed in a way worth
/// retrying.
#[allow(clippy::too_many_arguments)]
async fn upload_share(
    opts: &ClientOptions,
    storage: &dyn Storage,
    mut pending: Vec<SourceFile>,
    path: &str,
    single: bool,
    (slot, retry): (usize, Retry),
    observer: Observer,
    stop: Cancel,
) -> Result<ShareOutcome, ClientError> {
    let mut out = ShareOutcome { files: Vec::new(), report: DriveReport::default() };
    let mut attempts = Attempts::new(retry);
    let role = client::Role { single, share: None };
    for attempt in 1.. {
        let files = storage
            .source(pending.clone(), SourceLimits::default())
            .map_err(|e| ClientError::Failed(format!("cannot read the sources: {e}")))?;
        let transfer = Transfer::Upload { files, path: path.to_owned() };
        let (result, report) =
            client::attempt(opts, transfer, role, observer.clone(), stop.clone()).await;
        let mut reported = vec![false; pending.len()];
        if let Some(r) = report {
            add_attempt(&mut out.report, &r);
            for f in r.files {
                if let Some(src) = pending.get(f.file as usize) {
                    reported[f.file as usize] = true;
                    out.files.push((entry(src), f));
                }
            }
        }
        let mut flags = reported.into_iter();
        pending.retain(|_| !flags.next().expect("one flag per file"));
        match result {
            Ok(()) => break,
            // Every file has its outcome: what failed after that costs nothing to redo.
            Err(_) if pending.is_empty() && !out.files.is_empty() => break,
            Err(e) => {
                attempts.again(e, attempt, slot, pending.len(), &observer, &stop).await?;
            }
        }
    }
    // A session that completed reports every file; should one not have been, it failed.
    for src in pending {
        let reason = "no session of the transfer delivered it".to_owned();
        let path = src.manifest.clone();
        let status = FileStatus::StorageFailed;
        out.files.push((entry(&src), FileReport { file: 0, status, reason, path }));
    }
    Ok(out)
}

fn entry(src: &SourceFile) -> Entry {
    Entry { path: src.manifest.clone(), part: src.part.map(|p| p.offset) }
}

/// One report per file: the parts of a file (adjacent or not) become one entry, verified when
/// all are.
fn per_file(files: Vec<(Entry, FileReport)>) -> Vec<FileReport> {
    let mut out: Vec<FileReport> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (src, mut f) in files {
        // Named in the transfer's report whatever the outcome (a session names only failures),
        // so that a caller can act on each verified file (`--remove-after-transfer`).
        if f.path.is_empty() {
            f.path = src.path.clone();
        }
        if src.part.is_none() {
            f.file = out.len() as u32;
            out.push(f);
            continue;
        }
        match index.get(&src.path) {
            Some(&i) => {
                if out[i].status.is_ok() && !f.status.is_ok() {
                    out[i] = FileReport { file: i as u32, ..f };
                }
            }
            None => {
                index.insert(src.path.clone(), out.len());
                f.file = out.len() as u32;
                out.push(f);
            }
        }
    }
    out
}

/// Adds an attempt's counters to its share's. Every attempt announces what is left of the share
/// (a download's, all of it again), so the share's size is the most any attempt announced.
fn add_attempt(to: &mut DriveReport, r: &DriveReport) {
    let file_bytes = to.file_bytes.max(r.file_bytes);
    add(to, r);
    to.file_bytes = file_bytes;
}

/// Adds a session's counters to the transfer's.
fn add(to: &mut DriveReport, r: &DriveReport) {
    to.datagrams_in += r.datagrams_in;
    to.datagrams_out += r.datagrams_out;
    to.send_drops += r.send_drops;
    to.foreign_source += r.foreign_source;
    to.file_bytes += r.file_bytes;
    let (s, t) = (&mut to.side, &r.side);
    s.bytes += t.bytes;
    s.retransmitted_bytes += t.retransmitted_bytes;
    s.rate_bps = s.rate_bps.max(t.rate_bps);
    s.target_rate_bps = s.target_rate_bps.max(t.target_rate_bps);
    s.rtt = s.rtt.max(t.rtt);
    s.dropped.malformed += t.dropped.malformed;
    s.dropped.foreign += t.dropped.foreign;
    s.dropped.replay += t.dropped.replay;
    s.dropped.auth += t.dropped.auth;
}

/// Adds one session's progress to a sum: counts add up, rates too (the sessions run at once),
/// the round-trip time is the longest.
fn accumulate(t: &mut Progress, q: &Progress) {
    t.elapsed = t.elapsed.max(q.elapsed);
    t.total_bytes += q.total_bytes;
    t.files_done += q.files_done;
    t.files_total += q.files_total;
    t.datagrams_in += q.datagrams_in;
    t.datagrams_out += q.datagrams_out;
    t.send_drops += q.send_drops;
    t.side.bytes += q.side.bytes;
    t.side.retransmitted_bytes += q.side.retransmitted_bytes;
    t.side.rate_bps += q.side.rate_bps;
    t.side.target_rate_bps = t.side.target_rate_bps.saturating_add(q.side.target_rate_bps);
    t.side.rtt = t.side.rtt.max(q.side.rtt);
}

/// Progress of one share: what its finished sessions did (and the most any of them announced),
/// and its running one's latest.
#[derive(Default, Clone)]
struct ShareProgress {
    before: Progress,
    now: Progress,
}

/// An observer for share `i` that hands on the sum of all sessions' latest progress.
fn summing(i: usize, sum: Arc<Mutex<Vec<ShareProgress>>>, observer: Observer) -> Observer {
    Arc::new(move |e: ClientEvent<'_>| {
        let total = {
            let mut all = sum.lock().unwrap_or_else(|e| e.into_inner());
            match e {
                ClientEvent::Session(_) => {
                    // A retried share's new session counts from zero again.
                    let share = &mut all[i];
                    let now = std::mem::take(&mut share.now);
                    let most = share.before.total_bytes.max(now.total_bytes);
                    let most_files = share.before.files_total.max(now.files_total);
                    accumulate(&mut share.before, &now);
                    share.before.side.rate_bps = 0;
                    share.before.side.target_rate_bps = 0;
                    share.before.total_bytes = most;
                    share.before.files_total = most_files;
                    None
                }
                ClientEvent::Retry(_) => None,
                ClientEvent::Progress(p) => {
                    // What finished is this event's news, handed on once, never summed.
                    all[i].now = Progress { finished: Vec::new(), ..p.clone() };
                    let mut t = Progress { finished: p.finished.clone(), ..Progress::default() };
                    for share in all.iter() {
                        accumulate(&mut t, &share.before);
                        accumulate(&mut t, &share.now);
                        // The share's size is the most any of its sessions announced (a retry
                        // announces what is left of it): the larger of the two, not their sum.
                        t.total_bytes -= share.before.total_bytes.min(share.now.total_bytes);
                        t.files_total -= share.before.files_total.min(share.now.files_total);
                    }
                    Some(t)
                }
            }
        };
        match total {
            Some(t) => observer(ClientEvent::Progress(&t)),
            None => observer(e),
        }
    })
}
