//! Encoding and decoding of data-path packets and control messages (`docs/PROTOCOL.md`).
//!
//! All integers are big-endian. Parsers never panic and never trust a length they have not
//! checked against the buffer.

use std::time::Duration;

/// The version byte of every header: [`crate::PROTOCOL_VERSION`].
pub const VERSION: u8 = crate::PROTOCOL_VERSION;

/// Bytes of the clear, authenticated header at the start of every datagram.
pub const HEADER_LEN: usize = 18;

/// Bytes of the encrypted DATA body before the block payload.
pub const DATA_BODY_LEN: usize = 25;

/// Bytes of the encrypted STATUS body.
pub const STATUS_BODY_LEN: usize = 17;

/// Bytes of the fixed part of the encrypted FEEDBACK body (NACK ranges follow).
pub const FEEDBACK_FIXED_LEN: usize = 46;

/// Per-datagram overhead of a DATA packet: header, body fields and the tag.
pub const DATA_OVERHEAD: usize = HEADER_LEN + DATA_BODY_LEN + crate::crypto::TAG_LEN;

/// The largest UDP payload Ferry sends or accepts (a 9000-byte jumbo frame over IPv4).
pub const MAX_DATAGRAM: usize = 8972;

/// Data-path packet types (header byte 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PacketType {
    /// One block of file data, sender to receiver.
    Data = 1,
    /// Acknowledgement, flow-control window and retransmission requests, receiver to sender.
    Feedback = 2,
    /// Sender progress without data (sent when the sender has nothing else to send).
    Status = 3,
}

impl PacketType {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Data),
            2 => Some(Self::Feedback),
            3 => Some(Self::Status),
            _ => None,
        }
    }
}

/// The clear header of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Packet type.
    pub ptype: PacketType,
    /// Session the packet belongs to (assigned by the server during session setup).
    pub session_id: u64,
    /// Packet number, unique per direction: the nonce source.
    pub packet_number: u64,
}

/// Why a datagram could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Too short for the fields its type requires.
    #[error("datagram truncated")]
    Truncated,
    /// Larger than [`MAX_DATAGRAM`].
    #[error("datagram oversized")]
    Oversized,
    /// A protocol version this implementation does not speak.
    #[error("unsupported protocol version {0}")]
    Version(u8),
    /// An unknown packet or message type.
    #[error("unknown type {0}")]
    UnknownType(u8),
    /// A field holds a value the protocol forbids.
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

impl Header {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`.
    pub fn encode(&self, out: &mut [u8]) {
        out[0] = VERSION;
        out[1] = self.ptype as u8;
        out[2..10].copy_from_slice(&self.session_id.to_be_bytes());
        out[10..18].copy_from_slice(&self.packet_number.to_be_bytes());
    }

    /// Parses the clear header of a received datagram.
    pub fn decode(datagram: &[u8]) -> Result<Self, ParseError> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(ParseError::Oversized);
        }
        if datagram.len() < HEADER_LEN + crate::crypto::TAG_LEN {
            return Err(ParseError::Truncated);
        }
        if datagram[0] != VERSION {
            return Err(ParseError::Version(datagram[0]));
        }
        let ptype = PacketType::from_u8(datagram[1]).ok_or(ParseError::UnknownType(datagram[1]))?;
        Ok(Self {
            ptype,
            session_id: u64::from_be_bytes(datagram[2..10].try_into().expect("8 bytes")),
            packet_number: u64::from_be_bytes(datagram[10..18].try_into().expect("8 bytes")),
        })
    }
}

/// Fields of a DATA body ahead of the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataFields {
    /// Global block index (see "Blocks and files" in the protocol document).
    pub block: u64,
    /// Sender timestamp in microseconds since the sender's session start, modulo 2^32.
    pub send_time_us: u32,
    /// Every block below this index has been sent at least once.
    pub frontier: u64,
    /// The sender's smoothed RTT in microseconds (0 if unknown), saturating.
    pub rtt_hint_us: u32,
    /// [`DATA_RETRANSMISSION`] if the block was sent before, with [`DATA_TWICE`] for a repair
    /// sent twice on purpose.
    pub flags: u8,
}

/// [`DataFields::flags`] bit: this block was sent before (the receiver asked for it again).
pub const DATA_RETRANSMISSION: u8 = 1;
/// [`DataFields::flags`] bit, only with [`DATA_RETRANSMISSION`]: this repair is sent twice on
/// purpose (a repair in the session's tail), so the copy that arrives second says nothing about
/// a request made too early.
pub const DATA_TWICE: u8 = 2;

impl DataFields {
    /// Writes the fields into the first [`DATA_BODY_LEN`] bytes of `out`.
    pub fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.block.to_be_bytes());
        out[8..12].copy_from_slice(&self.send_time_us.to_be_bytes());
        out[12..20].copy_from_slice(&self.frontier.to_be_bytes());
        out[20..24].copy_from_slice(&self.rtt_hint_us.to_be_bytes());
        out[24] = self.flags;
    }

    /// Parses the fields from a decrypted DATA body.
    pub fn decode(body: &[u8]) -> Result<Self, ParseError> {
        if body.len() < DATA_BODY_LEN {
            return Err(ParseError::Truncated);
        }
        let f = Self {
            block: be_u64(&body[0..8]),
            send_time_us: be_u32(&body[8..12]),
            frontier: be_u64(&body[12..20]),
            rtt_hint_us: be_u32(&body[20..24]),
            flags: body[24],
        };
        if f.flags & !(DATA_RETRANSMISSION | DATA_TWICE) != 0 {
            return Err(ParseError::Invalid("reserved data flags set"));
        }
        if f.flags & DATA_TWICE != 0 && f.flags & DATA_RETRANSMISSION == 0 {
            return Err(ParseError::Invalid("a block sent twice must be a retransmission"));
        }
        if f.frontier <= f.block {
            return Err(ParseError::Invalid("frontier must exceed the block index"));
        }
        Ok(f)
    }
}

/// A STATUS body: the sender's progress when it has no data to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusFields {
    /// As in [`DataFields::send_time_us`].
    pub send_time_us: u32,
    /// As in [`DataFields::frontier`].
    pub frontier: u64,
    /// As in [`DataFields::rtt_hint_us`].
    pub rtt_hint_us: u32,
    /// Bit 0: the sender is waiting for the flow-control window to open.
    pub flags: u8,
}

/// [`StatusFields::flags`] bit: the sender is blocked by the receiver's window.
pub const STATUS_WINDOW_BLOCKED: u8 = 1;

impl StatusFields {
    /// Writes the fields into the first [`STATUS_BODY_LEN`] bytes of `out`.
    pub fn encode(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.send_time_us.to_be_bytes());
        out[4..12].copy_from_slice(&self.frontier.to_be_bytes());
        out[12..16].copy_from_slice(&self.rtt_hint_us.to_be_bytes());
        out[16] = self.flags;
    }

    /// Parses a decrypted STATUS body.
    pub fn decode(body: &[u8]) -> Result<Self, ParseError> {
        if body.len() != STATUS_BODY_LEN {
            return Err(ParseError::Truncated);
        }
        if body[16] & !STATUS_WINDOW_BLOCKED != 0 {
            return Err(ParseError::Invalid("reserved status flags set"));
        }
        Ok(Self {
            send_time_us: be_u32(&body[0..4]),
            frontier: be_u64(&body[4..12]),
            rtt_hint_us: be_u32(&body[12..16]),
            flags: body[16],
        })
    }
}

/// The fixed fields of a FEEDBACK body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeedbackFields {
    /// `send_time_us` of the DATA or STATUS packet with the highest packet number received.
    pub echo_time_us: u32,
    /// Microseconds between receiving that packet and sending this feedback.
    pub echo_delay_us: u32,
    /// Every block below this index has been received.
    pub cumulative: u64,
    /// The sender may send blocks below this index and no others (flow control).
    pub window_end: u64,
    /// DATA packets accepted since the session began (duplicates included).
    pub rx_packets: u64,
    /// Bytes of the DATA datagrams accepted since the session began (whole UDP payloads: header,
    /// body and tag; duplicates included), so the sender compares like with like when it paces.
    pub rx_bytes: u64,
    /// Forward-path queueing delay in microseconds measured by the receiver: the smallest
    /// one-way delay since the previous FEEDBACK minus the smallest ever seen (sender and receiver
    /// clocks need not agree: only differences of one-way delays are used).
    pub queue_delay_us: u32,
    /// Number of NACK ranges that follow.
    pub nack_ranges: u16,
}

impl FeedbackFields {
    /// Writes the fixed fields into the first [`FEEDBACK_FIXED_LEN`] bytes of `out`.
    pub fn encode(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.echo_time_us.to_be_bytes());
        out[4..8].copy_from_slice(&self.echo_delay_us.to_be_bytes());
        out[8..16].copy_from_slice(&self.cumulative.to_be_bytes());
        out[16..24].copy_from_slice(&self.window_end.to_be_bytes());
        out[24..32].copy_from_slice(&self.rx_packets.to_be_bytes());
        out[32..40].copy_from_slice(&self.rx_bytes.to_be_bytes());
        out[40..44].copy_from_slice(&self.queue_delay_us.to_be_bytes());
        out[44..46].copy_from_slice(&self.nack_ranges.to_be_bytes());
    }

    /// Parses the fixed fields; returns them and the encoded NACK ranges that follow.
    pub fn decode(body: &[u8]) -> Result<(Self, &[u8]), ParseError> {
        if body.len() < FEEDBACK_FIXED_LEN {
            return Err(ParseError::Truncated);
        }
        let f = Self {
            echo_time_us: be_u32(&body[0..4]),
            echo_delay_us: be_u32(&body[4..8]),
            cumulative: be_u64(&body[8..16]),
            window_end: be_u64(&body[16..24]),
            rx_packets: be_u64(&body[24..32]),
            rx_bytes: be_u64(&body[32..40]),
            queue_delay_us: be_u32(&body[40..44]),
            nack_ranges: u16::from_be_bytes([body[44], body[45]]),
        };
        if f.window_end < f.cumulative {
            return Err(ParseError::Invalid("window ends below the cumulative acknowledgement"));
        }
        Ok((f, &body[FEEDBACK_FIXED_LEN..]))
    }
}

/// Iterates over the NACK ranges of a FEEDBACK body as half-open `(start, end)` block ranges.
///
/// Each range is two QUIC variable-length integers: the gap from the previous range's end (the
/// first range: from `cumulative`) and the range's length, which must be at least 1.
#[derive(Debug, Clone)]
pub struct NackRanges<'a> {
    buf: &'a [u8],
    prev_end: u64,
    remaining: u16,
}

impl<'a> NackRanges<'a> {
    /// Prepares to decode `count` ranges from `buf`, starting from `cumulative`.
    pub fn new(buf: &'a [u8], cumulative: u64, count: u16) -> Self {
        Self { buf, prev_end: cumulative, remaining: count }
    }
}

impl Iterator for NackRanges<'_> {
    type Item = Result<(u64, u64), ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return if self.buf.is_empty() {
                None
            } else {
                self.buf = &[];
                Some(Err(ParseError::Invalid("trailing bytes after NACK ranges")))
            };
        }
        self.remaining -= 1;
        let parsed = (|| {
            let gap = read_varint(&mut self.buf)?;
            let len = read_varint(&mut self.buf)?;
            if len == 0 {
                return Err(ParseError::Invalid("empty NACK range"));
            }
            let start =
                self.prev_end.checked_add(gap).ok_or(ParseError::Invalid("NACK overflow"))?;
            let end = start.checked_add(len).ok_or(ParseError::Invalid("NACK overflow"))?;
            self.prev_end = end;
            Ok((start, end))
        })();
        if parsed.is_err() {
            self.remaining = 0;
            self.buf = &[];
        }
        Some(parsed)
    }
}

/// Appends a NACK range to `out` (see [`NackRanges`]); returns false if it does not fit in
/// `limit` bytes in total.
pub fn push_nack_range(
    out: &mut Vec<u8>,
    limit: usize,
    prev_end: u64,
    start: u64,
    end: u64,
) -> bool {
    let gap = start - prev_end;
    let len = end - start;
    if out.len() + varint_len(gap) + varint_len(len) > limit {
        return false;
    }
    write_varint(out, gap);
    write_varint(out, len);
    true
}

/// Largest value a QUIC variable-length integer holds.
pub const VARINT_MAX: u64 = (1 << 62) - 1;

/// Encoded size of a QUIC variable-length integer (RFC 9000 section 16).
pub fn varint_len(v: u64) -> usize {
    match v {
        0..=63 => 1,
        64..=16383 => 2,
        16384..=1_073_741_823 => 4,
        _ => 8,
    }
}

/// Appends a QUIC variable-length integer. Values above [`VARINT_MAX`] are a caller bug.
pub fn write_varint(out: &mut Vec<u8>, v: u64) {
    assert!(v <= VARINT_MAX, "varint out of range");
    match varint_len(v) {
        1 => out.push(v as u8),
        2 => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        4 => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// Reads a QUIC variable-length integer from the front of `buf`.
pub fn read_varint(buf: &mut &[u8]) -> Result<u64, ParseError> {
    let first = *buf.first().ok_or(ParseError::Truncated)?;
    let len = 1usize << (first >> 6);
    if buf.len() < len {
        return Err(ParseError::Truncated);
    }
    let mut v = u64::from(first & 0x3f);
    for b in &buf[1..len] {
        v = v << 8 | u64::from(*b);
    }
    *buf = &buf[len..];
    Ok(v)
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().expect("8 bytes"))
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().expect("4 bytes"))
}

/// Saturating conversion of a duration to whole microseconds in a `u32`.
pub fn duration_us_u32(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_boundary() {
        for v in [0, 63, 64, 16383, 16384, 1_073_741_823, 1_073_741_824, VARINT_MAX] {
            let mut out = Vec::new();
            write_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v));
            let mut slice = &out[..];
            assert_eq!(read_varint(&mut slice), Ok(v));
            assert!(slice.is_empty());
            let mut short = &out[..out.len() - 1];
            assert!(out.len() == 1 || read_varint(&mut short).is_err());
        }
    }

    #[test]
    fn nack_ranges_round_trip_and_reject_garbage() {
        let mut out = Vec::new();
        let mut prev = 100;
        for (s, e) in [(100, 101), (105, 200), (100_000, 100_007)] {
            assert!(push_nack_range(&mut out, 1000, prev, s, e));
            prev = e;
        }
        let got: Vec<_> = NackRanges::new(&out, 100, 3).collect::<Result<_, _>>().unwrap();
        assert_eq!(got, vec![(100, 101), (105, 200), (100_000, 100_007)]);
        // Fewer ranges announced than encoded: trailing bytes are an error.
        assert!(NackRanges::new(&out, 100, 2).any(|r| r.is_err()));
        // More announced than encoded: truncated.
        assert!(NackRanges::new(&out, 100, 4).any(|r| r.is_err()));
        // A zero-length range is refused.
        assert!(NackRanges::new(&[0, 0], 0, 1).any(|r| r.is_err()));
    }

    #[test]
    fn data_flags_allow_retransmissions_sent_twice_and_nothing_else() {
        let mut body = [0u8; DATA_BODY_LEN];
        let mut f = DataFields { block: 1, send_time_us: 0, frontier: 2, rtt_hint_us: 0, flags: 0 };
        for (flags, ok) in [
            (0, true),
            (DATA_RETRANSMISSION, true),
            (DATA_RETRANSMISSION | DATA_TWICE, true),
            (DATA_TWICE, false),
            (4, false),
        ] {
            f.flags = flags;
            f.encode(&mut body);
            assert_eq!(DataFields::decode(&body).is_ok(), ok, "flags {flags}");
        }
    }

    #[test]
    fn header_rejects_bad_version_type_and_sizes() {
        let mut d = vec![0u8; 64];
        Header { ptype: PacketType::Data, session_id: 7, packet_number: 9 }.encode(&mut d);
        assert_eq!(Header::decode(&d).unwrap().packet_number, 9);
        assert_eq!(Header::decode(&d[..20]), Err(ParseError::Truncated));
        assert_eq!(Header::decode(&vec![1u8; MAX_DATAGRAM + 1]), Err(ParseError::Oversized));
        d[0] = 9;
        assert_eq!(Header::decode(&d), Err(ParseError::Version(9)));
        d[0] = VERSION;
        d[1] = 9;
        assert_eq!(Header::decode(&d), Err(ParseError::UnknownType(9)));
    }
}
