//! The receiving end of a session.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::gaps::Gaps;
use super::inbound::{DropCounts, Inbound};
use super::layout::Layout;
use super::ranges::RangeSet;
use super::tree_hash::TreeHasher;
use super::{BlockSink, Event, SessionConfig, SessionError, SinkError, abort_code};
use crate::control::{ControlMessage, Digest, FileStatus};
use crate::crypto::{Direction, PacketProtection, SessionSecret, TAG_LEN};
use crate::rate::RateLimits;
use crate::wire::{
    self, DATA_BODY_LEN, DataFields, FEEDBACK_FIXED_LEN, FeedbackFields, HEADER_LEN, Header,
    PacketType, StatusFields,
};

/// Counters of a [`Receiver`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// DATA packets whose block was new and stored.
    pub blocks_received: u64,
    /// File bytes in those blocks (each byte counted once).
    pub bytes_stored: u64,
    /// DATA packets whose block had already arrived.
    pub duplicate_blocks: u64,
    /// STATUS packets accepted.
    pub status_received: u64,
    /// FEEDBACK packets sent.
    pub feedback_sent: u64,
    /// Blocks requested again (NACKed), counting each request.
    pub blocks_requested: u64,
    /// Requested blocks whose first transmission then arrived (reordering mistaken for loss).
    pub spurious_requests: u64,
    /// Datagrams dropped before their body was read, by reason.
    pub dropped: DropCounts,
    /// Blocks dropped: outside the flow-control window or the known manifest.
    pub dropped_window: u64,
    /// Blocks dropped because the sink was full (they are requested again).
    pub dropped_sink_full: u64,
    /// Blocks of failed files that arrived anyway (dropped).
    pub skipped_blocks: u64,
    /// Files that failed (refused, not stored, digest mismatch, or given up by the sender).
    pub files_failed: u64,
}

#[derive(Debug, Default)]
struct RecvFile {
    /// The file's BLAKE3 as its blocks are accepted (in any order, nothing read back),
    /// created with its first block and dropped when the file has its outcome, so only files in
    /// flight hold one.
    tree: Option<Box<TreeHasher>>,
    expected: Option<Box<Digest>>,
    status: Option<FileStatus>,
    /// Byte ranges held from an earlier attempt (resumed chunks, already in `tree`): the bytes
    /// of arriving blocks that fall in them are stored but not hashed again.
    held: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    Complete,
    Failed,
}

/// The receiving end of a session (see the [module docs](super)).
#[derive(Debug)]
pub struct Receiver {
    config: SessionConfig,
    /// A FILE_SUM arrived for the FILE that comes next.
    sum_pending: bool,
    inbound: Inbound,
    seal: PacketProtection,
    next_pn: u64,
    layout: Layout,
    files: Vec<RecvFile>,
    manifest_files: Option<u32>,
    /// Sum of the announced paths' lengths.
    manifest_bytes: u64,
    /// Files with an outcome.
    verified: usize,
    /// Block ranges of files that failed before all their blocks arrived: never requested, and
    /// blocks of them that still arrive are dropped.
    skipped: RangeSet,
    control_out: VecDeque<ControlMessage>,
    events: VecDeque<Event>,
    /// Every block below this has been sent by the sender (and is received unless in `gaps`).
    known_end: u64,
    gaps: Gaps,
    /// Latest (highest packet number) DATA/STATUS packet: its send time and our arrival time.
    echo: Option<(u32, Instant)>,
    rtt_hint: Duration,
    /// Reordering learned from spurious requests: wait at least this long before a request.
    reorder_learned: Duration,
    /// Extra wait before requesting a block again, learned from duplicate retransmissions.
    renack_extra: Duration,
    /// When `reorder_learned` and `renack_extra` last grew or were halved: both halve after
    /// [`LEARNING_HALF_LIFE`] without new evidence, so a burst of reordering long past does
    /// not slow every later repair.
    learned_at: Instant,
    /// The base one-way delay: the smallest relative one-way delay over two windows of
    /// [`BASE_DELAY_WINDOW`], so a route change that lengthens the path stops reading as a
    /// standing queue within two windows.
    owd_base: super::rtt::WindowedMin<i64>,
    rx_packets: u64,
    rx_bytes: u64,
    start: Instant,
    /// One-way delay (receiver clock minus sender timestamp, modulo 2^32 us) of the first packet;
    /// later delays are kept relative to it.
    owd_origin: Option<u32>,
    /// The smallest relative one-way delay since the last feedback.
    owd_min_interval: Option<i64>,
    owd_last: Option<i64>,
    /// Interarrival jitter in microseconds (RFC 3550 section 6.4.1 estimator).
    jitter_us: f64,
    jitter_samples: u32,
    next_feedback: Option<Instant>,
    last_feedback: Instant,
    requests_blocked: bool,
    feedback_urgent: bool,
    last_window_sent: u64,
    /// Spare region buffers of the tree hashers.
    region_pool: Vec<Box<[u8]>>,
    nack_buf: Vec<u8>,
    last_heard: Instant,
    state: State,
    stats: ReceiverStats,
}

/// A file's tree hasher, reporting its chunks in a resuming session.
fn new_tree(size: u64, report: bool) -> TreeHasher {
    let tree = TreeHasher::new(size);
    if report { tree.reporting() } else { tree }
}

/// Feedback interval bounds: at least this often while data flows...
const FEEDBACK_MAX_INTERVAL: Duration = Duration::from_millis(20);
/// The base one-way delay is the minimum over the current and the previous window of this
/// length (as the sender's minimum RTT is).
const BASE_DELAY_WINDOW: Duration = Duration::from_secs(10);
/// The reordering and re-request waits learned from the traffic halve after this long without
/// new evidence.
const LEARNING_HALF_LIFE: Duration = Duration::from_secs(10);
/// ...and never more often than this.
const FEEDBACK_MIN_INTERVAL: Duration = Duration::from_millis(1);

impl Receiver {
    /// A receiver for a session whose packet keys derive from `secret`.
    pub fn new(
        config: SessionConfig,
        secret: &SessionSecret,
        now: Instant,
    ) -> Result<Self, SessionError> {
        config.validate()?;
        Ok(Self {
            inbound: Inbound::new(
                config.session_id,
                PacketProtection::new(secret, config.suite, Direction::Data),
            ),
            seal: PacketProtection::new(secret, config.suite, Direction::Feedback),
            next_pn: 0,
            layout: Layout::new(config.block_size),
            files: Vec::new(),
            manifest_files: None,
            sum_pending: false,
            manifest_bytes: 0,
            verified: 0,
            skipped: RangeSet::default(),
            control_out: VecDeque::new(),
            events: VecDeque::new(),
            known_end: 0,
            gaps: Gaps::default(),
            echo: None,
            rtt_hint: Duration::ZERO,
            reorder_learned: Duration::ZERO,
            renack_extra: Duration::ZERO,
            learned_at: now,
            owd_base: super::rtt::WindowedMin::new(BASE_DELAY_WINDOW),
            rx_packets: 0,
            rx_bytes: 0,
            start: now,
            owd_origin: None,
            owd_min_interval: None,
            owd_last: None,
            jitter_us: 0.0,
            jitter_samples: 0,
            next_feedback: Some(now),
            last_feedback: now,
            requests_blocked: false,
            feedback_urgent: false,
            last_window_sent: 0,
            region_pool: Vec::new(),
            nack_buf: Vec::with_capacity(wire::MAX_DATAGRAM),
            last_heard: now,
            state: State::Active,
            stats: ReceiverStats::default(),
            config,
        })
    }

    /// Counters.
    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    /// Whether the session is over (complete or failed).
    pub fn is_finished(&self) -> bool {
        self.state != State::Active
    }

    /// The next control message to send on the reliable channel.
    pub fn poll_control(&mut self) -> Option<ControlMessage> {
        self.control_out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Limits the rate the sender sends at (a RATE_LIMIT to it): the server's rate cap at the
    /// start of an upload, an operator's change while it runs. The sender keeps within these
    /// and its own.
    pub fn set_limits(&mut self, limits: RateLimits) {
        if self.state == State::Active {
            let RateLimits { target, min } = limits;
            let target = target.max(1);
            self.control_out.push_back(ControlMessage::RateLimit { target, min: min.min(target) });
        }
    }

    /// A control message from the sender.
    pub fn handle_control(&mut self, msg: ControlMessage, sink: &mut dyn BlockSink) {
        if self.state != State::Active {
            return;
        }
        match msg {
            ControlMessage::FileSum { file, sum } => {
                if self.manifest_files.is_some()
                    || file as usize != self.files.len()
                    || self.sum_pending
                {
                    return self.fail_protocol("a file sum not right before its file");
                }
                self.sum_pending = true;
                sink.expect_sum(file, Some(sum));
            }
            ControlMessage::File(entry) => {
                self.sum_pending = false;
                if self.manifest_files.is_some() {
                    return self.fail_protocol("file after the end of the manifest");
                }
                if entry.id as usize != self.files.len() {
                    return self.fail_protocol("file ids out of sequence");
                }
                if self.files.len() >= self.config.max_files as usize {
                    let limit = self.config.max_files;
                    let e = SessionError::Limit(format!("more than {limit} files in one session"));
                    return self.fail(e, abort_code::LIMIT);
                }
                self.manifest_bytes += entry.path.len() as u64;
                if self.manifest_bytes > self.config.max_manifest_bytes {
                    let limit = self.config.max_manifest_bytes;
                    let e = SessionError::Limit(format!(
                        "the manifest's paths add up to more than {limit} bytes"
                    ));
                    return self.fail(e, abort_code::LIMIT);
                }
                self.layout.push(entry.size);
                self.files.push(RecvFile::default());
                // The window grew: tell the sender now rather than at the next interval.
                self.feedback_urgent = true;
                match sink.open(&entry) {
                    Ok(()) => {
                        if self.config.resume && super::resumable(entry.size, entry.part.is_some())
                        {
                            self.resume_file(entry.id, sink);
                        }
                        self.try_finish(entry.id, sink)
                    }
                    Err(e) => {
                        let status = if super::is_skip(&e) {
                            FileStatus::Skipped
                        } else {
                            FileStatus::StorageFailed
                        };
                        self.refuse(entry.id, status, &e, sink)
                    }
                }
            }
            ControlMessage::ManifestEnd { .. } if self.sum_pending => {
                self.fail_protocol("a file sum without its file")
            }
            ControlMessage::ManifestEnd { files } => {
                if self.manifest_files.is_some() || files as usize != self.files.len() {
                    return self.fail_protocol("manifest end does not match the files announced");
                }
                self.manifest_files = Some(files);
                self.check_complete();
            }
            ControlMessage::FileDigest { file, digest } => {
                let Some(f) = self.files.get_mut(file as usize) else {
                    return self.fail_protocol("digest for an unknown file");
                };
                if f.expected.is_some() {
                    return self.fail_protocol("second digest for a file");
                }
                if f.status.is_some() {
                    // Refused here before the sender learnt it.
                    return;
                }
                f.expected = Some(Box::new(digest));
                self.try_finish(file, sink);
            }
            ControlMessage::FileAbandon { file, reason } => {
                let Some(f) = self.files.get(file as usize) else {
                    return self.fail_protocol("abandon of an unknown file");
                };
                if f.status.is_none() {
                    let e = std::io::Error::other(format!("the sender {reason}"));
                    self.refuse(file, FileStatus::SourceFailed, &e, sink);
                }
            }
            ControlMessage::Abort { code, reason } => {
                self.state = State::Failed;
                self.events.push_back(Event::Failed(SessionError::PeerAborted { code, reason }));
            }
            ControlMessage::FileResult { .. }
            | ControlMessage::RateLimit { .. }
            | ControlMessage::FileHave { .. } => {
                self.fail_protocol("unexpected control message for a receiver")
            }
        }
    }

    /// A datagram from the sender (DATA or STATUS). Anything forged, replayed, malformed or
    /// outside the window is dropped and counted; it never reaches the sink.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &mut [u8], sink: &mut dyn BlockSink) {
        let (header, body_len) = match self.inbound.open(datagram, |t| t != PacketType::Feedback) {
            Ok(x) => x,
            Err(d) => return self.stats.dropped.record(d),
        };
        let pn = header.packet_number;
        let body = &datagram[HEADER_LEN..HEADER_LEN + body_len];
        let (send_time_us, frontier, rtt_hint_us, block) = match header.ptype {
            PacketType::Data => match DataFields::decode(body) {
                Ok(f) => (f.send_time_us, f.frontier, f.rtt_hint_us, Some((f.block, f.flags))),
                Err(_) => return self.stats.dropped.malformed += 1,
            },
            _ => match StatusFields::decode(body) {
                Ok(f) => (f.send_time_us, f.frontier, f.rtt_hint_us, None),
                Err(_) => return self.stats.dropped.malformed += 1,
            },
        };
        // A frontier beyond the manifest is impossible for an honest sender.
        if frontier > self.layout.end() {
            return self.stats.dropped_window += 1;
        }
        let payload_range = HEADER_LEN + DATA_BODY_LEN..HEADER_LEN + body_len;
        if let Some((block, _)) = block {
            let Some((_, _, expected_len)) = self.layout.locate(block) else {
                return self.stats.dropped_window += 1;
            };
            if payload_range.len() != expected_len {
                return self.stats.dropped.malformed += 1;
            }
        }
        // Authentic and well formed: from here on the packet counts.
        self.inbound.commit(pn);
        self.last_heard = now;
        if self.inbound.highest() == Some(pn) {
            self.echo = Some((send_time_us, now));
        }
        self.observe_one_way_delay(now, send_time_us);
        self.forget_old_learning(now);
        if rtt_hint_us != 0 {
            self.rtt_hint = Duration::from_micros(u64::from(rtt_hint_us));
        }
        if self.state != State::Active {
            return;
        }
        if self.next_feedback.is_none() {
            self.next_feedback = Some(now + self.feedback_interval());
        }
        match block {
            None => {
                self.stats.status_received += 1;
                self.learn_frontier(now, frontier, None);
            }
            Some((block, flags)) => {
                self.rx_bytes += datagram.len() as u64;
                let payload = &datagram[payload_range];
                self.accept_block(now, block, flags, frontier, payload, sink);
            }
        }
    }

    fn accept_block(
        &mut self,
        now: Instant,
        block: u64,
        flags: u8,
        frontier: u64,
        payload: &[u8],
        sink: &mut dyn BlockSink,
    ) {
        let retransmission = flags & wire::DATA_RETRANSMISSION != 0;
        self.rx_packets += 1;
        let already = block < self.known_end && !self.gaps.contains(block);
        if already {
            self.stats.duplicate_blocks += 1;
            // A repair sent twice on purpose arrives twice: no sign of an early request.
            if retransmission && flags & wire::DATA_TWICE == 0 {
                // We asked again before the first answer could arrive: wait longer next time.
                let rtt = self.rtt();
                self.renack_extra = (self.renack_extra + rtt / 4).min(rtt);
                self.learned_at = now;
            }
            self.learn_frontier(now, frontier, None);
            return;
        }
        if self.skipped.contains(block) {
            // A failed file: nothing of it is stored (and its range was never a gap).
            self.stats.skipped_blocks += 1;
            self.learn_frontier(now, frontier.max(block + 1), None);
            return;
        }
        let cumulative = self.cumulative();
        if block >= cumulative + self.config.max_window {
            self.stats.dropped_window += 1;
            return;
        }
        if sink.free_blocks() == 0 {
            self.stats.dropped_sink_full += 1;
            self.learn_frontier(now, frontier, None);
            return;
        }
        let (file, offset, _) = self.layout.locate(block).expect("located in handle_datagram");
        match sink.write(file, offset, payload) {
            Ok(()) => {}
            Err(SinkError::Full) => {
                self.stats.dropped_sink_full += 1;
                self.learn_frontier(now, frontier, None);
                return;
            }
            Err(SinkError::Io(e)) => {
                self.learn_frontier(now, frontier.max(block + 1), None);
                return self.refuse(file, FileStatus::StorageFailed, &e, sink);
            }
        }
        self.stats.blocks_received += 1;
        self.stats.bytes_stored += payload.len() as u64;
        if let Some(filled) = self.learn_frontier(now, frontier, Some(block))
            && filled.requested
            && !retransmission
        {
            // The original arrived after we asked for it again: reordering, not loss. Learn
            // how late it was, so the next request waits that long.
            self.stats.spurious_requests += 1;
            let late = now.saturating_duration_since(filled.detected) * 5 / 4;
            let cap = self.rtt() + Duration::from_millis(100);
            self.reorder_learned = self.reorder_learned.max(late).min(cap);
            self.learned_at = now;
        }
        let size = self.layout.span(file).size;
        let f = &mut self.files[file as usize];
        let report = self.config.resume;
        let tree = f.tree.get_or_insert_with(|| Box::new(new_tree(size, report)));
        if f.held.is_empty() {
            tree.add(offset, payload, &mut self.region_pool);
        } else {
            // Bytes held from an earlier attempt are in the tree already.
            let end = offset + payload.len() as u64;
            let mut at = offset;
            for &(s, e) in &f.held {
                if e <= at || s >= end {
                    continue;
                }
                if s > at {
                    tree.add(
                        at,
                        &payload[(at - offset) as usize..(s - offset) as usize],
                        &mut self.region_pool,
                    );
                }
                at = e.min(end);
            }
            if at < end {
                tree.add(at, &payload[(at - offset) as usize..], &mut self.region_pool);
            }
        }
        if report {
            for (start, cv) in tree.take_chunks() {
                sink.chunk_received(file, start, &cv);
            }
        }
        self.try_finish(file, sink);
    }

    /// A resumable file was opened: asks the sink what it holds of it from an earlier attempt,
    /// takes those chunks into the file's digest, stops expecting the blocks they cover, and
    /// tells the sender (FILE_HAVE, possibly with no range).
    fn resume_file(&mut self, file: u32, sink: &mut dyn BlockSink) {
        let span = self.layout.span(file);
        let size = span.size;
        let bs = self.config.block_size as u64;
        let mut held: Vec<(u64, u64)> = Vec::new();
        let mut tree = None;
        for (start, cv) in sink.resumed(file) {
            let in_order = held.last().is_none_or(|&(_, e)| e <= start);
            if !start.is_multiple_of(super::RESUME_CHUNK)
                || start + super::RESUME_CHUNK > size
                || !in_order
            {
                debug_assert!(false, "a sink resumed a chunk that is not one");
                continue;
            }
            tree.get_or_insert_with(|| Box::new(new_tree(size, true))).add_chunk(start, cv);
            match held.last_mut() {
                Some(last) if last.1 == start => last.1 += super::RESUME_CHUNK,
                _ => held.push((start, start + super::RESUME_CHUNK)),
            }
        }
        if self.config.resume_head && held.first().is_some_and(|&(start, _)| start != 0) {
            // A sender that seals the file anew can reproduce held bytes only under the held
            // head (chunk 0): without it, nothing held is of use, and all of it comes again.
            held.clear();
            tree = None;
        }
        // The blocks wholly inside held bytes are not sent; the others arrive whole (their
        // held bytes are written again and not hashed again).
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &(s, e) in &held {
            let first = s.div_ceil(bs);
            let end = if e >= size { span.blocks } else { e / bs };
            if first >= end {
                continue;
            }
            match ranges.last_mut() {
                Some(last) if last.1 >= first => last.1 = end,
                _ => ranges.push((first, end)),
            }
        }
        ranges.truncate(crate::control::MAX_HAVE_RANGES);
        for &(a, b) in &ranges {
            self.skipped.insert(span.first + a, span.first + b);
            self.gaps.remove_range(span.first + a, span.first + b);
        }
        let head = if self.config.resume_head && ranges.first().is_some_and(|r| r.0 == 0) {
            let mut h = sink.held_head(file);
            h.truncate(crate::control::MAX_HAVE_HEAD);
            h
        } else {
            Vec::new()
        };
        let f = &mut self.files[file as usize];
        f.tree = tree;
        f.held = held;
        self.control_out.push_back(ControlMessage::FileHave { file, ranges, head });
    }

    /// Every block below `frontier` was sent; those not received become gaps. `received` is a
    /// block that just arrived; if it filled a gap, what was known about that gap is returned.
    fn learn_frontier(
        &mut self,
        now: Instant,
        frontier: u64,
        received: Option<u64>,
    ) -> Option<super::gaps::Filled> {
        let due = now + self.reorder_delay();
        let mut filled = None;
        if let Some(b) = received {
            if b >= self.known_end {
                self.gaps.add(self.known_end, b, now, due);
                for (s, e) in self.skipped.overlapping(self.known_end, b) {
                    self.gaps.remove_range(s, e);
                }
                self.known_end = b + 1;
            } else {
                filled = self.gaps.remove(b);
                debug_assert!(filled.is_some());
            }
        }
        if frontier > self.known_end {
            self.gaps.add(self.known_end, frontier, now, due);
            for (s, e) in self.skipped.overlapping(self.known_end, frontier) {
                self.gaps.remove_range(s, e);
            }
            self.known_end = frontier;
        }
        filled
    }

    /// Halves the learned reordering and re-request waits after [`LEARNING_HALF_LIFE`] without
    /// new evidence.
    fn forget_old_learning(&mut self, now: Instant) {
        if now.saturating_duration_since(self.learned_at) >= LEARNING_HALF_LIFE {
            self.reorder_learned /= 2;
            self.renack_extra /= 2;
            self.learned_at = now;
        }
    }

    /// Tracks one-way delay relative to the first packet: its minimum is the path's base delay,
    /// the excess over it is forward-path queueing (clock offsets cancel out).
    fn observe_one_way_delay(&mut self, now: Instant, send_time_us: u32) {
        let local_us = now.saturating_duration_since(self.start).as_micros() as u32;
        let owd = local_us.wrapping_sub(send_time_us);
        let origin = *self.owd_origin.get_or_insert(owd);
        let rel = i64::from(owd.wrapping_sub(origin) as i32);
        self.owd_base.update(now, rel);
        self.owd_min_interval = Some(self.owd_min_interval.map_or(rel, |m| m.min(rel)));
        if let Some(last) = self.owd_last {
            // A plain average over the first samples, then RFC 3550's gain of 1/16.
            self.jitter_samples = (self.jitter_samples + 1).min(16);
            let gain = 1.0 / f64::from(self.jitter_samples);
            self.jitter_us += ((rel - last).abs() as f64 - self.jitter_us) * gain;
        }
        self.owd_last = Some(rel);
    }

    /// The forward queueing delay now: the standing minimum since the last feedback.
    fn queue_delay(&self) -> Duration {
        let base = self.owd_base.get().unwrap_or(0);
        let q = self.owd_min_interval.map_or(0, |m| m - base);
        Duration::from_micros(q.max(0) as u64)
    }

    /// The file of the first block not yet received: its id, the bytes of it received before
    /// that block and its size; `None` when every announced block is in.
    pub fn position(&self) -> Option<(u32, u64, u64)> {
        let (file, offset, _) = self.layout.locate(self.cumulative())?;
        Some((file, offset, self.layout.span(file).size))
    }

    fn cumulative(&self) -> u64 {
        self.gaps.first().unwrap_or(self.known_end)
    }

    /// Verifies and finishes file `file` once all its blocks are hashed and its digest known.
    fn try_finish(&mut self, file: u32, sink: &mut dyn BlockSink) {
        let size = self.layout.span(file).size;
        let f = &mut self.files[file as usize];
        let actual = match &f.tree {
            _ if size == 0 => Some(*blake3::hash(&[]).as_bytes()),
            Some(t) => t.finalize(),
            None => None,
        };
        let Some(actual) = actual else { return };
        if f.status.is_some() || f.expected.is_none() {
            return;
        }
        let Some(expected) = f.expected.take() else { return };
        let verified = bool::from(subtle::ConstantTimeEq::ct_eq(&actual[..], &expected[..]));
        let (status, reason) = match (verified, sink.finish(file, verified)) {
            (true, Ok(())) => (FileStatus::Verified, String::new()),
            (false, _) => (
                FileStatus::DigestMismatch,
                "the received bytes do not match the sender's digest (the file changed while \
                 it was being sent?)"
                    .to_owned(),
            ),
            (true, Err(e)) => (FileStatus::StorageFailed, e.to_string()),
        };
        self.conclude(file, status, reason);
    }

    /// Records file `file`'s outcome and tells the sender.
    fn conclude(&mut self, file: u32, status: FileStatus, reason: String) {
        let f = &mut self.files[file as usize];
        f.status = Some(status);
        f.tree = None;
        f.expected = None;
        f.held = Vec::new();
        self.verified += 1;
        if !status.is_ok() {
            self.stats.files_failed += 1;
        }
        self.control_out.push_back(ControlMessage::FileResult {
            file,
            status,
            reason: reason.clone(),
        });
        self.events.push_back(Event::FileDone { file, status, reason });
        self.check_complete();
    }

    /// Fails file `file` alone (it cannot be stored, or the sender gave it up): what the sink
    /// has of it is discarded, its missing blocks are no longer requested, blocks of it that
    /// still arrive are dropped, and the session goes on.
    fn refuse(
        &mut self,
        file: u32,
        status: FileStatus,
        error: &std::io::Error,
        sink: &mut dyn BlockSink,
    ) {
        if self.files[file as usize].status.is_some() {
            return;
        }
        let _ = sink.finish(file, false);
        let span = self.layout.span(file);
        self.skipped.insert(span.first, span.end());
        self.gaps.remove_range(span.first, span.end());
        self.conclude(file, status, error.to_string());
    }

    fn check_complete(&mut self) {
        if self.state == State::Active && self.manifest_files == Some(self.verified as u32) {
            self.state = State::Complete;
            self.events.push_back(Event::Complete);
        }
    }

    /// Writes a FEEDBACK datagram into `buf` if one is due, returning its length. `sink` is
    /// consulted for its free space (flow control).
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        sink: &dyn BlockSink,
        buf: &mut [u8],
    ) -> Option<usize> {
        if self.state != State::Active {
            return None;
        }
        // Sink space already spoken for: blocks requested and on their way, and new blocks the
        // last advertised window let the sender put in flight.
        let free = sink.free_blocks();
        let in_flight = self.last_window_sent.saturating_sub(self.known_end);
        let available = free.saturating_sub(self.gaps.requested() + in_flight);
        // With no space for requested blocks, requests wait for the periodic feedback.
        self.requests_blocked = available == 0;
        let gap_due = self.request_due().is_some_and(|d| d <= now) && available > 0;
        let timer_due = self.next_feedback.is_some_and(|t| t <= now);
        let urgent = self.feedback_urgent && self.window_end(free) != self.last_window_sent;
        if !(gap_due || timer_due || urgent) {
            self.feedback_urgent = false;
            return None;
        }
        let limit = buf.len().min(wire::MAX_DATAGRAM) - TAG_LEN;
        let cumulative = self.cumulative();
        let mut count: u16 = 0;
        let mut prev_end = cumulative;
        let renack = self.renack_delay();
        let nack = &mut self.nack_buf;
        nack.clear();
        let nack_limit = limit - HEADER_LEN - FEEDBACK_FIXED_LEN;
        let mut requested = 0;
        self.gaps.take_due(now, available, now + renack, |start, end| {
            if count == u16::MAX || !wire::push_nack_range(nack, nack_limit, prev_end, start, end) {
                return false;
            }
            count += 1;
            prev_end = end;
            requested += end - start;
            true
        });
        self.stats.blocks_requested += requested;
        let window_end = self.window_end(free);
        let (echo_time_us, echo_delay_us) = match self.echo {
            Some((t, at)) => {
                (t, wire::duration_us_u32(now.saturating_duration_since(at)).min(u32::MAX - 1))
            }
            None => (0, u32::MAX),
        };
        let fields = FeedbackFields {
            echo_time_us,
            echo_delay_us,
            cumulative,
            window_end,
            rx_packets: self.rx_packets,
            rx_bytes: self.rx_bytes,
            queue_delay_us: wire::duration_us_u32(self.queue_delay()),
            nack_ranges: count,
        };
        let len = HEADER_LEN + FEEDBACK_FIXED_LEN + self.nack_buf.len() + TAG_LEN;
        let packet = &mut buf[..len];
        let pn = self.next_pn;
        Header {
            ptype: PacketType::Feedback,
            session_id: self.config.session_id,
            packet_number: pn,
        }
        .encode(packet);
        fields.encode(&mut packet[HEADER_LEN..]);
        packet[HEADER_LEN + FEEDBACK_FIXED_LEN..len - TAG_LEN].copy_from_slice(&self.nack_buf);
        if self.seal.seal(pn, packet, HEADER_LEN).is_err() {
            self.fail(SessionError::PacketNumbersExhausted, abort_code::PROTOCOL);
            return None;
        }
        self.next_pn += 1;
        self.stats.feedback_sent += 1;
        self.last_feedback = now;
        self.owd_min_interval = None;
        self.last_window_sent = window_end;
        self.feedback_urgent = false;
        self.next_feedback = Some(now + self.feedback_interval());
        Some(len)
    }

    /// The next time [`poll_transmit`](Self::poll_transmit) or
    /// [`handle_timeout`](Self::handle_timeout) has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state != State::Active {
            return None;
        }
        let mut t = self.last_heard + self.config.idle_timeout;
        for d in [self.next_feedback, self.request_due()].into_iter().flatten() {
            t = t.min(d);
        }
        if self.feedback_urgent {
            t = t.min(self.last_heard);
        }
        Some(t)
    }

    /// Advances timers to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Active && now >= self.last_heard + self.config.idle_timeout {
            self.state = State::Failed;
            self.events
                .push_back(Event::Failed(SessionError::IdleTimeout(self.config.idle_timeout)));
        }
    }

    /// When the next retransmission request may go out: when a gap falls due, but no sooner than
    /// [`FEEDBACK_MIN_INTERVAL`] after the previous feedback, so requests falling due close
    /// together share one packet (they are delayed a little, never sent early).
    fn request_due(&self) -> Option<Instant> {
        if self.requests_blocked {
            return None;
        }
        self.gaps.next_due().map(|d| d.max(self.last_feedback + FEEDBACK_MIN_INTERVAL))
    }

    fn window_end(&self, sink_free: u64) -> u64 {
        let cumulative = self.cumulative();
        (cumulative + self.config.max_window)
            .min(self.layout.end())
            .min(self.known_end.saturating_add(sink_free.saturating_sub(self.gaps.requested())))
            .max(cumulative)
    }

    fn feedback_interval(&self) -> Duration {
        (self.rtt() / 8).clamp(FEEDBACK_MIN_INTERVAL, FEEDBACK_MAX_INTERVAL)
    }

    fn rtt(&self) -> Duration {
        if self.rtt_hint.is_zero() { self.config.initial_rtt } else { self.rtt_hint }
    }

    /// How long a missing block may just be late: at least the configured minimum, an eighth
    /// of the RTT, four times the measured jitter, and the lateness learned from spurious requests.
    fn reorder_delay(&self) -> Duration {
        let jitter = Duration::from_micros((4.0 * self.jitter_us) as u64);
        self.config.reorder_delay.max(self.rtt() / 8).max(jitter).max(self.reorder_learned)
    }

    /// How long after requesting a block the receiver requests it again if it has not arrived:
    /// one RTT for the request and the block (the smoothed RTT may lag a queue that is building,
    /// so the forward queue measured now is added), plus half an RTT and two feedback intervals
    /// of margin for jitter.
    fn renack_delay(&self) -> Duration {
        let rtt = self.rtt() + self.queue_delay();
        rtt + rtt / 2 + 2 * self.feedback_interval() + self.reorder_delay() + self.renack_extra
    }

    fn fail_protocol(&mut self, what: &'static str) {
        self.fail(SessionError::Protocol(what), abort_code::PROTOCOL);
    }

    fn fail(&mut self, error: SessionError, code: u16) {
        if self.state == State::Active {
            self.state = State::Failed;
            self.control_out.push_back(ControlMessage::Abort { code, reason: error.to_string() });
            self.events.push_back(Event::Failed(error));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{CipherSuite, SessionSecret};
    use crate::rate::RateLimits;

    fn receiver(now: Instant) -> Receiver {
        let limits = RateLimits { target: 1_000_000_000, min: 0 };
        let config = SessionConfig::new(1, CipherSuite::Aes128, limits);
        Receiver::new(config, &SessionSecret::new([1; 32]), now).unwrap()
    }

    /// The sender's clock runs 7 s ahead of ours; the path's one-way delay is `owd`.
    fn arrive(r: &mut Receiver, t0: Instant, at_ms: u64, owd_ms: u64) {
        let now = t0 + Duration::from_millis(at_ms);
        let sent_us = ((at_ms - owd_ms) * 1000 + 7_000_000) as u32;
        r.owd_min_interval = None;
        r.observe_one_way_delay(now, sent_us);
        r.forget_old_learning(now);
    }

    /// A route change that lengthens the path by 40 ms reads as a standing queue at first and
    /// as the new base delay within two windows; a queue on the new path still shows.
    #[test]
    fn the_base_one_way_delay_expires_after_a_route_change() {
        let t0 = Instant::now();
        let mut r = receiver(t0);
        for ms in (0..5_000).step_by(10) {
            arrive(&mut r, t0, 1_000 + ms, 20);
        }
        assert_eq!(r.queue_delay(), Duration::ZERO);
        arrive(&mut r, t0, 6_000, 60);
        assert_eq!(r.queue_delay(), Duration::from_millis(40), "new path, old base");
        for ms in (0..25_000).step_by(10) {
            arrive(&mut r, t0, 6_010 + ms, 60);
        }
        assert_eq!(r.queue_delay(), Duration::ZERO, "the old base expired");
        arrive(&mut r, t0, 31_100, 75);
        assert_eq!(r.queue_delay(), Duration::from_millis(15), "a queue on the new path");
    }

    /// What spurious requests taught (wait longer before asking) halves every 10 s without new
    /// evidence.
    #[test]
    fn learned_waits_decay() {
        let t0 = Instant::now();
        let mut r = receiver(t0);
        r.reorder_learned = Duration::from_millis(80);
        r.renack_extra = Duration::from_millis(40);
        r.learned_at = t0;
        arrive(&mut r, t0, 9_000, 20);
        assert_eq!(r.reorder_learned, Duration::from_millis(80));
        arrive(&mut r, t0, 10_500, 20);
        assert_eq!((r.reorder_learned, r.renack_extra), (ms(40), ms(20)));
        arrive(&mut r, t0, 21_000, 20);
        assert_eq!((r.reorder_learned, r.renack_extra), (ms(20), ms(10)));
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
}
