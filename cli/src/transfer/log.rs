//! The server's log lines: one line per event on stderr, each with a UTC timestamp.
//!
//! Peers choose some of what is logged (paths, close and abort reasons, names): every line is
//! therefore passed through [`sanitize`] before it is written, which escapes control characters
//! (so a peer cannot end a line early to forge another, or send terminal escape sequences) and
//! caps its length. Peer-supplied strings are also quoted where they appear
//! (`ferry_engine::io::docroot::escape`).

/// Longest log line written, in characters (longer ones end in `...`).
pub(crate) const MAX_LINE: usize = 2000;

/// `line` with every control character escaped (`\n`, `\u{1b}`, ...) and at most
/// [`MAX_LINE`] characters.
pub(crate) fn sanitize(line: &str) -> String {
    let mut out = String::with_capacity(line.len().min(MAX_LINE) + 8);
    for (n, c) in line.chars().enumerate() {
        if n == MAX_LINE {
            out.push_str("...");
            break;
        }
        if c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The current time as RFC 3339 (UTC, seconds).
pub(crate) fn timestamp() -> String {
    ferry_keystore::time::rfc3339(ferry_keystore::time::now())
}

/// Writes one sanitised, timestamped log line to stderr, ignoring a closed stderr (the daemon
/// must not die of it).
pub(crate) fn line(message: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let text = sanitize(&message.to_string());
    let _ = writeln!(std::io::stderr(), "{} ferry serve: {text}", timestamp());
}

/// Writes the transfer library's `tracing` events (its targets, level INFO and above) as log
/// lines ([`line`]).
#[derive(Debug)]
pub(crate) struct LogLines;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogLines {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > tracing::Level::INFO || !meta.target().starts_with("ferry") {
            return;
        }
        let mut text = Message(String::new());
        event.record(&mut text);
        line(format_args!("{}", text.0));
    }
}

/// Collects an event's message (and any other fields, as `name=value`).
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

/// Sends the library's log events to stderr as log lines, for the rest of the process.
pub(crate) fn install() {
    use tracing_subscriber::layer::SubscriberExt;
    let subscriber = tracing_subscriber::registry().with(LogLines);
    let _ = tracing::subscriber::set_global_default(subscriber);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_cannot_be_forged_or_colour_the_terminal() {
        let s = sanitize("peer said: ok\n2026-01-01T00:00:00Z ferry serve: forged\x1b[2J\r");
        assert!(!s.contains('\n') && !s.contains('\x1b') && !s.contains('\r'), "{s}");
        assert!(s.contains("\\n") && s.contains("\\u{1b}"), "{s}");
        assert_eq!(sanitize(&"x".repeat(5000)).chars().count(), MAX_LINE + 3);
        assert!(timestamp().ends_with('Z'));
    }
}
