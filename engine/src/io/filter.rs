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
    pattern: Vec<Tok>,
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
        let tokens = compile(&chars).map_err(|e| format!("{pattern:?}: {e}"))?;
        Ok(Self {
            include,
            anchored: body.contains('/'),
            pattern: tokens,
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

/// One element of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// This character.
    Lit(char),
    /// `?`: any one character but `/`.
    One,
    /// `*`: any run of characters without `/`.
    Star,
    /// `**`: any run of characters.
    Stars,
    /// `**/`: nothing, or any run of characters ending in `/` (whole directories).
    StarsSlash,
    /// `[...]`: one character (never `/`) in (or, negated, not in) the ranges.
    Class { negate: bool, ranges: Vec<(char, char)> },
}

/// Compiles a pattern's characters into tokens; a `[` without its `]` is refused.
fn compile(p: &[char]) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' if i + 1 < p.len() => {
                out.push(Tok::Lit(p[i + 1]));
                i += 2;
            }
            '*' if p.get(i + 1) == Some(&'*') => {
                if p.get(i + 2) == Some(&'/') {
                    out.push(Tok::StarsSlash);
                    i += 3;
                } else {
                    out.push(Tok::Stars);
                    i += 2;
                }
            }
            '*' => {
                out.push(Tok::Star);
                i += 1;
            }
            '?' => {
                out.push(Tok::One);
                i += 1;
            }
            '[' => {
                let (tok, next) =
                    class(p, i).ok_or("a `[` without its `]` (write `\\[` for a literal one)")?;
                out.push(tok);
                i = next;
            }
            c => {
                out.push(Tok::Lit(c));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The class opening at `p[start]`, and the index after its `]`.
fn class(p: &[char], start: usize) -> Option<(Tok, usize)> {
    let mut i = start + 1;
    let negate = p.get(i) == Some(&'!');
    if negate {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let mut c = *p.get(i)?;
        if c == ']' && !first {
            return Some((Tok::Class { negate, ranges }, i + 1));
        }
        first = false;
        if c == '\\' {
            i += 1;
            c = *p.get(i)?;
        }
        i += 1;
        if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&n| n != ']') {
            let mut hi = p[i + 1];
            i += 2;
            if hi == '\\' {
                hi = *p.get(i)?;
                i += 1;
            }
            ranges.push((c, hi));
        } else {
            ranges.push((c, c));
        }
    }
}

/// Whether the tokens match all of `s`: the set of positions of `s` the pattern so far can
/// reach, token by token (no backtracking: linear in the tokens times the length of `s`).
fn glob(p: &[Tok], s: &[char]) -> bool {
    let n = s.len();
    let mut cur = vec![false; n + 1];
    cur[0] = true;
    let mut next = vec![false; n + 1];
    for tok in p {
        next.iter_mut().for_each(|b| *b = false);
        match tok {
            Tok::Lit(_) | Tok::One | Tok::Class { .. } => {
                for i in 0..n {
                    if cur[i] && one(tok, s[i]) {
                        next[i + 1] = true;
                    }
                }
            }
            Tok::Star => {
                let mut run = false;
                for j in 0..=n {
                    run |= cur[j];
                    next[j] = run;
                    if j < n && s[j] == '/' {
                        run = false;
                    }
                }
            }
            Tok::Stars => {
                let mut run = false;
                for j in 0..=n {
                    run |= cur[j];
                    next[j] = run;
                }
            }
            Tok::StarsSlash => {
                let mut seen = false;
                for j in 0..=n {
                    next[j] = cur[j] || (seen && j > 0 && s[j - 1] == '/');
                    seen |= cur[j];
                }
            }
        }
        std::mem::swap(&mut cur, &mut next);
        if !cur.iter().any(|&b| b) {
            return false;
        }
    }
    cur[n]
}

/// Whether a one-character token matches `c`.
fn one(tok: &Tok, c: char) -> bool {
    match tok {
        Tok::Lit(l) => *l == c,
        Tok::One => c != '/',
        Tok::Class { negate, ranges } => {
            c != '/' && ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negate
        }
        _ => false,
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
        // A later star that may not cross `/` does not undo an earlier one that may.
        assert!(m("d/**x*y", "d/1x2/x3y"));
        assert!(!m("d/*x*y", "d/1x2/x3y"));
        // Pathological patterns stay cheap (no backtracking: tokens times length).
        let long = "a".repeat(200);
        assert!(!m(&"*a".repeat(50), &format!("{long}b")));
        let class = format!("*[{}]", "abcdefgh".repeat(400));
        assert!(!m(&class, &"z".repeat(4000)));
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
