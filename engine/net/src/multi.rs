//! Multi-session uploads (`ferry cp -C N`, ascp's `-C`): one transfer carried by several
//! sessions at once, each with its own QUIC connection, data socket and data thread, so that
//! more cores (and, on a bonded or multi-queue NIC, more queues) move it.
//!
//! [`shares`](ferry_engine::io::source::shares) deals the files out: small files whole, large
//! ones in parts, one part per session; the receiving end assembles the parts of a file
//! ([`assembly`](ferry_engine::io::assembly)) and moves it into place once all of them
//! verified. A session that fails with an error worth retrying ([`ClientError::retryable`]:
//! the network, a server that cancelled or restarted it) is run again for the files of its
//! share that had no outcome yet, up to [`SHARE_ATTEMPTS`] times, while the other sessions go
//! on; a session that fails for good stops the others.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use ferry_engine::control::FileStatus;
use ferry_engine::io::driver::{DriveReport, FileReport, Progress};
use ferry_engine::io::source::{SourceFile, SourceLimits};
use ferry_engine::io::storage::Storage;

use crate::bridge::Cancel;
use crate::client::{self, ClientError, ClientEvent, ClientOptions, Observer, Transfer};

/// How many sessions one share may take (the first and its retries).
pub const SHARE_ATTEMPTS: u32 = 3;
/// The wait before a share's first retry; it doubles for the next.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(500);

/// What one share did: each file (or part) with its outcome, and the sessions' counters.
struct ShareOutcome {
    files: Vec<(SourceFile, FileReport)>,
    report: DriveReport,
}

/// Uploads `shares` (from [`shares`](ferry_engine::io::source::shares)), one session per
/// non-empty share, all at once, to `path` on the server. The report lists each file once, in
/// the shares' order: a file sent in parts is verified when every part is, else it failed with
/// the first failed part's reason. `single`: the transfer is of one file (which may be cut in
/// parts), so the destination may name it. Progress events add up the sessions'.
pub async fn upload(
    opts: &ClientOptions,
    storage: &dyn Storage,
    shares: Vec<Vec<SourceFile>>,
    path: &str,
    single: bool,
    observer: Observer,
    cancel: Cancel,
) -> Result<DriveReport, ClientError> {
    let shares: Vec<_> = shares.into_iter().filter(|s| !s.is_empty()).collect();
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
    let sum = Arc::new(Mutex::new(vec![ShareProgress::default(); shares.len()]));
    let mut running: Vec<Option<Pin<Box<dyn Future<Output = _> + Send + '_>>>> = Vec::new();
    for (i, share) in shares.into_iter().enumerate() {
        let observer = summing(i, sum.clone(), observer.clone());
        let share = run_share(opts, storage, share, path, single, observer, stop.clone());
        running.push(Some(Box::pin(share)));
    }
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
    let mut files: Vec<(SourceFile, FileReport)> = Vec::new();
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

/// Runs one share: a session, and again for what had no outcome if it failed in a way worth
/// retrying.
async fn run_share(
    opts: &ClientOptions,
    storage: &dyn Storage,
    mut pending: Vec<SourceFile>,
    path: &str,
    single: bool,
    observer: Observer,
    stop: Cancel,
) -> Result<ShareOutcome, ClientError> {
    let mut out = ShareOutcome { files: Vec::new(), report: DriveReport::default() };
    let mut backoff = RETRY_BACKOFF;
    for attempt in 1..=SHARE_ATTEMPTS {
        let files = storage
            .source(pending.clone(), SourceLimits::default())
            .map_err(|e| ClientError::Failed(format!("cannot read the sources: {e}")))?;
        let transfer = Transfer::Upload { files, path: path.to_owned() };
        let (result, report) =
            client::attempt(opts, transfer, single, observer.clone(), stop.clone()).await;
        let mut reported = vec![false; pending.len()];
        if let Some(r) = report {
            add(&mut out.report, &r);
            for f in r.files {
                if let Some(src) = pending.get(f.file as usize) {
                    reported[f.file as usize] = true;
                    out.files.push((src.clone(), f));
                }
            }
        }
        let mut flags = reported.into_iter();
        pending.retain(|_| !flags.next().expect("one flag per file"));
        match result {
            Ok(()) => break,
            Err(_) if pending.is_empty() => break,
            Err(e) if e.retryable() && attempt < SHARE_ATTEMPTS && stop.borrow().is_none() => {
                tracing::warn!(
                    target: "ferry::multi",
                    attempt,
                    left = pending.len(),
                    "a session of the transfer failed ({e}); retrying its files in {backoff:?}"
                );
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(e) => return Err(e),
        }
    }
    // A session that completed reports every file; should one not have been, it failed.
    for src in pending {
        let reason = "no session of the transfer delivered it".to_owned();
        let path = src.manifest.clone();
        let status = FileStatus::StorageFailed;
        out.files.push((src, FileReport { file: 0, status, reason, path }));
    }
    Ok(out)
}

/// One report per file: the parts of a file (adjacent or not) become one entry, verified when
/// all are.
fn per_file(files: Vec<(SourceFile, FileReport)>) -> Vec<FileReport> {
    let mut out: Vec<FileReport> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (src, mut f) in files {
        if src.part.is_none() {
            f.file = out.len() as u32;
            out.push(f);
            continue;
        }
        match index.get(&src.manifest) {
            Some(&i) => {
                if out[i].status == FileStatus::Verified && f.status != FileStatus::Verified {
                    out[i] = FileReport { file: i as u32, ..f };
                }
            }
            None => {
                index.insert(src.manifest.clone(), out.len());
                f.file = out.len() as u32;
                out.push(f);
            }
        }
    }
    for f in &mut out {
        if f.status != FileStatus::Verified && f.path.is_empty() {
            f.path = "?".into();
        }
    }
    out
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
                    accumulate(&mut share.before, &now);
                    share.before.side.rate_bps = 0;
                    share.before.side.target_rate_bps = 0;
                    share.before.total_bytes = share.before.total_bytes.max(now.total_bytes);
                    None
                }
                ClientEvent::Progress(p) => {
                    all[i].now = p.clone();
                    let mut t = Progress::default();
                    for share in all.iter() {
                        accumulate(&mut t, &share.before);
                        accumulate(&mut t, &share.now);
                        // A retry announces what is left of the share, not all of it.
                        t.total_bytes -= share.before.total_bytes.min(share.now.total_bytes);
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
