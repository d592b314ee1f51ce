//! Transfer user names: the same rule for the keystore's per-user secrets and for the user a
//! client names at set-up, so that a server can look a session's user up in the keystore.

/// Longest user name, in bytes.
pub const MAX_USER_NAME: usize = 64;

/// Checks a user name: 1 to [`MAX_USER_NAME`] of `A-Z a-z 0-9 . _ - @`, not starting with `-`
/// or `.`. The error says which rule it breaks.
pub fn check_user_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_USER_NAME {
        return Err("a user name is 1 to 64 characters");
    }
    if name.starts_with('-') || name.starts_with('.') {
        return Err("a user name must not start with '-' or '.'");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b)) {
        return Err("a user name may only contain A-Z, a-z, 0-9, '.', '_', '-' and '@'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["alice", "a", "svc-backup_2", "first.last@example.org", &"x".repeat(64)] {
            assert_eq!(check_user_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "a\u{0}", "ü", &"x".repeat(65)] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
    }
}
