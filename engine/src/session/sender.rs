//! The sending end of a session.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::inbound::{DropCounts, Inbound};
use super::layout::Layout;
use super::ranges::RangeSet;
use super::rtt::RttEstimator;
use super::{BlockSource, Event, HASH_BATCH, SessionConfig, SessionError, abort_code};
use crate::control::{ControlMessage, FileEntry, FileStatus};
use crate::crypto::{Direction, PacketProtection, SessionSecret, TAG_LEN};
use crate::rate::{Controller, ControllerFactory, Pacer, RateLimits, RateSample};
use crate::wire::{
    self, DATA_BODY_LEN, DataFields, FeedbackFields, HEADER_LEN, Header, NackRanges, PacketType,
    STATUS_BODY_LEN, STATUS_WINDOW_BLOCKED, StatusFields,
};

/// Counters of a [`Sender`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// DATA packets carrying a block for the first time.
    pub data_packets: u64,
    /// DATA packets carrying a block again because the receiver asked for it, or as the
    /// deliberate second copy of a repair in the session's tail (counted in both).
    pub retransmitted_packets: u64,
    /// Second copies of tail repairs (see [`Sender`]: a lost repair would cost a round trip).
    pub second_copies: u64,
    /// STATUS packets.
    pub status_packets: u64,
    /// Datagram bytes handed to the network (all packet types).
    pub bytes_sent: u64,
    /// File bytes in DATA packets, retransmissions included.
    pub payload_bytes_sent: u64,
    /// File bytes sent for the first time (each byte counted once).
    pub new_payload_bytes: u64,
    /// FEEDBACK packets accepted.
    pub feedback_received: u64,
    /// Datagrams dropped before their body was read, by reason.
    pub dropped: DropCounts,
    /// Files this end could not read and gave up (the rest of the session went on).
    pub files_abandoned: u64,
}

#[derive(Debug, Default)]
struct SendFile {
    /// Created when the first bytes are hashed and dropped when the digest is queued, so only
    /// files in flight hold one (a hasher is about 2 KB).
    hasher: Option<Box<blake3::Hasher>>,
    /// Bytes of the file hashed so far (a prefix of what has been sent once).
    hashed: u64,
    result: Option<FileStatus>,
    /// Its remaining blocks are not sent: this end could not read it, or the receiver refused it.
    skip: bool,
    /// This end gave it up (FILE_ABANDON sent).
    abandoned: bool,
    /// A resumable file in a resuming session whose FILE_HAVE (or result) has not arrived:
    /// none of its blocks may be sent yet.
    awaiting_have: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    Complete,
    Failed,
}

/// What [`Sender::transmit`] did.
enum Transmitted {
    Sent(usize),
    /// Nothing may be sent now (pacing, or the session ended).
    Paced,
    /// The datagram's file was skipped instead; ask again.
    Skipped,
}

/// What the next datagram will carry.
#[derive(Debug, Clone, Copy)]
enum Next {
    Retransmit(u64),
    /// A second copy of a block retransmitted in the session's tail ([`Sender::again`]).
    Again(u64),
    New(u64),
    Status,
}

/// Second copies queued at most (more retransmissions in the tail are sent once).
const MAX_AGAIN: usize = 1 << 16;
/// The shortest receiver silence that stops data (docs/PROTOCOL.md 5.1, a silent receiver).
pub const MIN_SILENCE: Duration = Duration::from_millis(250);
/// The silence that stops data before the first RTT sample: the first feedback comes a round
/// trip after the first block, and the longest paths served take about a second.
pub const INITIAL_SILENCE: Duration = Duration::from_secs(3);

/// The sending end of a session (see the [module docs](super)).
#[derive(Debug)]
pub struct Sender {
    config: SessionConfig,
    seal: PacketProtection,
    inbound: Inbound,
    start: Instant,
    next_pn: u64,
    layout: Layout,
    files: Vec<SendFile>,
    manifest_closed: bool,
    results: usize,
    digests_sent: usize,
    control_out: VecDeque<ControlMessage>,
    events: VecDeque<Event>,
    frontier: u64,
    retransmit: RangeSet,
    cumulative: u64,
    window_end: u64,
    newest_feedback: Option<u64>,
    rtt: RttEstimator,
    controller: Box<dyn Controller>,
    pacer: Pacer,
    paced_until: Option<Instant>,
    hash_buf: Vec<u8>,
    next_status: Instant,
    last_heard: Instant,
    /// The receiver has been silent past [`Sender::silence_limit`] while there was data to
    /// send: only STATUS probes go out until it is heard again.
    silent: bool,
    state: State,
    stats: SenderStats,
    /// This end's own limits (`config.limits` holds what applies: these within the peer's).
    own_limits: RateLimits,
    /// The receiver's limits, once it sent a RATE_LIMIT.
    peer_limits: Option<RateLimits>,
    /// DATA bytes sent by each send time, and by the packet the newest feedback echoed: the
    /// controller's loss estimate compares this with what the receiver accepted.
    send_log: super::sendlog::SendLog,
    sent_at_echo: u64,
    /// Blocks retransmitted once every block had been sent (the tail), to be sent a second
    /// time: there is nothing new to send then, and a repair lost again would cost another
    /// round trip (with loss `p`, a tail repair round then fails with `p²`, not `p`).
    again: VecDeque<u64>,
    /// Blocks the receiver holds from an earlier attempt (its FILE_HAVEs): never sent.
    held: RangeSet,
    /// Held heads to adopt before the files are read (FILE_HAVE in a `resume_head` session).
    heads: std::collections::VecDeque<(u32, Vec<u8>)>,
}

impl Sender {
    /// A sender for a session whose packet keys derive from `secret`, rate-controlled by a
    /// controller from `factory`.
    pub fn new(
        config: SessionConfig,
        secret: &SessionSecret,
        factory: &dyn ControllerFactory,
        now: Instant,
    ) -> Result<Self, SessionError> {
        config.validate()?;
        let controller = factory.build(config.limits);
        let rate = config.limits.clamp(controller.rate());
        let pacer = Pacer::new(rate, 2 * (config.block_size + wire::DATA_OVERHEAD));
        Ok(Self {
            seal: PacketProtection::new(secret, config.suite, Direction::Data),
            inbound: Inbound::new(
                config.session_id,
                PacketProtection::new(secret, config.suite, Direction::Feedback),
            ),
            start: now,
            next_pn: 0,
            layout: Layout::new(config.block_size),
            files: Vec::new(),
            manifest_closed: false,
            results: 0,
            digests_sent: 0,
            control_out: VecDeque::new(),
            events: VecDeque::new(),
            frontier: 0,
            retransmit: RangeSet::default(),
            cumulative: 0,
            window_end: 0,
            newest_feedback: None,
            rtt: RttEstimator::new(),
            controller,
            pacer,
            paced_until: None,
            hash_buf: vec![0; HASH_BATCH],
            next_status: now,
            last_heard: now,
            silent: false,
            state: State::Active,
            stats: SenderStats::default(),
            own_limits: config.limits,
            peer_limits: None,
            send_log: Default::default(),
            sent_at_echo: 0,
            again: VecDeque::new(),
            held: RangeSet::default(),
            heads: Default::default(),
            config,
        })
    }

    /// Appends a file to the manifest and returns its id. `entry.id` is ignored and assigned.
    /// Files may be added while earlier ones are in flight; no round trip is needed per file.
    pub fn add_file(&mut self, mut entry: FileEntry) -> u32 {
        assert!(!self.manifest_closed, "add_file after finish_manifest");
        let id = self.files.len() as u32;
        entry.id = id;
        self.layout.push(entry.size);
        let awaiting_have =
            self.config.resume && super::resumable(entry.size, entry.part.is_some());
        self.files.push(SendFile { awaiting_have, ..SendFile::default() });
        self.control_out.push_back(ControlMessage::File(entry));
        // An empty file's digest needs no bytes: queue it as soon as its turn comes.
        self.hash_sent(None);
        id
    }

    /// [`Sender::add_file`], announcing the file's content checksum first (FILE_SUM, resume
    /// level 2 or 3) when there is one.
    pub fn add_file_summed(
        &mut self,
        entry: FileEntry,
        sum: Option<crate::control::FileSum>,
    ) -> u32 {
        if let Some(sum) = sum {
            let file = self.files.len() as u32;
            self.control_out.push_back(ControlMessage::FileSum { file, sum });
        }
        self.add_file(entry)
    }

    /// The file the frontier is in: its id, the bytes of it sent so far (for the first time) and
    /// its size; `None` once every block went out.
    pub fn position(&self) -> Option<(u32, u64, u64)> {
        let (file, offset, _) = self.layout.locate(self.frontier)?;
        Some((file, offset, self.layout.span(file).size))
    }

    /// Declares the manifest complete.
    pub fn finish_manifest(&mut self) {
        if self.manifest_closed {
            return;
        }
        self.manifest_closed = true;
        self.control_out.push_back(ControlMessage::ManifestEnd { files: self.files.len() as u32 });
        self.check_complete();
    }

    /// Changes this end's rate limits mid-transfer (`-l`/`-m` live). The receiver's, if it
    /// sent any, still bound them.
    pub fn set_limits(&mut self, limits: RateLimits) {
        self.own_limits = limits;
        self.apply_limits();
    }

    /// The limits that apply: this end's within the receiver's.
    fn apply_limits(&mut self) {
        let limits = match &self.peer_limits {
            Some(peer) => self.own_limits.within(peer),
            None => self.own_limits,
        };
        self.config.limits = limits;
        self.controller.set_limits(limits);
        self.update_pacer();
    }

    /// The rate limits that apply now (this end's within the receiver's).
    pub fn limits(&self) -> RateLimits {
        self.config.limits
    }

    /// Counters.
    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    /// The rate controller's state, for debug logs.
    pub fn controller_state(&self) -> String {
        self.controller.state()
    }

    /// The current pacing rate in bits per second.
    pub fn rate(&self) -> u64 {
        self.pacer.rate()
    }

    /// The smoothed RTT, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.rtt.srtt()
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

    /// A control message from the receiver.
    pub fn handle_control(&mut self, msg: ControlMessage) {
        if self.state != State::Active {
            return;
        }
        match msg {
            ControlMessage::FileResult { file, status, reason } => {
                let digest_sent = (self.digests_sent as u32) > file;
                let Some(f) = self.files.get_mut(file as usize) else {
                    return self.fail_protocol("result for an unknown file");
                };
                if f.result.is_some() {
                    return self.fail_protocol("second result for a file");
                }
                // A refusal may come at any time; a verdict on the content only after the
                // digest; a source failure only for a file this end gave up.
                let allowed = match status {
                    FileStatus::StorageFailed | FileStatus::Skipped => true,
                    FileStatus::Verified | FileStatus::DigestMismatch => digest_sent,
                    FileStatus::SourceFailed => f.abandoned,
                };
                if !allowed {
                    return self.fail_protocol("result the file's state does not allow");
                }
                f.result = Some(status);
                f.awaiting_have = false;
                self.results += 1;
                self.events.push_back(Event::FileDone { file, status, reason });
                if status != FileStatus::Verified {
                    self.skip_file(file);
                    self.hash_sent(None);
                }
                self.check_complete();
            }
            ControlMessage::FileHave { file, ranges, head } => {
                let Some(f) = self.files.get_mut(file as usize) else {
                    return self.fail_protocol("file have for an unknown file");
                };
                if !f.awaiting_have {
                    return self.fail_protocol("file have for a file that does not expect one");
                }
                f.awaiting_have = false;
                let span = self.layout.span(file);
                if ranges.last().is_some_and(|&(_, end)| end > span.blocks) {
                    return self.fail_protocol("file have beyond the file's blocks");
                }
                if self.config.resume_head && ranges.first().is_some_and(|r| r.0 == 0) {
                    // What is held starts with bytes this end must reproduce: it takes them
                    // over before it reads the file (`poll_transmit`).
                    if head.len() != span.size.min(crate::control::MAX_HAVE_HEAD as u64) as usize {
                        return self.fail_protocol("file have without the held head");
                    }
                    self.heads.push_back((file, head));
                } else if !head.is_empty() {
                    return self
                        .fail_protocol("file have with a head this session did not ask for");
                }
                for (start, end) in ranges {
                    self.held.insert(span.first + start, span.first + end);
                }
            }
            ControlMessage::RateLimit { target, min } => {
                self.peer_limits = Some(RateLimits { target, min });
                self.apply_limits();
            }
            ControlMessage::Abort { code, reason } => {
                self.state = State::Failed;
                self.events.push_back(Event::Failed(SessionError::PeerAborted { code, reason }));
            }
            _ => self.fail_protocol("unexpected control message for a sender"),
        }
    }

    /// A datagram from the receiver (FEEDBACK). Anything else, anything forged, replayed or
    /// malformed is dropped and counted.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &mut [u8]) {
        let (header, body_len) = match self.inbound.open(datagram, |t| t == PacketType::Feedback) {
            Ok(x) => x,
            Err(d) => return self.stats.dropped.record(d),
        };
        let pn = header.packet_number;
        self.inbound.commit(pn);
        let body = &datagram[HEADER_LEN..HEADER_LEN + body_len];
        let Ok((fb, ranges)) = FeedbackFields::decode(body) else {
            return self.stats.dropped.malformed += 1;
        };
        self.stats.feedback_received += 1;
        self.last_heard = now;
        self.silent = false;
        if self.state != State::Active {
            return;
        }
        let newest = self.newest_feedback.is_none_or(|n| pn > n);
        if fb.cumulative > self.frontier || fb.window_end < fb.cumulative {
            return self.stats.dropped.malformed += 1;
        }
        self.cumulative = self.cumulative.max(fb.cumulative);
        self.retransmit.remove_below(self.cumulative);
        for range in NackRanges::new(ranges, fb.cumulative, fb.nack_ranges) {
            let Ok((start, end)) = range else {
                self.stats.dropped.malformed += 1;
                break;
            };
            self.retransmit.insert(start.max(self.cumulative), end.min(self.frontier));
        }
        if !newest {
            return;
        }
        self.newest_feedback = Some(pn);
        self.window_end = fb.window_end;
        let rtt = (fb.echo_delay_us != u32::MAX).then(|| {
            let elapsed = self.micros(now).wrapping_sub(fb.echo_time_us);
            Duration::from_micros(u64::from(elapsed.saturating_sub(fb.echo_delay_us)))
        });
        let rtt = rtt.filter(|r| *r < Duration::from_secs(60));
        if let Some(r) = rtt {
            self.rtt.update(now, r.max(Duration::from_micros(1)));
        }
        if fb.echo_delay_us != u32::MAX {
            // The echoed send time on the session's 64-bit clock (the wire carries 32 bits).
            let now_us = self.micros64(now);
            let echo =
                now_us.saturating_sub(u64::from(self.micros(now).wrapping_sub(fb.echo_time_us)));
            if let Some(sent) = self.send_log.sent_by(echo) {
                self.sent_at_echo = sent;
            }
        }

        if let (Some(srtt), Some(min_rtt)) = (self.rtt.srtt(), self.rtt.min_rtt()) {
            self.controller.on_sample(&RateSample {
                now,
                rtt,
                min_rtt,
                srtt,
                queue_delay: Duration::from_micros(u64::from(fb.queue_delay_us)),
                delivered_bytes: fb.rx_bytes,
                sent_bytes: self.sent_at_echo,
                sending_rate: self.pacer.rate(),
            });
            self.update_pacer();
        }
    }

    /// Writes the next datagram into `buf` and returns its length, or `None` if nothing may be
    /// sent now (see [`poll_timeout`](Self::poll_timeout)). `buf` must hold a full DATA packet.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        source: &mut dyn BlockSource,
        buf: &mut [u8],
    ) -> Option<usize> {
        if self.state != State::Active {
            return None;
        }
        while let Some((file, head)) = self.heads.pop_front() {
            if let Err(e) = source.adopt_head(file, &head) {
                self.abandon(file, &e);
                self.hash_sent(Some(source));
            }
        }
        loop {
            let next = self.next_to_send(now, source)?;
            match self.transmit(now, next, source, buf) {
                Transmitted::Sent(len) => return Some(len),
                Transmitted::Paced => return None,
                Transmitted::Skipped => continue,
            }
        }
    }

    /// Builds, seals and accounts the datagram `next` into `buf`.
    fn transmit(
        &mut self,
        now: Instant,
        next: Next,
        source: &mut dyn BlockSource,
        buf: &mut [u8],
    ) -> Transmitted {
        let len = match next {
            Next::Retransmit(b) | Next::Again(b) | Next::New(b) => {
                let (_, _, block_len) = self.layout.locate(b).expect("block inside the layout");
                HEADER_LEN + DATA_BODY_LEN + block_len + TAG_LEN
            }
            Next::Status => HEADER_LEN + STATUS_BODY_LEN + TAG_LEN,
        };
        assert!(buf.len() >= len, "transmit buffer too small for a packet");
        let ready = self.pacer.ready_at(now, len);
        if ready > now {
            self.paced_until = Some(ready);
            return Transmitted::Paced;
        }
        self.paced_until = None;
        let pn = self.next_pn;
        let packet = &mut buf[..len];
        let ptype =
            if matches!(next, Next::Status) { PacketType::Status } else { PacketType::Data };
        Header { ptype, session_id: self.config.session_id, packet_number: pn }.encode(packet);
        let send_time_us = self.micros(now);
        let rtt_hint_us = self.rtt.srtt().map_or(0, wire::duration_us_u32);
        match next {
            Next::Retransmit(block) | Next::Again(block) | Next::New(block) => {
                let is_new = matches!(next, Next::New(_));
                let frontier = if is_new { block + 1 } else { self.frontier };
                // A repair once every block went out (the tail) is sent twice (while the queue
                // of second copies has room): both copies say so.
                let queue_again = matches!(next, Next::Retransmit(_))
                    && self.frontier >= self.layout.end()
                    && self.again.len() < MAX_AGAIN;
                let twice = queue_again || matches!(next, Next::Again(_));
                let flags = match (is_new, twice) {
                    (true, _) => 0,
                    (false, false) => wire::DATA_RETRANSMISSION,
                    (false, true) => wire::DATA_RETRANSMISSION | wire::DATA_TWICE,
                };
                let fields = DataFields { block, send_time_us, frontier, rtt_hint_us, flags };
                fields.encode(&mut packet[HEADER_LEN..]);
                let (file, offset, block_len) = self.layout.locate(block).expect("located above");
                let payload = &mut packet[HEADER_LEN + DATA_BODY_LEN..][..block_len];
                if let Err(e) = source.read(file, offset, payload) {
                    self.abandon(file, &e);
                    self.hash_sent(Some(source));
                    return Transmitted::Skipped;
                }
                if is_new {
                    self.frontier = block + 1;
                    self.stats.data_packets += 1;
                    self.stats.new_payload_bytes += block_len as u64;
                    self.hash_sent(Some(source));
                } else {
                    if matches!(next, Next::Again(_)) {
                        self.again.pop_front();
                        self.stats.second_copies += 1;
                    } else {
                        self.retransmit.pop_first();
                        if queue_again {
                            self.again.push_back(block);
                        }
                    }
                    self.stats.retransmitted_packets += 1;
                }
                self.stats.payload_bytes_sent += block_len as u64;
            }
            Next::Status => {
                let blocked = self.frontier >= self.window_end && self.frontier < self.layout.end();
                let flags = if blocked { STATUS_WINDOW_BLOCKED } else { 0 };
                StatusFields { send_time_us, frontier: self.frontier, rtt_hint_us, flags }
                    .encode(&mut packet[HEADER_LEN..]);
                self.stats.status_packets += 1;
            }
        }
        if self.seal.seal(pn, packet, HEADER_LEN).is_err() {
            self.fail(SessionError::PacketNumbersExhausted, abort_code::PROTOCOL);
            return Transmitted::Paced;
        }
        self.next_pn += 1;
        self.pacer.consume(now, len);
        self.stats.bytes_sent += len as u64;
        if ptype == PacketType::Data {
            let at = self.micros64(now);
            self.send_log.record(at, len as u64);
        }
        self.next_status = now + self.status_interval();
        Transmitted::Sent(len)
    }

    /// Gives up file `file` after a read error: tells the receiver, skips its blocks.
    fn abandon(&mut self, file: u32, error: &std::io::Error) {
        let f = &mut self.files[file as usize];
        if f.abandoned || f.result.is_some() {
            return;
        }
        f.abandoned = true;
        self.stats.files_abandoned += 1;
        let reason = format!("cannot read the file: {error}");
        self.control_out.push_back(ControlMessage::FileAbandon { file, reason });
        self.skip_file(file);
    }

    /// Stops sending file `file`: its queued retransmissions go, the frontier will jump over
    /// its remaining blocks, and it needs no digest.
    fn skip_file(&mut self, file: u32) {
        let f = &mut self.files[file as usize];
        if f.skip {
            return;
        }
        f.skip = true;
        f.hasher = None;
        let span = self.layout.span(file);
        self.retransmit.remove_range(span.first, span.end());
    }

    /// Whether `block` belongs to a skipped file.
    fn skipped(&self, block: u64) -> Option<u32> {
        let (file, _, _) = self.layout.locate(block)?;
        self.files[file as usize].skip.then_some(file)
    }

    /// The next time [`handle_timeout`](Self::handle_timeout) or
    /// [`poll_transmit`](Self::poll_transmit) has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state != State::Active {
            return None;
        }
        let idle = self.last_heard + self.config.idle_timeout;
        let send = if self.has_data() && !self.silent {
            // Data stops (and the next turn finds out) once the receiver is silent too long.
            self.paced_until.unwrap_or(self.start)
        } else {
            self.next_status
        };
        Some(send.min(idle))
    }

    /// Advances timers to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Active && now >= self.last_heard + self.config.idle_timeout {
            self.state = State::Failed;
            self.events
                .push_back(Event::Failed(SessionError::IdleTimeout(self.config.idle_timeout)));
        }
    }

    /// Aborts the session (e.g. the user cancelled): queues an abort for the receiver.
    pub fn abort(&mut self, code: u16, reason: &str) {
        if self.state == State::Active {
            self.state = State::Failed;
            self.control_out.push_back(ControlMessage::Abort { code, reason: reason.to_owned() });
        }
    }

    fn has_data(&self) -> bool {
        !self.retransmit.is_empty()
            || (self.frontier < self.window_end.min(self.layout.end()) && !self.frontier_waits())
    }

    /// Whether the block at the frontier belongs to a file whose FILE_HAVE is still awaited.
    fn frontier_waits(&self) -> bool {
        self.layout
            .locate(self.frontier)
            .is_some_and(|(file, _, _)| self.files[file as usize].awaiting_have)
    }

    fn next_to_send(&mut self, now: Instant, source: &mut dyn BlockSource) -> Option<Next> {
        if now >= self.last_heard + self.silence_limit() {
            // A receiver that stopped answering (killed, unplugged, the path gone) is not sent
            // data into the void until the idle timeout: it is probed until it answers.
            self.silent = true;
            return (now >= self.next_status).then_some(Next::Status);
        }
        loop {
            if let Some(b) = self.retransmit.first() {
                match self.skipped(b) {
                    // Requested before the receiver learnt the file is skipped.
                    Some(file) => {
                        let span = self.layout.span(file);
                        self.retransmit.remove_range(span.first, span.end());
                        continue;
                    }
                    None => return Some(Next::Retransmit(b)),
                }
            }
            if let Some(&b) = self.again.front() {
                if b < self.cumulative || self.skipped(b).is_some() {
                    self.again.pop_front();
                    continue;
                }
                return Some(Next::Again(b));
            }
            if self.frontier < self.window_end.min(self.layout.end()) {
                if let Some(file) = self.skipped(self.frontier) {
                    // The receiver learns the jump from the frontier field of the next packet.
                    self.frontier = self.layout.span(file).end();
                    self.hash_sent(Some(source));
                    continue;
                }
                if let Some(end) = self.held.end_of(self.frontier) {
                    // Held by the receiver: jumped over like a skipped file's blocks (and hashed
                    // from the source for the digest like sent ones).
                    self.frontier = end;
                    self.hash_sent(Some(source));
                    continue;
                }
                if !self.frontier_waits() {
                    return Some(Next::New(self.frontier));
                }
            }
            return (now >= self.next_status).then_some(Next::Status);
        }
    }

    /// How long the receiver may be silent before data stops: four smoothed RTTs, at least
    /// [`MIN_SILENCE`] (a live receiver sends feedback at least every 20 ms while data
    /// arrives); before the first RTT sample, [`INITIAL_SILENCE`].
    fn silence_limit(&self) -> Duration {
        self.rtt.srtt().map_or(INITIAL_SILENCE, |srtt| (4 * srtt).max(MIN_SILENCE))
    }

    fn status_interval(&self) -> Duration {
        (self.rtt.srtt().unwrap_or(self.config.initial_rtt) / 2).max(Duration::from_millis(2))
    }

    fn micros(&self, now: Instant) -> u32 {
        self.micros64(now) as u32
    }

    fn micros64(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_micros() as u64
    }

    fn update_pacer(&mut self) {
        let rate = self.config.limits.clamp(self.controller.rate());
        self.pacer.set_rate(rate, 2 * (self.config.block_size + wire::DATA_OVERHEAD));
    }

    /// Hashes what has been sent once, in batches of [`HASH_BATCH`] bytes read again from the
    /// source, and queues each file's digest (in manifest order) as soon as all its blocks have
    /// been sent once. An empty file's digest is queued when the frontier reaches it. Without a
    /// source (while files are being added) only files with nothing left to hash complete.
    ///
    /// The digest covers the bytes as read for hashing; if the file changed while it was being
    /// sent, the receiver's digest of what it stored will not match and the file fails. A file
    /// that cannot be read is abandoned; a skipped file gets no digest.
    fn hash_sent(&mut self, mut source: Option<&mut dyn BlockSource>) {
        'files: while self.digests_sent < self.files.len() {
            let id = self.digests_sent as u32;
            if self.files[id as usize].skip {
                self.digests_sent += 1;
                continue;
            }
            let span = self.layout.span(id);
            let sent = if self.frontier >= span.end() {
                span.size
            } else {
                (self.frontier.saturating_sub(span.first) * self.config.block_size as u64)
                    .min(span.size)
            };
            loop {
                let hashed = self.files[id as usize].hashed;
                let ready = sent - hashed;
                if ready == 0 || (ready < HASH_BATCH as u64 && sent < span.size) {
                    break;
                }
                let Some(src) = source.as_deref_mut() else { break };
                let n = ready.min(HASH_BATCH as u64) as usize;
                let f = &mut self.files[id as usize];
                let hasher = f.hasher.get_or_insert_with(Default::default);
                let visited = src.visit(id, hashed, n, &mut self.hash_buf, &mut |bytes| {
                    hasher.update(bytes);
                });
                if let Err(e) = visited {
                    self.abandon(id, &e);
                    continue 'files;
                }
                self.files[id as usize].hashed += n as u64;
            }
            let f = &mut self.files[id as usize];
            if f.hashed < span.size || span.end() > self.frontier {
                break;
            }
            let hasher = f.hasher.take().unwrap_or_default();
            let digest = *hasher.finalize().as_bytes();
            self.control_out.push_back(ControlMessage::FileDigest { file: id, digest });
            self.digests_sent += 1;
        }
    }

    fn check_complete(&mut self) {
        if self.state == State::Active && self.manifest_closed && self.results == self.files.len() {
            self.state = State::Complete;
            self.events.push_back(Event::Complete);
        }
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
