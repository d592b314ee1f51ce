//! Log lines: one line per event on stderr, each with a UTC timestamp and the command
//! (`ferry serve: ...`). The transfer library logs through `tracing`; [`install`] writes its
//! events as these lines, filtered by `FERRY_LOG` (the `tracing-subscriber` filter syntax, e.g.
//! `FERRY_LOG=ferry::driver=debug` for the data path's state every 250 ms).
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
    line_of("ferry serve", message);
}

fn line_of(program: &str, message: std::fmt::Arguments<'_>) {
    line_to(&mut std::io::stderr(), program, message);
}

fn line_to(out: &mut dyn std::io::Write, program: &str, message: std::fmt::Arguments<'_>) {
    let text = sanitize(&message.to_string());
    let _ = writeln!(out, "{} {program}: {text}", timestamp());
}

/// Writes `tracing` events as log lines of `program` into a log file (`ferry cp -L`).
#[derive(Debug)]
pub(crate) struct FileLines {
    program: &'static str,
    file: std::sync::Mutex<std::fs::File>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for FileLines {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut text = Message(String::new());
        event.record(&mut text);
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        line_to(&mut *file, self.program, format_args!("{}", text.0));
    }
}

/// Writes `tracing` events as log lines of `program` (what reaches it is up to the filter).
#[derive(Debug)]
pub(crate) struct LogLines {
    program: &'static str,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogLines {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut text = Message(String::new());
        event.record(&mut text);
        line_of(self.program, format_args!("{}", text.0));
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

/// Sends the library's log events to stderr as log lines of `program`, for the rest of the
/// process: those `FERRY_LOG` selects, or with it unset those `default` selects (a filter such
/// as `ferry=info`). A `FERRY_LOG` that does not parse is said once and the default is used.
pub(crate) fn install(program: &'static str, default: &str) {
    install_with_file(program, default, None);
}

/// [`install`], and with `file` the same lines, at least at `ferry=info` (or as `FERRY_LOG`
/// says), also into that file (`ferry cp -L DIR`).
pub(crate) fn install_with_file(program: &'static str, default: &str, file: Option<std::fs::File>) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::{Layer, SubscriberExt};
    let chosen = |default: &str, say: bool| match std::env::var("FERRY_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(&v).unwrap_or_else(|e| {
            if say {
                line_of(program, format_args!("FERRY_LOG ignored ({e}); logging {default}"));
            }
            EnvFilter::new(default)
        }),
        _ => EnvFilter::new(default),
    };
    let lines = LogLines { program }.with_filter(chosen(default, true));
    let to_file = file.map(|f| {
        FileLines { program, file: std::sync::Mutex::new(f) }
            .with_filter(chosen("ferry=info", false))
    });
    let subscriber = tracing_subscriber::registry().with(lines).with(to_file);
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
