//! Pinned server keys in a file: lines `HOST[:PORT] SHA256:...` (`#` comments), like OpenSSH's
//! `known_hosts` but holding fingerprints. A line with the port wins over one without.

use std::path::{Path, PathBuf};

/// The default file: `$HOME/.config/ferry/known_hosts`.
pub fn default_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/ferry/known_hosts"))
}

/// The pinned fingerprint for `host` and `port` in `file` (the default file when `None`; a
/// missing default file pins nothing).
pub fn lookup(file: Option<&Path>, host: &str, port: u16) -> std::io::Result<Option<String>> {
    let default;
    let path = match file {
        Some(p) => p,
        None => {
            let Some(p) = default_path() else { return Ok(None) };
            if !p.exists() {
                return Ok(None);
            }
            default = p;
            &default
        }
    };
    let text = std::fs::read_to_string(path)?;
    Ok(find(&text, host, port))
}

fn find(text: &str, host: &str, port: u16) -> Option<String> {
    let with_port = format!("{host}:{port}");
    let mut found = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut it = line.split_whitespace();
        let (Some(h), Some(fp)) = (it.next(), it.next()) else { continue };
        if h == with_port {
            return Some(fp.to_owned());
        }
        if h == host && found.is_none() {
            found = Some(fp.to_owned());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    #[test]
    fn port_lines_win() {
        let text = "# c\nhost SHA256:a\nhost:7 SHA256:b\nother SHA256:c\n";
        assert_eq!(super::find(text, "host", 7).as_deref(), Some("SHA256:b"));
        assert_eq!(super::find(text, "host", 8).as_deref(), Some("SHA256:a"));
        assert_eq!(super::find(text, "none", 8), None);
    }
}
