//! `ferry cp -E / -N` patterns and paths: building a rule from any text and matching any path
//! never panics and stays cheap (bounded backtracking), and a path always matches the rule
//! made from itself with its glob characters escaped.
#![no_main]

use ferry_engine::io::filter::{Rule, Rules};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (pattern, path) = text.split_once('\n').unwrap_or((&text, "a/b"));
    let Ok(rule) = Rule::new(false, pattern) else { return };
    let dir = path.len() % 2 == 0;
    let _ = rule.matches(path, dir);
    let rules = Rules::new(vec![rule, Rule::new(true, "*").unwrap()]).unwrap();
    let _ = rules.keeps(path, dir);
    // A path without a trailing slash matches itself, escaped, as an anchored pattern.
    if !path.is_empty() && !path.ends_with('/') && path.contains('/') && !path.starts_with("./") {
        let escaped: String = path
            .chars()
            .flat_map(|c| if "*?[]\\".contains(c) { vec!['\\', c] } else { vec![c] })
            .collect();
        if let Ok(own) = Rule::new(true, &escaped) {
            assert!(own.matches(path, false), "{escaped:?} should match {path:?}");
        }
    }
});
