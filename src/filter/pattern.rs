//! The regexes of a filter, compiled within one budget. Each regex is linear-time (no
//! backreferences, no look-around) and compiles to at most [`MAX_REGEX_BYTES`]; a filter's
//! regexes together, counted with the caches they may grow while matching, stay within
//! [`REGEX_BUDGET_BYTES`]: the number of regexes is the caller's to choose, so their total is
//! what must be bounded. The same pattern twice in one filter is compiled once and shares its
//! cache.
//!
//! What one regex is counted as: its compiled automata (forward and reverse, what
//! `memory_usage` reports), as much again for the search state that grows with them (the
//! PikeVM's, at most about their size), and the full capacity of its lazy-DFA cache, which a
//! regex whose DFA has many states fills while it matches. The engines whose memory is not
//! counted this way (the bounded backtracker, the one-pass DFA) are turned off.

use std::collections::HashMap;
use std::sync::Arc;

use regex_automata::meta;
use regex_automata::nfa::thompson::WhichCaptures;
use regex_automata::util::syntax;

use super::error::FilterError;

/// Compiled size of one regex, in bytes (its automata: each direction at most this).
pub const MAX_REGEX_BYTES: usize = 1 << 20;
/// What all the regexes of one filter may take together, counted as above.
pub const REGEX_BUDGET_BYTES: usize = 16 << 20;
/// The lazy-DFA cache of an ordinary regex.
const SMALL_CACHE_BYTES: usize = 128 << 10;
/// The cache of a regex whose automata outgrow a small cache (its lazy DFA would not fit in
/// one, and matching would fall back to the slower PikeVM), when the budget leaves room.
const LARGE_CACHE_BYTES: usize = 1 << 20;
/// How deep a pattern may nest groups and repetitions.
const NEST_LIMIT: u32 = 64;

/// One compiled regex.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: Arc<str>,
    regex: Arc<meta::Regex>,
}

impl Pattern {
    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the regex finds a match anywhere in `haystack`.
    pub fn is_match(&self, haystack: &str) -> bool {
        self.regex.is_match(haystack)
    }
}

/// Compiles the regexes of one filter, keeping count of the budget.
pub struct Compiler<'c> {
    used: usize,
    compiled: HashMap<String, Pattern>,
    /// Called before each compilation: a cancel or statement_timeout stops a long list.
    check: &'c mut dyn FnMut(),
}

impl<'c> Compiler<'c> {
    pub fn new(check: &'c mut dyn FnMut()) -> Compiler<'c> {
        Compiler {
            used: 0,
            compiled: HashMap::new(),
            check,
        }
    }

    /// What the compiled regexes count for, in bytes.
    pub fn used(&self) -> usize {
        self.used
    }

    /// The regex `pattern` at filter key `key`, compiled (or shared with an earlier
    /// occurrence of the same pattern), or why it cannot be.
    pub fn compile(&mut self, key: &str, pattern: &str) -> Result<Pattern, FilterError> {
        if let Some(p) = self.compiled.get(pattern) {
            return Ok(p.clone());
        }
        (self.check)();
        let left = REGEX_BUDGET_BYTES.saturating_sub(self.used);
        let over_budget = || FilterError::RegexBudget {
            key: key.to_string(),
            budget: REGEX_BUDGET_BYTES,
        };
        // Automata larger than what is left could not be kept: stop compiling there.
        let limit = MAX_REGEX_BYTES.min(left.saturating_sub(SMALL_CACHE_BYTES) / 2);
        let invalid = |reason: String| FilterError::InvalidRegex {
            key: key.to_string(),
            pattern: pattern.to_string(),
            reason,
        };
        let mut regex = match build(pattern, limit, SMALL_CACHE_BYTES) {
            Ok(r) => r,
            Err(e) => match e.size_limit() {
                Some(_) if limit < MAX_REGEX_BYTES => return Err(over_budget()),
                Some(max) => {
                    return Err(invalid(format!(
                        "compiled regex exceeds size limit of {max} bytes"
                    )))
                }
                None => return Err(invalid(reason(&e))),
            },
        };
        let mut cost = cost_of(&regex, SMALL_CACHE_BYTES);
        if cost > left {
            return Err(over_budget());
        }
        // The same automata again, with a cache its lazy DFA fits in, if the budget allows.
        if regex.memory_usage() > SMALL_CACHE_BYTES
            && cost - SMALL_CACHE_BYTES + LARGE_CACHE_BYTES <= left
        {
            (self.check)();
            if let Ok(r) = build(pattern, MAX_REGEX_BYTES, LARGE_CACHE_BYTES) {
                if let Some(c) = Some(cost_of(&r, LARGE_CACHE_BYTES)).filter(|c| *c <= left) {
                    (regex, cost) = (r, c);
                }
            }
        }
        self.used += cost;
        let compiled = Pattern {
            source: Arc::from(pattern),
            regex: Arc::new(regex),
        };
        self.compiled.insert(pattern.to_string(), compiled.clone());
        Ok(compiled)
    }
}

/// What a compiled regex counts for: its automata, as much again for the search state sized
/// by them, and its lazy-DFA cache's full capacity.
fn cost_of(regex: &meta::Regex, cache: usize) -> usize {
    2 * regex.memory_usage() + cache
}

#[allow(clippy::result_large_err)] // built a few times per filter; the error is read at once
fn build(
    pattern: &str,
    size_limit: usize,
    cache: usize,
) -> Result<meta::Regex, regex_automata::meta::BuildError> {
    meta::Regex::builder()
        .configure(
            meta::Regex::config()
                .nfa_size_limit(Some(size_limit))
                .hybrid_cache_capacity(cache)
                .which_captures(WhichCaptures::Implicit)
                .backtrack(false)
                .onepass(false)
                .dfa(false),
        )
        .syntax(syntax::Config::new().nest_limit(NEST_LIMIT))
        .build(pattern)
}

/// The parser's errors draw a caret diagram over several lines; keep the last line.
fn reason(e: &regex_automata::meta::BuildError) -> String {
    let message = match e.syntax_error() {
        Some(s) => s.to_string(),
        None => e.to_string(),
    };
    message
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or(&message)
        .trim_start_matches("error: ")
        .to_string()
}
