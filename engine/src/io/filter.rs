//! Include and exclude rules for a listing (`ferry cp -E PATTERN` / `-N PATTERN`, ascp's
//! filtering rules).
//!
//! - Rules apply in the order given; the first rule whose pattern matches a path decides
//!   (`-E` leaves it out, `-N` keeps it). A path no rule matches is kept.
//! - A pattern is matched against the path in the transfer (the manifest path: `dir/sub/f`,
//!   starting with the source's own name). A pattern without a `/` is matched against the last
//!   component only (the name), at any depth; one with a `/` against the whole path, anchored at
//!   both ends.
//! - `*` matches any run of characters but `/`, `?` one character but `/`, `**` any run
//!   including `/`; `[abc]`, `[a-z]` and `[!a-z]` match one character of (or not of) a set;
//!   `\` makes the next character literal.
//! - A pattern ending in `/` matches directories only.
//! - A directory left out is not looked into: nothing beneath it is listed (to send `a/keep`
//!   from an excluded `a`, include `a` first, then exclude the rest of it: `-N a -N a/keep -E 'a/*'`).

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Keep (`-N`) or leave out (`-E`) what matches.
    pub include: bool,
    pattern: Vec<char>,
    /// The pattern had a `/` (other than a trailing one): matched against the whole path.
    anchored: bool,
    /// The pattern ended in `/`: directories only.
    dirs_only: bool,
    /// As given, for messages.
    text: String,
}

/// The most rules one listing takes (ascp's SDK caps them at 16; this is generous).
pub const MAX_RULES: usize = 256;
/// The longest pattern.
pub const MAX_PATTERN: usize = 4096;

impl Rule {
    /// A rule from a pattern; `include` for `-N`, not for `-E`.
    pub fn new(include: bool, pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("an empty pattern matches nothing: give a name or a glob".into());
        }
        if pattern.len() > MAX_PATTERN {
            return Err(format!("the pattern is longer than {MAX_PATTERN} bytes"));
        }
        let dirs_only = pattern.ends_with('/') && pattern.len() > 1;
        let body = if dirs_only { &pattern[..pattern.len() - 1] } else { pattern };
        let body = body.strip_prefix("./").unwrap_or(body);
        let chars: Vec<char> = body.chars().collect();
        check_classes(&chars).map_err(|e| format!("{pattern:?}: {e}"))?;
        Ok(Self {
            include,
            anchored: body.contains('/'),
            pattern: chars,
            dirs_only,
            text: pattern.to_owned(),
        })
    }

    /// The pattern as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the rule's pattern matches `path` (a manifest path), which is a directory if
    /// `dir`.
    pub fn matches(&self, path: &str, dir: bool) -> bool {
        if self.dirs_only && !dir {
            return false;
        }
        let subject = if self.anchored { path } else { path.rsplit('/').next().unwrap_or(path) };
        let subject: Vec<char> = subject.chars().collect();
        glob(&self.pattern, &subject)
    }
}

/// Rules in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules(Vec<Rule>);

impl Rules {
    /// Rules in command-line order.
    pub fn new(rules: Vec<Rule>) -> Result<Self, String> {
        if rules.len() > MAX_RULES {
            return Err(format!("more than {MAX_RULES} include and exclude rules"));
        }
        Ok(Self(rules))
    }

    /// Whether there are no rules (everything is kept).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `path` (a directory if `dir`) is kept: the first matching rule decides, and a
    /// path no rule matches is kept.
    pub fn keeps(&self, path: &str, dir: bool) -> bool {
        self.0.iter().find(|r| r.matches(path, dir)).is_none_or(|r| r.include)
    }
}

/// Checks that every `[` opens a class that closes.
fn check_classes(p: &[char]) -> Result<(), String> {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' => i += 2,
            '[' => match class_end(p, i) {
                Some(end) => i = end + 1,
                None => return Err("a `[` without its `]` (write `\\[` for a literal one)".into()),
            },
            _ => i += 1,
        }
    }
    Ok(())
}

/// The index of the `]` closing the class that opens at `p[start]`.
fn class_end(p: &[char], start: usize) -> Option<usize> {
    let mut i = start + 1;
    if p.get(i) == Some(&'!') {
        i += 1;
    }
    if p.get(i) == Some(&']') {
        i += 1; // a `]` first in the class is literal
    }
    while i < p.len() {
        match p[i] {
            '\\' => i += 2,
            ']' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Whether the class at `p[start..=end]` matches `c`.
fn class_matches(p: &[char], start: usize, end: usize, c: char) -> bool {
    let mut i = start + 1;
    let negate = p.get(i) == Some(&'!');
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    while i < end {
        let mut lo = p[i];
        if lo == '\\' && i + 1 < end {
            i += 1;
            lo = p[i];
        } else if lo == ']' && !first {
            break;
        }
        first = false;
        if i + 2 < end && p[i + 1] == '-' {
            let mut hi = p[i + 2];
            let mut step = 3;
            if hi == '\\' && i + 3 < end {
                hi = p[i + 3];
                step = 4;
            }
            hit |= lo <= c && c <= hi;
            i += step;
        } else {
            hit |= lo == c;
            i += 1;
        }
    }
    c != '/' && hit != negate
}

/// Glob matching with backtracking over the last `*` / `**` only (linear in practice, at worst
/// quadratic in the lengths: both are bounded).
fn glob(p: &[char], s: &[char]) -> bool {
    let (mut pi, mut si) = (0, 0);
    // The last star: where it was in the pattern, whether it crosses `/`, and where in the
    // subject it began matching.
    let mut star: Option<(usize, bool, usize)> = None;
    loop {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    let double = p.get(pi + 1) == Some(&'*');
                    pi += if double { 2 } else { 1 };
                    // `**/` also matches no directory at all.
                    if double && p.get(pi) == Some(&'/') && glob(&p[pi + 1..], &s[si..]) {
                        return true;
                    }
                    star = Some((pi, double, si));
                    continue;
                }
                '?' if si < s.len() && s[si] != '/' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                '[' => {
                    let end = class_end(p, pi).expect("checked when the rule was made");
                    if si < s.len() && class_matches(p, pi, end, s[si]) {
                        pi = end + 1;
                        si += 1;
                        continue;
                    }
                }
                '\\' if pi + 1 < p.len() && si < s.len() && s[si] == p[pi + 1] => {
                    pi += 2;
                    si += 1;
                    continue;
                }
                '\\' if pi + 1 < p.len() => {}
                c if c != '?' && c != '[' && si < s.len() && s[si] == c => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                _ => {}
            }
        } else if si == s.len() {
            return true;
        }
        // Mismatch: let the last star take one more character, if it may.
        match star {
            Some((spi, double, ssi)) if ssi < s.len() && (double || s[ssi] != '/') => {
                star = Some((spi, double, ssi + 1));
                pi = spi;
                si = ssi + 1;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(spec: &[(bool, &str)]) -> Rules {
        Rules::new(spec.iter().map(|(inc, p)| Rule::new(*inc, p).unwrap()).collect()).unwrap()
    }

    #[test]
    fn globs() {
        let m = |p: &str, s: &str| Rule::new(false, p).unwrap().matches(s, false);
        assert!(m("*.txt", "a/b/notes.txt"), "a name pattern at any depth");
        assert!(!m("*.txt", "a/notes.txt.gz"));
        assert!(m("f?o", "dir/foo") && !m("f?o", "dir/fo"));
        assert!(m("a/*.c", "a/x.c") && !m("a/*.c", "a/b/x.c"), "* stops at /");
        assert!(m("a/**.c", "a/b/c/x.c"), "** crosses /");
        assert!(m("a/**/x.c", "a/x.c") && m("a/**/x.c", "a/b/x.c"));
        assert!(m("[a-c]at", "bat") && !m("[a-c]at", "rat") && m("[!a-c]at", "rat"));
        assert!(m("[]]x", "]x"), "a ] first in a class is literal");
        assert!(m("\\*", "*") && !m("\\*", "a"), "escaped star");
        assert!(m("*", "anything") && !m("a/*", "b/c"));
        assert!(m("./top/f", "top/f"), "a leading ./ is the transfer's root");
        assert!(Rule::new(false, "[abc").is_err() && Rule::new(false, "").is_err());
        // Pathological patterns stay cheap (bounded backtracking).
        let long = "a".repeat(200);
        assert!(!m(&"*a".repeat(50), &format!("{long}b")));
    }

    #[test]
    fn first_match_decides_and_unmatched_is_kept() {
        let r = rules(&[(true, "wxy"), (false, "w*")]);
        assert!(r.keeps("d/wxy", false), "included before the exclude");
        assert!(!r.keeps("d/wxz", false));
        assert!(r.keeps("d/other", false), "no rule matches: kept");
        let r = rules(&[(false, "w*"), (true, "wxy")]);
        assert!(!r.keeps("d/wxy", false), "the exclude came first");
        assert!(Rules::default().keeps("x", true));
    }

    #[test]
    fn a_trailing_slash_is_for_directories() {
        let r = rules(&[(false, "cache/")]);
        assert!(!r.keeps("src/cache", true));
        assert!(r.keeps("src/cache", false), "a file named cache is kept");
    }
}
