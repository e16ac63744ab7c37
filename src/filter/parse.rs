//! JSON → [`Filter`] (validation) and [`Filter`] → JSON (the normalized form).

use std::net::IpAddr;
use std::str::FromStr;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::error::{suggest, FilterError};
use super::interval::parse_interval;
use super::pattern::Compiler;
use super::{
    AddrList, AddrMatch, AgeField, Blocking, Criteria, Filter, GroupField, Order, PidMatch,
    TextField, TextMatch, Vocabulary, MAX_ARRAY_ITEMS, MAX_FILTER_BYTES, MAX_HOLDING_UP,
    MAX_NESTING, MAX_STRING_BYTES,
};

/// Every key the language knows, for did-you-mean hints.
const KEYS: &[&str] = &[
    "usename",
    "datname",
    "application_name",
    "client_hostname",
    "state",
    "backend_type",
    "wait_event_type",
    "wait_event",
    "query",
    "client_addr",
    "pid",
    "min_state_age",
    "min_query_age",
    "min_xact_age",
    "min_backend_age",
    "min_blocked_age",
    "min_blocking_age",
    "min_blocked_sessions",
    "blocking",
    "blocked",
    "holding_up",
    "any",
    "exclude",
    "all",
    "limit",
    "order",
    "keep",
    "per",
    "include_superusers",
    "include_protected",
];

const TEXT_FORMS: &str = "a string, an array of strings or {\"regex\": \"...\"}";
const AGE_FORMS: &str =
    "an integer number of milliseconds or an interval string such as \"5 minutes\"";

impl Filter {
    /// Parses the text form of a filter (what `jsonb_out` gives), refusing duplicate keys and
    /// anything over [`MAX_FILTER_BYTES`] before building a JSON tree; exact `state` and
    /// `backend_type` values are checked against `vocabulary`.
    pub fn parse_str(text: &str, vocabulary: &Vocabulary) -> Result<Filter, FilterError> {
        Filter::parse_str_checked(text, vocabulary, &mut || {})
    }

    /// `parse_str`, calling `check` between the expensive steps (each regex's compilation), so
    /// that a cancel can stop a long filter.
    pub fn parse_str_checked(
        text: &str,
        vocabulary: &Vocabulary,
        check: &mut dyn FnMut(),
    ) -> Result<Filter, FilterError> {
        if text.len() > MAX_FILTER_BYTES {
            return Err(FilterError::TooLarge {
                bytes: text.len(),
                max: MAX_FILTER_BYTES,
            });
        }
        let value = parse_json_strict(text)?;
        Filter::from_value_checked(&value, vocabulary, check)
    }

    /// Validates an already parsed filter.
    pub fn from_value(value: &Value, vocabulary: &Vocabulary) -> Result<Filter, FilterError> {
        Filter::from_value_checked(value, vocabulary, &mut || {})
    }

    fn from_value_checked(
        value: &Value,
        vocabulary: &Vocabulary,
        check: &mut dyn FnMut(),
    ) -> Result<Filter, FilterError> {
        let object = match value {
            Value::Object(o) => o,
            Value::Null => return Err(FilterError::Null),
            other => {
                return Err(FilterError::NotAnObject {
                    found: json_kind(other),
                })
            }
        };
        let mut filter = Filter {
            criteria: Criteria::default(),
            limit: None,
            order: Order::default(),
            include_superusers: false,
            include_protected: false,
            keep: None,
            per: Vec::new(),
            regex_bytes: 0,
        };
        let mut regexes = Compiler::new(check);
        let mut p = Parser {
            vocabulary,
            regexes: &mut regexes,
            holding_up: 0,
            in_holding_up: false,
        };
        filter.criteria = p.criteria(object, "", 0, Some(&mut filter))?;
        filter.regex_bytes = regexes.used();
        if !filter.per.is_empty() && filter.keep.is_none() {
            return Err(FilterError::Requires {
                key: "per".into(),
                needs: "keep",
                why: "\"per\" says what a group is for \"keep\"",
            });
        }
        Ok(filter)
    }

    /// The normalized filter: every key validated, defaults spelt out, ages in milliseconds.
    /// Parsing the result again gives the same filter.
    pub fn to_json(&self) -> Value {
        let mut object = criteria_to_json(&self.criteria);
        object.insert(
            "include_superusers".into(),
            Value::Bool(self.include_superusers),
        );
        object.insert(
            "include_protected".into(),
            Value::Bool(self.include_protected),
        );
        object.insert("order".into(), Value::String(self.order.name()));
        if let Some(keep) = self.keep {
            object.insert("keep".into(), Value::Number(keep.into()));
            if !self.per.is_empty() {
                object.insert(
                    "per".into(),
                    self.per
                        .iter()
                        .map(|f| Value::String(f.name().into()))
                        .collect(),
                );
            }
        }
        if let Some(limit) = self.limit {
            object.insert("limit".into(), Value::Number(limit.into()));
        }
        Value::Object(object)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(key: &str, expected: &'static str, found: &Value) -> FilterError {
    FilterError::WrongType {
        key: key.to_string(),
        expected,
        found: json_kind(found).to_string(),
    }
}

/// What validation needs besides the JSON: the server's vocabulary, and the compiler that
/// keeps the regexes within their budget.
struct Parser<'p, 'c> {
    vocabulary: &'p Vocabulary,
    regexes: &'p mut Compiler<'c>,
    /// How many `holding_up` keys so far (each is numbered), and whether one is being read.
    holding_up: usize,
    in_holding_up: bool,
}

impl Parser<'_, '_> {
    /// One AND-node. `top` is the filter being built when this is the top level, where the
    /// options (`limit`, `order`, `include_superusers`) may appear.
    fn criteria(
        &mut self,
        object: &Map<String, Value>,
        path: &str,
        depth: usize,
        mut top: Option<&mut Filter>,
    ) -> Result<Criteria, FilterError> {
        if depth > MAX_NESTING {
            return Err(FilterError::TooDeep {
                path: path.to_string(),
                max: MAX_NESTING,
            });
        }
        let mut c = Criteria::default();
        for (key, value) in object {
            let full = join(path, key);
            if let Some(field) = TextField::ALL.iter().find(|f| f.key() == key) {
                c.text.push((*field, self.text(&full, *field, value)?));
                continue;
            }
            if let Some(field) = AgeField::ALL.iter().find(|f| f.key() == key) {
                c.min_age.push((*field, parse_age(&full, value)?));
                continue;
            }
            match key.as_str() {
                "client_addr" => c.client_addr = Some(parse_addrs(&full, value)?),
                "pid" => c.pid = Some(parse_pids(&full, value)?),
                "blocking" => c.blocking = Some(parse_blocking(&full, value)?),
                "blocked" => c.blocked = Some(parse_bool(&full, value)?),
                "min_blocked_sessions" => {
                    c.min_blocked_sessions =
                        Some(parse_count(&full, value, u32::MAX.into())? as u32)
                }
                "all" => {
                    if !parse_bool(&full, value)? {
                        return Err(FilterError::MustBeTrue { key: full });
                    }
                    c.all = true;
                }
                "any" => {
                    let items = value
                        .as_array()
                        .ok_or_else(|| wrong_type(&full, "an array of filters", value))?;
                    check_array_len(&full, items)?;
                    let mut branches = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        let item_path = format!("{full}[{i}]");
                        let object = item
                            .as_object()
                            .ok_or_else(|| wrong_type(&item_path, "a filter object", item))?;
                        branches.push(self.criteria(object, &item_path, depth + 1, None)?);
                    }
                    c.any = Some(branches);
                }
                "holding_up" => {
                    let object = value.as_object().ok_or_else(|| {
                        wrong_type(&full, "a filter object (the sessions held up)", value)
                    })?;
                    if self.in_holding_up {
                        return Err(FilterError::Nested {
                            key: full,
                            outer: "holding_up",
                        });
                    }
                    if self.holding_up >= MAX_HOLDING_UP {
                        return Err(FilterError::TooMany {
                            key: full,
                            max: MAX_HOLDING_UP,
                        });
                    }
                    let k = self.holding_up;
                    self.holding_up += 1;
                    self.in_holding_up = true;
                    let held = self.criteria(object, &full, depth + 1, None);
                    self.in_holding_up = false;
                    c.holding_up = Some((k, Box::new(held?)));
                }
                "exclude" => {
                    let object = value
                        .as_object()
                        .ok_or_else(|| wrong_type(&full, "a filter object", value))?;
                    c.exclude = Some(Box::new(self.criteria(object, &full, depth + 1, None)?));
                }
                "limit" | "order" | "include_superusers" | "include_protected" | "keep" | "per" => {
                    let Some(filter) = top.as_deref_mut() else {
                        return Err(FilterError::TopLevelOnly { key: full });
                    };
                    match key.as_str() {
                        "limit" => filter.limit = Some(parse_limit(&full, value)?),
                        "order" => filter.order = parse_order(&full, value)?,
                        "keep" => filter.keep = Some(parse_count(&full, value, MAX_KEEP)?),
                        "per" => filter.per = parse_per(&full, value)?,
                        "include_protected" => filter.include_protected = parse_bool(&full, value)?,
                        _ => filter.include_superusers = parse_bool(&full, value)?,
                    }
                }
                _ => {
                    return Err(FilterError::UnknownKey {
                        key: full,
                        suggestion: suggest(key, KEYS),
                    })
                }
            }
        }
        if !c.has_criterion() {
            return Err(FilterError::NoCriterion {
                path: path.to_string(),
            });
        }
        Ok(c)
    }
}

impl Criteria {
    /// `exclude` and the options narrow a filter; they are not criteria of their own.
    pub(crate) fn has_criterion(&self) -> bool {
        self.all
            || !self.text.is_empty()
            || self.client_addr.is_some()
            || self.pid.is_some()
            || !self.min_age.is_empty()
            || self.blocking.is_some()
            || self.blocked.is_some()
            || self.min_blocked_sessions.is_some()
            || self.holding_up.is_some()
            || self.any.is_some()
    }
}

fn check_string(key: &str, s: &str) -> Result<(), FilterError> {
    if s.len() > MAX_STRING_BYTES {
        return Err(FilterError::TooLong {
            key: key.to_string(),
            len: s.len(),
            max: MAX_STRING_BYTES,
            unit: "bytes",
        });
    }
    Ok(())
}

fn check_array_len(key: &str, items: &[Value]) -> Result<(), FilterError> {
    if items.is_empty() {
        return Err(FilterError::Empty {
            key: key.to_string(),
            what: "array",
        });
    }
    if items.len() > MAX_ARRAY_ITEMS {
        return Err(FilterError::TooLong {
            key: key.to_string(),
            len: items.len(),
            max: MAX_ARRAY_ITEMS,
            unit: "items",
        });
    }
    Ok(())
}

/// Each string of an array, or the error naming the element at fault.
fn array_strings<'v>(
    key: &str,
    items: &'v [Value],
    expected: &'static str,
) -> Result<Vec<&'v str>, FilterError> {
    check_array_len(key, items)?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let s = item
                .as_str()
                .ok_or_else(|| wrong_type(&format!("{key}[{i}]"), expected, item))?;
            check_string(key, s)?;
            Ok(s)
        })
        .collect()
}

impl Parser<'_, '_> {
    fn text(
        &mut self,
        key: &str,
        field: TextField,
        value: &Value,
    ) -> Result<TextMatch, FilterError> {
        let vocabulary = self.vocabulary;
        // An exact state or backend type the server can never show would silently match nothing.
        let check_state = |s: &str| -> Result<(), FilterError> {
            match field {
                TextField::State if !vocabulary.states.iter().any(|v| v == s) => {
                    Err(FilterError::UnknownValue {
                        key: key.to_string(),
                        what: "state",
                        value: s.to_string(),
                        expected: vocabulary.states.join(", "),
                        suggestion: suggest(s, &vocabulary.states),
                    })
                }
                TextField::BackendType if !vocabulary.backend_types.iter().any(|v| v == s) => {
                    Err(FilterError::UnknownBackendType {
                        key: key.to_string(),
                        value: s.chars().take(100).collect(),
                        server: vocabulary.server.clone(),
                        suggestion: suggest(s, &vocabulary.backend_types),
                    })
                }
                _ => Ok(()),
            }
        };
        match value {
            Value::String(s) => {
                check_string(key, s)?;
                check_state(s)?;
                Ok(TextMatch::Exact(s.clone()))
            }
            Value::Array(items) => {
                let strings = array_strings(key, items, "a string")?;
                for s in &strings {
                    check_state(s)?;
                }
                Ok(TextMatch::OneOf(
                    strings.into_iter().map(str::to_string).collect(),
                ))
            }
            Value::Object(object) => {
                if let Some(other) = object.keys().find(|k| *k != "regex") {
                    return Err(FilterError::UnknownKey {
                        key: join(key, other),
                        suggestion: suggest(other, &["regex"]),
                    });
                }
                let pattern = match object.get("regex") {
                    Some(Value::String(p)) => p,
                    Some(other) => return Err(wrong_type(&join(key, "regex"), "a string", other)),
                    None => return Err(wrong_type(key, TEXT_FORMS, value)),
                };
                check_string(key, pattern)?;
                Ok(TextMatch::Regex(self.regexes.compile(key, pattern)?))
            }
            other => Err(wrong_type(key, TEXT_FORMS, other)),
        }
    }
}

fn parse_addr(key: &str, text: &str) -> Result<AddrMatch, FilterError> {
    check_string(key, text)?;
    if text == "local" {
        return Ok(AddrMatch::Local);
    }
    if let Ok(net) = ipnet::IpNet::from_str(text) {
        return Ok(AddrMatch::Net(net.trunc()));
    }
    if let Ok(addr) = IpAddr::from_str(text) {
        return Ok(AddrMatch::Net(addr.into()));
    }
    Err(FilterError::InvalidAddress {
        key: key.to_string(),
        value: text.to_string(),
    })
}

fn parse_addrs(key: &str, value: &Value) -> Result<AddrList, FilterError> {
    const EXPECTED: &str = "an address, a CIDR network, \"local\", or an array of those";
    match value {
        Value::String(s) => Ok(AddrList::One(parse_addr(key, s)?)),
        Value::Array(items) => Ok(AddrList::Many(
            array_strings(key, items, "an address string")?
                .into_iter()
                .map(|s| parse_addr(key, s))
                .collect::<Result<_, _>>()?,
        )),
        other => Err(wrong_type(key, EXPECTED, other)),
    }
}

fn parse_pid(key: &str, value: &Value) -> Result<i32, FilterError> {
    let Value::Number(n) = value else {
        return Err(wrong_type(key, "an integer", value));
    };
    let out_of_range = || FilterError::OutOfRange {
        key: key.to_string(),
        value: n.to_string(),
        range: "a pid is 1 to 2147483647",
    };
    if n.is_f64() {
        return Err(wrong_type(key, "an integer", value));
    }
    n.as_i64()
        .and_then(|v| i32::try_from(v).ok())
        .filter(|v| *v > 0)
        .ok_or_else(out_of_range)
}

fn parse_pids(key: &str, value: &Value) -> Result<PidMatch, FilterError> {
    match value {
        Value::Array(items) => {
            check_array_len(key, items)?;
            Ok(PidMatch::Many(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| parse_pid(&format!("{key}[{i}]"), item))
                    .collect::<Result<_, _>>()?,
            ))
        }
        Value::Number(_) => Ok(PidMatch::One(parse_pid(key, value)?)),
        other => Err(wrong_type(key, "an integer or an array of integers", other)),
    }
}

/// Milliseconds or an interval string, to microseconds.
fn parse_age(key: &str, value: &Value) -> Result<i64, FilterError> {
    let micros = match value {
        Value::Number(n) if !n.is_f64() => {
            let Some(ms) = n.as_i64() else {
                return Err(FilterError::OutOfRange {
                    key: key.to_string(),
                    value: n.to_string(),
                    range: "at most 9223372036854775 milliseconds",
                });
            };
            if ms < 0 {
                return Err(FilterError::Negative {
                    key: key.to_string(),
                    value: n.to_string(),
                });
            }
            ms.checked_mul(1_000)
                .ok_or_else(|| FilterError::OutOfRange {
                    key: key.to_string(),
                    value: n.to_string(),
                    range: "at most 9223372036854775 milliseconds",
                })?
        }
        Value::String(s) => {
            check_string(key, s)?;
            parse_interval(s).map_err(|reason| FilterError::InvalidInterval {
                key: key.to_string(),
                value: s.clone(),
                reason,
            })?
        }
        other => return Err(wrong_type(key, AGE_FORMS, other)),
    };
    if micros < 0 {
        return Err(FilterError::Negative {
            key: key.to_string(),
            value: value.to_string(),
        });
    }
    Ok(micros)
}

fn parse_bool(key: &str, value: &Value) -> Result<bool, FilterError> {
    value
        .as_bool()
        .ok_or_else(|| wrong_type(key, "true or false", value))
}

fn parse_limit(key: &str, value: &Value) -> Result<u64, FilterError> {
    match value {
        Value::Number(n) if !n.is_f64() => match n.as_u64() {
            Some(limit) if limit >= 1 => Ok(limit),
            _ => Err(FilterError::OutOfRange {
                key: key.to_string(),
                value: n.to_string(),
                range: "it must be a positive integer",
            }),
        },
        other => Err(wrong_type(key, "a positive integer", other)),
    }
}

fn parse_order(key: &str, value: &Value) -> Result<Order, FilterError> {
    let name = value
        .as_str()
        .ok_or_else(|| wrong_type(key, "a string", value))?;
    let names: Vec<String> = Order::all().iter().map(|o| o.name()).collect();
    Order::all()
        .into_iter()
        .find(|o| o.name() == name)
        .ok_or_else(|| FilterError::UnknownValue {
            key: key.to_string(),
            what: "order",
            value: name.chars().take(100).collect(),
            expected: names.join(", "),
            suggestion: suggest(name, &names),
        })
}

/// The largest `keep` (more sessions than any server can have).
const MAX_KEEP: u64 = 1_000_000;

/// A positive integer, at most `max`.
fn parse_count(key: &str, value: &Value, max: u64) -> Result<u64, FilterError> {
    let range = || match max {
        MAX_KEEP => "it must be a positive integer, at most 1000000",
        _ => "it must be a positive integer, at most 4294967295",
    };
    match value {
        Value::Number(n) if !n.is_f64() => match n.as_u64() {
            Some(count) if (1..=max).contains(&count) => Ok(count),
            _ => Err(FilterError::OutOfRange {
                key: key.to_string(),
                value: n.to_string(),
                range: range(),
            }),
        },
        other => Err(wrong_type(key, "a positive integer", other)),
    }
}

/// `true`, `false` or `"root"`.
fn parse_blocking(key: &str, value: &Value) -> Result<Blocking, FilterError> {
    match value {
        Value::Bool(b) => Ok(Blocking::Is(*b)),
        Value::String(s) if s == "root" => Ok(Blocking::Root),
        Value::String(s) => Err(FilterError::UnknownValue {
            key: key.to_string(),
            what: "blocking",
            value: s.chars().take(100).collect(),
            expected: "true, false, \"root\"".into(),
            suggestion: suggest(s, &["root"]),
        }),
        other => Err(wrong_type(key, "true, false or \"root\"", other)),
    }
}

/// The columns of a quota's groups: one name or an array of them, each once.
fn parse_per(key: &str, value: &Value) -> Result<Vec<GroupField>, FilterError> {
    const EXPECTED: &str = "a column name or an array of column names";
    let names: Vec<(String, &str)> = match value {
        Value::String(s) => vec![(key.to_string(), s.as_str())],
        Value::Array(items) => array_strings(key, items, "a column name")?
            .into_iter()
            .enumerate()
            .map(|(i, s)| (format!("{key}[{i}]"), s))
            .collect(),
        other => return Err(wrong_type(key, EXPECTED, other)),
    };
    let known: Vec<&'static str> = GroupField::ALL.iter().map(|f| f.name()).collect();
    let mut fields = Vec::with_capacity(names.len());
    for (path, name) in names {
        let field = GroupField::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| FilterError::UnknownValue {
                key: path.clone(),
                what: "column",
                value: name.chars().take(100).collect(),
                expected: known.join(", "),
                suggestion: suggest(name, &known),
            })?;
        if fields.contains(&field) {
            return Err(FilterError::Repeated {
                key: path,
                value: name.to_string(),
            });
        }
        fields.push(field);
    }
    Ok(fields)
}

fn criteria_to_json(c: &Criteria) -> Map<String, Value> {
    let mut object = Map::new();
    for (field, m) in &c.text {
        let v = match m {
            TextMatch::Exact(s) => Value::String(s.clone()),
            TextMatch::OneOf(list) => list.iter().cloned().map(Value::String).collect(),
            TextMatch::Regex(r) => {
                let mut o = Map::new();
                o.insert("regex".into(), Value::String(r.as_str().to_string()));
                Value::Object(o)
            }
        };
        object.insert(field.key().into(), v);
    }
    let addr = |a: &AddrMatch| match a {
        AddrMatch::Local => Value::String("local".into()),
        AddrMatch::Net(net) => Value::String(net.to_string()),
    };
    match &c.client_addr {
        Some(AddrList::One(a)) => {
            object.insert("client_addr".into(), addr(a));
        }
        Some(AddrList::Many(list)) => {
            object.insert("client_addr".into(), list.iter().map(addr).collect());
        }
        None => {}
    }
    match &c.pid {
        Some(PidMatch::One(p)) => {
            object.insert("pid".into(), Value::Number((*p).into()));
        }
        Some(PidMatch::Many(list)) => {
            object.insert(
                "pid".into(),
                list.iter().map(|p| Value::Number((*p).into())).collect(),
            );
        }
        None => {}
    }
    for (field, micros) in &c.min_age {
        let v = if micros % 1_000 == 0 {
            Value::Number(Number::from(micros / 1_000))
        } else {
            Value::String(format!("{micros} microseconds"))
        };
        object.insert(field.key().into(), v);
    }
    match c.blocking {
        Some(Blocking::Is(b)) => {
            object.insert("blocking".into(), Value::Bool(b));
        }
        Some(Blocking::Root) => {
            object.insert("blocking".into(), Value::String("root".into()));
        }
        None => {}
    }
    if let Some(b) = c.blocked {
        object.insert("blocked".into(), Value::Bool(b));
    }
    if let Some(n) = c.min_blocked_sessions {
        object.insert("min_blocked_sessions".into(), Value::Number(n.into()));
    }
    if let Some((_, held)) = &c.holding_up {
        object.insert("holding_up".into(), Value::Object(criteria_to_json(held)));
    }
    if let Some(any) = &c.any {
        object.insert(
            "any".into(),
            any.iter()
                .map(|b| Value::Object(criteria_to_json(b)))
                .collect(),
        );
    }
    if let Some(exclude) = &c.exclude {
        object.insert("exclude".into(), Value::Object(criteria_to_json(exclude)));
    }
    if c.all {
        object.insert("all".into(), Value::Bool(true));
    }
    object
}

/// `serde_json::from_str`, except that an object repeating a key is an error instead of
/// silently keeping the last value.
fn parse_json_strict(text: &str) -> Result<Value, FilterError> {
    struct Strict(Value);

    impl<'de> Deserialize<'de> for Strict {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(StrictVisitor).map(Strict)
        }
    }

    struct StrictVisitor;

    impl<'de> Visitor<'de> for StrictVisitor {
        type Value = Value;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::Number(v.into()))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::Number(v.into()))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
            Number::from_f64(v)
                .map(Value::Number)
                .ok_or_else(|| E::custom("number out of range"))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_string()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut items = Vec::new();
            while let Some(Strict(v)) = seq.next_element()? {
                items.push(v);
            }
            Ok(Value::Array(items))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut object = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                if object.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
                }
                let Strict(v) = map.next_value()?;
                object.insert(key, v);
            }
            Ok(Value::Object(object))
        }
    }

    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Strict::deserialize(&mut de).and_then(|v| de.end().map(|()| v.0));
    parsed.map_err(|e| {
        let message = e.to_string();
        match message.strip_prefix("duplicate key ") {
            Some(rest) => FilterError::DuplicateKey {
                key: rest
                    .split(" at line")
                    .next()
                    .unwrap_or(rest)
                    .trim_matches('"')
                    .to_string(),
            },
            None => FilterError::InvalidJson(message),
        }
    })
}
