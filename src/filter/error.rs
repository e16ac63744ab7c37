//! Everything a filter can be refused for. Each variant carries the key (as a path such as
//! `any[1].pid`) or value at fault; `Display` is the message the user sees with SQLSTATE 22023.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FilterError {
    #[error("filter must not be NULL")]
    Null,

    #[error("filter is not valid JSON: {0}")]
    InvalidJson(String),

    #[error("filter must be a JSON object, not {found}")]
    NotAnObject { found: &'static str },

    #[error("filter is {bytes} bytes long; the limit is {max} bytes")]
    TooLarge { bytes: usize, max: usize },

    #[error("filter is nested too deeply at \"{path}\"; at most {max} levels of \"any\"/\"exclude\" are allowed")]
    TooDeep { path: String, max: usize },

    #[error("filter has the key \"{key}\" more than once")]
    DuplicateKey { key: String },

    #[error("unknown filter key \"{key}\"{}", did_you_mean(suggestion))]
    UnknownKey {
        key: String,
        suggestion: Option<String>,
    },

    #[error("filter key \"{key}\" is only allowed at the top level of a filter")]
    TopLevelOnly { key: String },

    #[error("filter key \"{key}\" must be {expected}, not {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },

    #[error("filter key \"{key}\" must not be an empty {what}")]
    Empty { key: String, what: &'static str },

    #[error("filter key \"{key}\" is {len} {unit} long; the limit is {max}")]
    TooLong {
        key: String,
        len: usize,
        max: usize,
        unit: &'static str,
    },

    #[error("filter key \"{key}\" has an invalid regex {pattern:?}: {reason}")]
    InvalidRegex {
        key: String,
        pattern: String,
        reason: String,
    },

    #[error("filter key \"{key}\": the filter's regexes would take more than their budget of {} MiB together (each counts its compiled size and the cache it may grow while matching); use fewer or simpler regexes, or exact values", budget >> 20)]
    RegexBudget { key: String, budget: usize },

    #[error("filter key \"{key}\": {value:?} is not an IP address, a CIDR network (\"10.0.0.0/8\") or \"local\"")]
    InvalidAddress { key: String, value: String },

    #[error("filter key \"{key}\": {value:?} is not a valid interval ({reason})")]
    InvalidInterval {
        key: String,
        value: String,
        reason: String,
    },

    #[error("filter key \"{key}\" must not be negative, got {value}")]
    Negative { key: String, value: String },

    #[error("filter key \"{key}\": {value} is out of range ({range})")]
    OutOfRange {
        key: String,
        value: String,
        range: &'static str,
    },

    #[error(
        "filter key \"{key}\": unknown {what} {value:?} (expected one of {expected}){}",
        did_you_mean(suggestion)
    )]
    UnknownValue {
        key: String,
        what: &'static str,
        value: String,
        expected: String,
        suggestion: Option<String>,
    },

    #[error(
        "filter key \"{key}\": {server} has no backend type {value:?}{}",
        did_you_mean(suggestion)
    )]
    UnknownBackendType {
        key: String,
        value: String,
        server: String,
        suggestion: Option<String>,
    },

    #[error("filter key \"{key}\" must be true; leave it out to not use it")]
    MustBeTrue { key: String },

    #[error("filter key \"{key}\" needs \"{needs}\": {why}")]
    Requires {
        key: String,
        needs: &'static str,
        why: &'static str,
    },

    #[error("filter key \"{key}\" is not allowed inside \"{outer}\"")]
    Nested { key: String, outer: &'static str },

    #[error("filter has more than {max} \"holding_up\" keys (at \"{key}\")")]
    TooMany { key: String, max: usize },

    #[error("filter key \"{key}\" names {value:?} more than once")]
    Repeated { key: String, value: String },

    #[error("{}", no_criterion(path))]
    NoCriterion { path: String },
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean \"{s}\"?)"),
        None => String::new(),
    }
}

fn no_criterion(path: &str) -> String {
    let what = if path.is_empty() {
        "the filter".to_string()
    } else {
        format!("the filter at \"{path}\"")
    };
    format!(
        "{what} has no criterion and would match every session; \
         name at least one key, or say {{\"all\": true}} to match every session on purpose"
    )
}

/// The closest candidate to `word` by edit distance, if it is close enough to be a likely typo.
pub(crate) fn suggest<S: AsRef<str>>(word: &str, candidates: &[S]) -> Option<String> {
    let word = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&word, c.as_ref()), c.as_ref()))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_string())
}

/// Optimal string alignment distance (Levenshtein plus adjacent transpositions).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}
