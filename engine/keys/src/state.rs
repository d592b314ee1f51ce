//! Key states after NIST SP 800-57 Part 1 Rev. 5 §7, and what each state allows.
//!
//! | state | protect (encrypt new data) | process (decrypt) | may move to |
//! |---|---|---|---|
//! | `pre-active`  | no  | no  | active, compromised, destroyed |
//! | `active`      | yes | yes | suspended, deactivated, compromised |
//! | `suspended`   | no  | no (fail closed) | active, deactivated, compromised |
//! | `deactivated` | no  | yes (if version ≥ the minimum decryption version) | compromised, destroyed |
//! | `compromised` | no  | no (fail closed) | destroyed |
//! | `destroyed`   | no  | no (value erased) | — |
//!
//! Destroy is allowed only after deactivation (or from `compromised`, or for a `pre-active`
//! version that never protected anything). At most one version per (owner, category) is active;
//! activating a version deactivates the previous active one.

use std::fmt;
use std::str::FromStr;

/// A secret version's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Generated, not yet authorised for use.
    PreActive,
    /// In use: protects new data and processes existing data.
    Active,
    /// Temporarily revoked: no use at all until reactivated.
    Suspended,
    /// Retired: no new protection; still decrypts existing data.
    Deactivated,
    /// Known or suspected to be disclosed: no use at all.
    Compromised,
    /// Value erased; only the metadata remains.
    Destroyed,
}

/// What a caller wants to do with a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Apply protection: encrypt or wrap new data.
    Protect,
    /// Process protected data: decrypt or unwrap.
    Process,
}

impl Operation {
    /// A verb for messages ("encrypt with", "decrypt with").
    pub fn verb(self) -> &'static str {
        match self {
            Operation::Protect => "encrypt with",
            Operation::Process => "decrypt with",
        }
    }
}

impl KeyState {
    /// Every state, in lifecycle order.
    pub const ALL: [KeyState; 6] = [
        KeyState::PreActive,
        KeyState::Active,
        KeyState::Suspended,
        KeyState::Deactivated,
        KeyState::Compromised,
        KeyState::Destroyed,
    ];

    /// The state's name (`pre-active`, `active`, ...), as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::PreActive => "pre-active",
            KeyState::Active => "active",
            KeyState::Suspended => "suspended",
            KeyState::Deactivated => "deactivated",
            KeyState::Compromised => "compromised",
            KeyState::Destroyed => "destroyed",
        }
    }

    /// Whether a version in this state may be used for `op`.
    pub fn permits(self, op: Operation) -> bool {
        match op {
            Operation::Protect => self == KeyState::Active,
            Operation::Process => matches!(self, KeyState::Active | KeyState::Deactivated),
        }
    }

    /// Whether the stored value is kept (everything but `destroyed`).
    pub fn keeps_value(self) -> bool {
        self != KeyState::Destroyed
    }

    /// Checks the transition `self → to`; on refusal returns what the user should do instead.
    pub fn check_transition(self, to: KeyState) -> Result<(), &'static str> {
        use KeyState::*;
        let ok = matches!(
            (self, to),
            (PreActive, Active | Compromised | Destroyed)
                | (Active, Suspended | Deactivated | Compromised)
                | (Suspended, Active | Deactivated | Compromised)
                | (Deactivated, Compromised | Destroyed)
                | (Compromised, Destroyed)
        );
        if ok {
            return Ok(());
        }
        Err(match (self, to) {
            (a, b) if a == b => "it is already in that state",
            (Destroyed, _) => "a destroyed version is final",
            (Active | Suspended, Destroyed) => "deactivate it first",
            (Deactivated, Active) => {
                "a deactivated version is never reactivated; store or generate a new version"
            }
            (Compromised, _) => "a compromised version can only be destroyed",
            (_, PreActive) => "no version returns to pre-active",
            (Deactivated, Suspended) => "a deactivated version cannot be suspended",
            _ => "that transition is not allowed",
        })
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown key state '{s}'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_per_state() {
        use KeyState::*;
        let protect: Vec<_> =
            KeyState::ALL.into_iter().filter(|s| s.permits(Operation::Protect)).collect();
        assert_eq!(protect, vec![Active]);
        let process: Vec<_> =
            KeyState::ALL.into_iter().filter(|s| s.permits(Operation::Process)).collect();
        assert_eq!(process, vec![Active, Deactivated]);
    }

    #[test]
    fn destroy_only_after_deactivation() {
        use KeyState::*;
        assert_eq!(Active.check_transition(Destroyed), Err("deactivate it first"));
        assert_eq!(Suspended.check_transition(Destroyed), Err("deactivate it first"));
        assert!(Deactivated.check_transition(Destroyed).is_ok());
        assert!(Compromised.check_transition(Destroyed).is_ok());
        assert!(PreActive.check_transition(Destroyed).is_ok());
        for s in KeyState::ALL {
            assert!(Destroyed.check_transition(s).is_err());
        }
        assert!(Deactivated.check_transition(Active).is_err());
        assert!(Suspended.check_transition(Active).is_ok());
    }

    #[test]
    fn names_round_trip() {
        for s in KeyState::ALL {
            assert_eq!(s.as_str().parse::<KeyState>().unwrap(), s);
        }
    }
}
