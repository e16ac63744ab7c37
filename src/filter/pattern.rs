//! The regexes of a filter, compiled within one budget. Each regex is linear-time (no
//! backreferences, no look-around) and compiles to at most [`MAX_REGEX_BYTES`]; a filter's
//! regexes together, counted with the caches they may grow while matching, stay within
//! [`REGEX_BUDGET_BYTES`]: the number of regexes is the caller's to choose, so their total is
//! what must be bounded. The same pattern twice in one filter is compiled once and shares its
//! cache (and the matcher evaluates it once per session and column).
//!
//! What one regex is counted as: twice its compiled automata (forward and reverse, what
//! `memory_usage` reports, and the PikeVM's search state, which is sized by them), and four
//! times the capacity of its lazy-DFA cache: a regex whose DFA has many states fills it while it
//! matches, in both directions for some search strategies, and the cache's vectors may hold up
//! to twice what it counts against its capacity. The capacity is sized to the automata (four
//! times them, between 32 KiB and 1 MiB), so that the lazy DFA fits. The engines whose memory
//! is not counted this way (the bounded backtracker, the one-pass DFA, the full DFA) are off.

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
/// The lazy-DFA cache of a regex with small automata, and the least any regex gets.
const MIN_CACHE_BYTES: usize = 32 << 10;
/// The largest lazy-DFA cache.
const MAX_CACHE_BYTES: usize = 1 << 20;
/// Automata up to this size keep the smallest cache; larger ones are compiled again with a
/// cache four times their size (what their lazy DFA needs to fit), when the budget allows.
const SMALL_AUTOMATA_BYTES: usize = 8 << 10;
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

    /// The same for every occurrence of one pattern in a filter (they share the compiled regex).
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.regex) as usize
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
        let limit = MAX_REGEX_BYTES.min(left.saturating_sub(CACHE_FACTOR * MIN_CACHE_BYTES) / 2);
        let invalid = |reason: String| FilterError::InvalidRegex {
            key: key.to_string(),
            pattern: pattern.to_string(),
            reason,
        };
        let mut regex = match build(pattern, limit, MIN_CACHE_BYTES) {
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
        let mut cost = cost_of(&regex, MIN_CACHE_BYTES);
        if cost > left {
            return Err(over_budget());
        }
        // Larger automata again, with a cache their lazy DFA fits in, if the budget allows
        // (else they keep the small one, and match with the slower PikeVM when it does not fit).
        let automata = regex.memory_usage();
        if automata > SMALL_AUTOMATA_BYTES {
            let cache = (4 * automata).clamp(MIN_CACHE_BYTES, MAX_CACHE_BYTES);
            if 2 * automata + CACHE_FACTOR * cache <= left {
                (self.check)();
                if let Ok(r) = build(pattern, MAX_REGEX_BYTES, cache) {
                    if let Some(c) = Some(cost_of(&r, cache)).filter(|c| *c <= left) {
                        (regex, cost) = (r, c);
                    }
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

/// How many times its capacity a lazy-DFA cache is counted (both directions, vectors grown
/// up to twice what they hold).
const CACHE_FACTOR: usize = 4;

/// What a compiled regex counts for: twice its automata and four times its cache's capacity.
fn cost_of(regex: &meta::Regex, cache: usize) -> usize {
    2 * regex.memory_usage() + CACHE_FACTOR * cache
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
