//! The checks every received datagram passes before either end reads its body
//! (`docs/PROTOCOL.md` section 4.4): header, session id, packet type, replay window, key epoch
//! and authentication, in that order.

use crate::crypto::{EPOCH_BITS, PacketProtection, ReplayCheck, ReplayWindow};
use crate::wire::{HEADER_LEN, Header, PacketType};

/// Why a datagram was dropped before its body was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// Unparseable header, or a packet type this end does not receive.
    Malformed,
    /// Another session's id.
    Foreign,
    /// A packet number already accepted, or older than the replay window.
    Replay,
    /// Authentication failed (or the key epoch is not acceptable).
    Auth,
}

/// Datagrams one end dropped before it read their body, by reason (both ends count the same way).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// Unparseable, a packet type this end does not receive, or malformed after authentication.
    pub malformed: u64,
    /// Another session's id.
    pub foreign: u64,
    /// A packet number already accepted, or older than the replay window.
    pub replay: u64,
    /// Authentication failed (or the key epoch was not acceptable).
    pub auth: u64,
}

impl DropCounts {
    pub(crate) fn record(&mut self, d: Dropped) {
        match d {
            Dropped::Malformed => self.malformed += 1,
            Dropped::Foreign => self.foreign += 1,
            Dropped::Replay => self.replay += 1,
            Dropped::Auth => self.auth += 1,
        }
    }

    /// All drops together.
    pub fn total(&self) -> u64 {
        self.malformed + self.foreign + self.replay + self.auth
    }
}

/// Packet protection and replay state for one direction of received datagrams.
#[derive(Debug)]
pub(crate) struct Inbound {
    session_id: u64,
    replay: ReplayWindow,
    open: PacketProtection,
}

impl Inbound {
    pub fn new(session_id: u64, open: PacketProtection) -> Self {
        Self { session_id, replay: ReplayWindow::default(), open }
    }

    /// Checks and decrypts `datagram` in place; returns its header and the body length. The
    /// packet number is not yet recorded: call [`commit`](Self::commit) once the body is
    /// accepted, so that nothing the caller refuses moves the replay window.
    pub fn open(
        &mut self,
        datagram: &mut [u8],
        accept: impl Fn(PacketType) -> bool,
    ) -> Result<(Header, usize), Dropped> {
        let header = Header::decode(datagram).map_err(|_| Dropped::Malformed)?;
        if header.session_id != self.session_id {
            return Err(Dropped::Foreign);
        }
        if !accept(header.ptype) {
            return Err(Dropped::Malformed);
        }
        let pn = header.packet_number;
        if self.replay.check(pn) != ReplayCheck::Fresh {
            return Err(Dropped::Replay);
        }
        let current_epoch = self.replay.highest().map_or(0, |h| h >> EPOCH_BITS);
        let body_len =
            self.open.open(pn, datagram, HEADER_LEN, current_epoch).map_err(|_| Dropped::Auth)?;
        Ok((header, body_len))
    }

    /// Records an accepted packet number.
    pub fn commit(&mut self, packet_number: u64) {
        self.replay.commit(packet_number);
    }

    /// The highest packet number accepted so far.
    pub fn highest(&self) -> Option<u64> {
        self.replay.highest()
    }
}
