//! Event subscription filters (spec §5): basic filters (event types, subject prefix and
//! suffix) and the 19 advanced operators, with Azure's JSON shape.
//!
//! Choices where the spec is silent (each has a test):
//! - `includedEventTypes: []` means every type, like an absent list; any entry equal to
//!   `All` (ignoring case) does too.
//! - A key holding `null` fits only `IsNullOrUndefined` / `IsNotNull`; every other
//!   operator, negated ones included, treats it as a value of the wrong type: not matched.
//! - Without `enableAdvancedFilteringOnArrays`, an array value matches no operator at all,
//!   not even the negated or null-check ones. With it, every operator (null checks too)
//!   looks at the primitive elements: positive ones match if any element hits; negated
//!   ones need at least one element of a fitting type and no element that hits. So `[x]`
//!   behaves like `x`, and an empty array or one of objects matches nothing.
//! - A `data.` path that has to step through an array matches no operator (arrays of
//!   objects are unsupported); one that stops at a missing member or a scalar is missing.
//! - Unknown envelope keys (Event Grid `eventTime`, any other dotted key) are missing.
//!   The key `data` alone addresses the whole payload.
//! - Numbers that don't fit a decimal (e.g. `1e300`) are ignored when they occur in events
//!   and rejected by `validate` when they occur in filters.
//! - The value limit counts one per `value`, one per `values` entry (a range pair counts
//!   once) and none for the null checks. The 512 limit counts Unicode scalar values.
//! - Case folding uses each character's simple uppercase mapping, as .NET's
//!   `OrdinalIgnoreCase` does, so folding never changes a string's length in characters
//!   and prefix, suffix and substring tests stay consistent.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// Spec §5 limits, per subscription.
pub const MAX_ADVANCED_FILTERS: usize = 25;
/// Most values across all advanced filters of one subscription.
pub const MAX_ADVANCED_FILTER_VALUES: usize = 25;
/// Longest string value in an advanced filter, in characters.
pub const MAX_STRING_VALUE_CHARS: usize = 512;

/// Which envelope the stored event uses (decides envelope key names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeKind {
    /// The Event Grid schema: `eventType`, `subject`, `data`...
    EventGrid,
    /// CloudEvents 1.0: `type`, `subject`, `data`...
    CloudEvents,
}

/// A subscription's `filter` object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventFilter {
    /// Event types to deliver; absent, empty or `All` means every type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub included_event_types: Option<Vec<String>>,
    /// Only events whose subject starts with this prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_begins_with: Option<String>,
    /// Only events whose subject ends with this suffix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_ends_with: Option<String>,
    /// Whether the subject prefix and suffix compare case-sensitively (default no).
    #[serde(default)]
    pub is_subject_case_sensitive: bool,
    /// Whether advanced filters look inside array values (element by element).
    #[serde(default)]
    pub enable_advanced_filtering_on_arrays: bool,
    /// Advanced filters, all of which must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advanced_filters: Vec<AdvancedFilter>,
}

/// One advanced filter, tagged by `operatorType` exactly as Azure spells it. Number
/// values stay `serde_json::Number` so they serialize back as they came in.
/// String operators compare case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "operatorType")]
pub enum AdvancedFilter {
    /// Matches when the number at `key` is one of `values`.
    NumberIn {
        /// The event field to test: a top-level key or a dotted path such as `data.color`.
        key: String,
        /// The numbers to match.
        values: Vec<Number>,
    },
    /// Matches when the number at `key` is none of `values`.
    NumberNotIn {
        /// The event field to test: a top-level key or a dotted path such as `data.color`.
        key: String,
        /// The numbers to exclude.
        values: Vec<Number>,
    },
    /// Matches when the number at `key` is below `value`.
    NumberLessThan {
        /// The event field to test: a top-level key or a dotted path such as `data.color`.
        key: String,
        /// The bound (exclusive).
        value: Number,
    },
    /// Matches when the number at `key` is above `value`.
    NumberGreaterThan {
        /// The event field to test: a top-level key or a dotted path such as `data.color`.
        key: String,
        /// The bound (exclusive).
        value: Number,
    },
    /// Matches when the number at `key` is at most `value`.
    NumberLessThanOrEquals {
        /// The event field to test: a top-level key or a dotted path such as `data.color`.
        key: String,
        /// The bound (inclusive).
        value: Number,
    },
    /// Matches when the number at `key` is at least `value`.
    NumberGreaterThanOrEquals {
        /// The event field to test: a top-level key or a dotted path such as `data.color`.
        key: String,
        /// The bound (inclusive).
        value: Number,
    },
    /// Matches when the number at `key` lies in one of the ranges in `values`
    /// (inclusive `[lo, hi]` pairs).
    NumberInRange {
        /// The event field to test: a top-level key or a dotted path such as `data.color`.
        key: String,
        /// The `[lo, hi]` ranges, inclusive at both ends.
        values: Vec<[Number; 2]>,
    },
    /// Matches when the number at `key` lies in none of the ranges in `values`.
    NumberNotInRange {
        /// The event field to test: a top-level key or a dotted path such as `data.color`.
        key: String,
        /// The `[lo, hi]` ranges to exclude, inclusive at both ends.
        values: Vec<[Number; 2]>,
    },
    /// Matches when the boolean at `key` equals `value`.
    BoolEquals {
        /// The event field to test: a top-level key or a dotted path such as `data.color`.
        key: String,
        /// The boolean to match.
        value: bool,
    },
    /// Matches when the string at `key` equals one of `values` (case-insensitive).
    StringIn {
        /// The event field to test: a top-level key or a dotted path such as `data.color`.
        key: String,
        /// The strings to match.
        values: Vec<String>,
    },
    /// Matches when the string at `key` equals none of `values` (case-insensitive).
    StringNotIn {
        /// The event field to test: a top-level key or a dotted path such as `data.color`.
        key: String,
        /// The strings to exclude.
        values: Vec<String>,
    },
    /// Matches when the string at `key` begins with one of `values`.
    StringBeginsWith {
        /// The event field to test: a top-level key or a dotted path such as `data.color`.
        key: String,
        /// The prefixes to match.
        values: Vec<String>,
    },
    /// Matches when the string at `key` begins with none of `values`.
    StringNotBeginsWith {
        /// The event field to test: a top-level key or a dotted path such as `data.color`.
        key: String,
        /// The prefixes to exclude.
        values: Vec<String>,
    },
    /// Matches when the string at `key` ends with one of `values`.
    StringEndsWith {
        /// The event field to test: a top-level key or a dotted path such as `data.color`.
        key: String,
        /// The suffixes to match.
        values: Vec<String>,
    },
    /// Matches when the string at `key` ends with none of `values`.
    StringNotEndsWith {
        /// The event field to test: a top-level key or a dotted path such as `data.color`.
        key: String,
        /// The suffixes to exclude.
        values: Vec<String>,
    },
    /// Matches when the string at `key` contains one of `values`.
    StringContains {
        /// The event field to test: a top-level key or a dotted path such as `data.color`.
        key: String,
        /// The substrings to match.
        values: Vec<String>,
    },
    /// Matches when the string at `key` contains none of `values`.
    StringNotContains {
        /// The event field to test: a top-level key or a dotted path such as `data.color`.
        key: String,
        /// The substrings to exclude.
        values: Vec<String>,
    },
    /// Matches when `key` is absent or null.
    IsNullOrUndefined {
        /// The event field to test: a top-level key or a dotted path such as `data.color`.
        key: String,
    },
    /// Matches when `key` is present and not null.
    IsNotNull {
        /// The event field to test: a top-level key or a dotted path such as `data.color`.
        key: String,
    },
}

use AdvancedFilter as F;

impl EventFilter {
    /// Enforces the spec limits (≤25 advanced filters, ≤25 values in total across all filters,
    /// ≤512 chars per string value, non-empty key, InRange pairs with lo<=hi) -> Err(human message naming the problem).
    pub fn validate(&self) -> Result<(), String> {
        let count = self.advanced_filters.len();
        if count > MAX_ADVANCED_FILTERS {
            return Err(format!(
                "too many advanced filters: {count} (the limit is {MAX_ADVANCED_FILTERS})"
            ));
        }
        let values: usize = self
            .advanced_filters
            .iter()
            .map(AdvancedFilter::value_count)
            .sum();
        if values > MAX_ADVANCED_FILTER_VALUES {
            return Err(format!(
                "too many advanced filter values: {values} in total across all filters \
                 (the limit is {MAX_ADVANCED_FILTER_VALUES})"
            ));
        }
        for (i, filter) in self.advanced_filters.iter().enumerate() {
            filter
                .validate()
                .map_err(|e| format!("advancedFilters[{i}] ({}): {e}", filter.operator_type()))?;
        }
        Ok(())
    }

    /// True when `event` (the stored event JSON object, in the envelope `kind`) passes every filter.
    pub fn matches(&self, event: &Value, kind: EnvelopeKind) -> bool {
        self.matches_event_type(event, kind)
            && self.matches_subject(event, kind)
            && self.advanced_filters.iter().all(|f| {
                f.evaluate(
                    lookup(event, f.key(), kind),
                    self.enable_advanced_filtering_on_arrays,
                )
            })
    }

    fn matches_event_type(&self, event: &Value, kind: EnvelopeKind) -> bool {
        let types = match &self.included_event_types {
            Some(types) if !types.is_empty() => types,
            _ => return true,
        };
        let name = match kind {
            EnvelopeKind::EventGrid => "eventType",
            EnvelopeKind::CloudEvents => "type",
        };
        let actual = envelope_string(event, name, kind);
        types
            .iter()
            .any(|t| eq_fold(t, "All") || eq_fold(t, actual))
    }

    fn matches_subject(&self, event: &Value, kind: EnvelopeKind) -> bool {
        let subject = envelope_string(event, "subject", kind);
        let begins = self.subject_begins_with.as_deref().unwrap_or("");
        let ends = self.subject_ends_with.as_deref().unwrap_or("");
        if self.is_subject_case_sensitive {
            subject.starts_with(begins) && subject.ends_with(ends)
        } else {
            let subject = fold(subject);
            subject.starts_with(&fold(begins)) && subject.ends_with(&fold(ends))
        }
    }
}

impl AdvancedFilter {
    /// The filtered key, as written in the filter.
    pub fn key(&self) -> &str {
        match self {
            F::NumberIn { key, .. }
            | F::NumberNotIn { key, .. }
            | F::NumberLessThan { key, .. }
            | F::NumberGreaterThan { key, .. }
            | F::NumberLessThanOrEquals { key, .. }
            | F::NumberGreaterThanOrEquals { key, .. }
            | F::NumberInRange { key, .. }
            | F::NumberNotInRange { key, .. }
            | F::BoolEquals { key, .. }
            | F::StringIn { key, .. }
            | F::StringNotIn { key, .. }
            | F::StringBeginsWith { key, .. }
            | F::StringNotBeginsWith { key, .. }
            | F::StringEndsWith { key, .. }
            | F::StringNotEndsWith { key, .. }
            | F::StringContains { key, .. }
            | F::StringNotContains { key, .. }
            | F::IsNullOrUndefined { key }
            | F::IsNotNull { key } => key,
        }
    }

    /// Azure's `operatorType` name.
    pub fn operator_type(&self) -> &'static str {
        match self {
            F::NumberIn { .. } => "NumberIn",
            F::NumberNotIn { .. } => "NumberNotIn",
            F::NumberLessThan { .. } => "NumberLessThan",
            F::NumberGreaterThan { .. } => "NumberGreaterThan",
            F::NumberLessThanOrEquals { .. } => "NumberLessThanOrEquals",
            F::NumberGreaterThanOrEquals { .. } => "NumberGreaterThanOrEquals",
            F::NumberInRange { .. } => "NumberInRange",
            F::NumberNotInRange { .. } => "NumberNotInRange",
            F::BoolEquals { .. } => "BoolEquals",
            F::StringIn { .. } => "StringIn",
            F::StringNotIn { .. } => "StringNotIn",
            F::StringBeginsWith { .. } => "StringBeginsWith",
            F::StringNotBeginsWith { .. } => "StringNotBeginsWith",
            F::StringEndsWith { .. } => "StringEndsWith",
            F::StringNotEndsWith { .. } => "StringNotEndsWith",
            F::StringContains { .. } => "StringContains",
            F::StringNotContains { .. } => "StringNotContains",
            F::IsNullOrUndefined { .. } => "IsNullOrUndefined",
            F::IsNotNull { .. } => "IsNotNull",
        }
    }

    /// How many values this filter adds to the per-subscription total.
    pub fn value_count(&self) -> usize {
        match self {
            F::NumberIn { values, .. } | F::NumberNotIn { values, .. } => values.len(),
            F::NumberInRange { values, .. } | F::NumberNotInRange { values, .. } => values.len(),
            F::StringIn { values, .. }
            | F::StringNotIn { values, .. }
            | F::StringBeginsWith { values, .. }
            | F::StringNotBeginsWith { values, .. }
            | F::StringEndsWith { values, .. }
            | F::StringNotEndsWith { values, .. }
            | F::StringContains { values, .. }
            | F::StringNotContains { values, .. } => values.len(),
            F::NumberLessThan { .. }
            | F::NumberGreaterThan { .. }
            | F::NumberLessThanOrEquals { .. }
            | F::NumberGreaterThanOrEquals { .. }
            | F::BoolEquals { .. } => 1,
            F::IsNullOrUndefined { .. } | F::IsNotNull { .. } => 0,
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.key().trim().is_empty() {
            return Err("key must not be empty".into());
        }
        let numbers: Vec<&Number> = match self {
            F::NumberIn { values, .. } | F::NumberNotIn { values, .. } => values.iter().collect(),
            F::NumberLessThan { value, .. }
            | F::NumberGreaterThan { value, .. }
            | F::NumberLessThanOrEquals { value, .. }
            | F::NumberGreaterThanOrEquals { value, .. } => vec![value],
            F::NumberInRange { values, .. } | F::NumberNotInRange { values, .. } => {
                values.iter().flatten().collect()
            }
            _ => Vec::new(),
        };
        if let Some(bad) = numbers.iter().find(|n| decimal(n).is_none()) {
            return Err(format!("{bad} is not representable as a decimal number"));
        }
        if let F::NumberInRange { values, .. } | F::NumberNotInRange { values, .. } = self {
            for [lo, hi] in values {
                if decimal(lo) > decimal(hi) {
                    return Err(format!(
                        "range [{lo}, {hi}] has its lower bound above its upper bound"
                    ));
                }
            }
        }
        if let Some(strings) = self.strings() {
            for (i, s) in strings.iter().enumerate() {
                let len = s.chars().count();
                if len > MAX_STRING_VALUE_CHARS {
                    return Err(format!(
                        "value {i} is {len} characters long (the limit is {MAX_STRING_VALUE_CHARS})"
                    ));
                }
            }
        }
        Ok(())
    }

    fn strings(&self) -> Option<&[String]> {
        match self {
            F::StringIn { values, .. }
            | F::StringNotIn { values, .. }
            | F::StringBeginsWith { values, .. }
            | F::StringNotBeginsWith { values, .. }
            | F::StringEndsWith { values, .. }
            | F::StringNotEndsWith { values, .. }
            | F::StringContains { values, .. }
            | F::StringNotContains { values, .. } => Some(values),
            _ => None,
        }
    }

    /// Negated operators answer "none of the values" and are evaluated through `hit`, the
    /// answer of their positive counterpart.
    fn is_negated(&self) -> bool {
        matches!(
            self,
            F::NumberNotIn { .. }
                | F::NumberNotInRange { .. }
                | F::StringNotIn { .. }
                | F::StringNotBeginsWith { .. }
                | F::StringNotEndsWith { .. }
                | F::StringNotContains { .. }
        )
    }

    /// The spec's "key missing" column. `StringNot{Contains,BeginsWith,EndsWith}` are
    /// deliberately absent: Azure does not match them on a missing key.
    fn matches_missing(&self) -> bool {
        matches!(
            self,
            F::NumberNotIn { .. }
                | F::StringNotIn { .. }
                | F::NumberNotInRange { .. }
                | F::IsNullOrUndefined { .. }
        )
    }

    fn evaluate(&self, found: Lookup<'_>, arrays: bool) -> bool {
        let negated = self.is_negated();
        match found {
            Lookup::Missing => self.matches_missing(),
            Lookup::Unsupported => false,
            Lookup::Found(Value::Array(items)) => {
                if !arrays {
                    return false;
                }
                let mut hits = items
                    .iter()
                    .filter(|e| !e.is_array() && !e.is_object())
                    .filter_map(|e| self.hit(e));
                if negated {
                    // Vacuous truth would make `[]` or `["a"]` pass NumberNotIn, unlike a
                    // scalar of the wrong type; require one fitting element.
                    let mut fitted = false;
                    for hit in hits {
                        if hit {
                            return false;
                        }
                        fitted = true;
                    }
                    fitted
                } else {
                    hits.any(|hit| hit)
                }
            }
            Lookup::Found(value) => self.hit(value).is_some_and(|hit| hit != negated),
        }
    }

    /// The positive form's answer for one value, or None when the value's type does not
    /// fit the operator (such values are ignored).
    fn hit(&self, value: &Value) -> Option<bool> {
        match self {
            F::NumberIn { values, .. } | F::NumberNotIn { values, .. } => {
                let x = value_decimal(value)?;
                Some(values.iter().any(|n| decimal(n) == Some(x)))
            }
            F::NumberLessThan { value: v, .. } => compare(value, v, Ordering::is_lt),
            F::NumberGreaterThan { value: v, .. } => compare(value, v, Ordering::is_gt),
            F::NumberLessThanOrEquals { value: v, .. } => compare(value, v, Ordering::is_le),
            F::NumberGreaterThanOrEquals { value: v, .. } => compare(value, v, Ordering::is_ge),
            F::NumberInRange { values, .. } | F::NumberNotInRange { values, .. } => {
                let x = value_decimal(value)?;
                Some(values.iter().any(|[lo, hi]| {
                    matches!((decimal(lo), decimal(hi)), (Some(lo), Some(hi)) if lo <= x && x <= hi)
                }))
            }
            F::BoolEquals { value: v, .. } => value.as_bool().map(|b| b == *v),
            F::StringIn { values, .. } | F::StringNotIn { values, .. } => {
                let text = text(value)?;
                Some(values.iter().any(|s| eq_fold(&text, s)))
            }
            F::StringBeginsWith { values, .. } | F::StringNotBeginsWith { values, .. } => {
                let text = fold(&text(value)?);
                Some(values.iter().any(|s| text.starts_with(&fold(s))))
            }
            F::StringEndsWith { values, .. } | F::StringNotEndsWith { values, .. } => {
                let text = fold(&text(value)?);
                Some(values.iter().any(|s| text.ends_with(&fold(s))))
            }
            F::StringContains { values, .. } | F::StringNotContains { values, .. } => {
                let text = fold(&text(value)?);
                Some(values.iter().any(|s| text.contains(&fold(s))))
            }
            F::IsNullOrUndefined { .. } => Some(value.is_null()),
            F::IsNotNull { .. } => Some(!value.is_null()),
        }
    }
}

/// What a filter key addresses in an event.
#[derive(Debug, Clone, Copy)]
enum Lookup<'a> {
    Missing,
    Found(&'a Value),
    /// The path runs through an array: arrays of objects are never supported.
    Unsupported,
}

const EVENT_GRID_KEYS: [&str; 5] = ["id", "topic", "subject", "eventType", "dataVersion"];

fn lookup<'a>(event: &'a Value, key: &str, kind: EnvelopeKind) -> Lookup<'a> {
    let Some(event) = event.as_object() else {
        return Lookup::Missing;
    };
    let (head, path) = match key.split_once('.') {
        Some((head, path)) => (head, Some(path)),
        None => (key, None),
    };
    if eq_fold(head, "data") {
        let Some(mut current) = member(event, "data") else {
            return Lookup::Missing;
        };
        for segment in path.into_iter().flat_map(|p| p.split('.')) {
            current = match current {
                Value::Object(map) => match member(map, segment) {
                    Some(next) => next,
                    None => return Lookup::Missing,
                },
                Value::Array(_) => return Lookup::Unsupported,
                _ => return Lookup::Missing,
            };
        }
        return Lookup::Found(current);
    }
    if path.is_some() {
        return Lookup::Missing;
    }
    let found = match kind {
        EnvelopeKind::EventGrid => EVENT_GRID_KEYS
            .iter()
            .find(|name| eq_fold(name, head))
            .and_then(|name| member(event, name)),
        // `data_base64` is a JSON member, not a CloudEvents attribute.
        EnvelopeKind::CloudEvents if eq_fold(head, "data_base64") => None,
        EnvelopeKind::CloudEvents => member(event, head),
    };
    found.map_or(Lookup::Missing, Lookup::Found)
}

/// Exact name first, then any case-insensitive match.
fn member<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name)
        .or_else(|| map.iter().find(|(k, _)| eq_fold(k, name)).map(|(_, v)| v))
}

/// An envelope string for the basic filters; absent or non-string reads as "".
fn envelope_string<'a>(event: &'a Value, name: &str, kind: EnvelopeKind) -> &'a str {
    match lookup(event, name, kind) {
        Lookup::Found(Value::String(s)) => s,
        _ => "",
    }
}

/// Decimal value of a JSON number; None when it doesn't fit a decimal (compared as
/// decimals, like Azure's .NET `decimal`, never as f64).
fn decimal(n: &Number) -> Option<Decimal> {
    Decimal::from_str(&n.to_string()).ok()
}

fn value_decimal(value: &Value) -> Option<Decimal> {
    match value {
        Value::Number(n) => decimal(n),
        _ => None,
    }
}

fn compare(value: &Value, filter: &Number, wanted: fn(Ordering) -> bool) -> Option<bool> {
    let x = value_decimal(value)?;
    Some(decimal(filter).is_some_and(|v| wanted(x.cmp(&v))))
}

/// What string operators compare: strings, and numbers and booleans as their JSON text.
fn text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

fn fold_char(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_uppercase();
    }
    // Only one-to-one mappings: an expanding one (ß -> SS) would break character counts.
    let mut upper = c.to_uppercase();
    match (upper.next(), upper.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

fn fold(s: &str) -> String {
    s.chars().map(fold_char).collect()
}

fn eq_fold(a: &str, b: &str) -> bool {
    a.chars().map(fold_char).eq(b.chars().map(fold_char))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    use EnvelopeKind::{CloudEvents, EventGrid};

    fn filter(json: Value) -> AdvancedFilter {
        serde_json::from_value(json).expect("valid advanced filter")
    }

    fn with(filters: Vec<AdvancedFilter>, arrays: bool) -> EventFilter {
        EventFilter {
            enable_advanced_filtering_on_arrays: arrays,
            advanced_filters: filters,
            ..EventFilter::default()
        }
    }

    fn eg_event(data: Value) -> Value {
        json!({
            "id": "1807", "topic": "/subscriptions/x/topics/t", "subject": "myapp/vehicles/Motorcycles",
            "eventType": "recordInserted", "eventTime": "2017-08-10T21:03:07+00:00",
            "data": data, "dataVersion": "1.0", "metadataVersion": "1"
        })
    }

    fn ce_event(data: Value) -> Value {
        json!({
            "specversion": "1.0", "id": "A234", "source": "/mycontext", "type": "com.example.someevent",
            "subject": "blobs/a.jpg", "time": "2018-04-05T17:31:00Z", "datacontenttype": "application/json",
            "dataschema": "https://example.com/schema", "comexampleextension1": "Value", "myint": 5,
            "data": data
        })
    }

    /// Evaluates one filter against `data.v` = `value` (`None` = key absent).
    fn on_value(f: &Value, value: Option<Value>, arrays: bool) -> bool {
        let data = match value {
            Some(v) => json!({ "v": v }),
            None => json!({ "other": 1 }),
        };
        with(vec![filter(f.clone())], arrays).matches(&eg_event(data), EventGrid)
    }

    fn op(name: &str, values: Value) -> Value {
        let mut f = json!({ "operatorType": name, "key": "data.v" });
        match name {
            "IsNullOrUndefined" | "IsNotNull" => {}
            "NumberLessThan"
            | "NumberGreaterThan"
            | "NumberLessThanOrEquals"
            | "NumberGreaterThanOrEquals"
            | "BoolEquals" => f["value"] = values,
            _ => f["values"] = values,
        }
        f
    }

    const ALL_OPS: [(&str, bool); 19] = [
        ("NumberIn", false),
        ("NumberNotIn", true),
        ("NumberLessThan", false),
        ("NumberGreaterThan", false),
        ("NumberLessThanOrEquals", false),
        ("NumberGreaterThanOrEquals", false),
        ("NumberInRange", false),
        ("NumberNotInRange", true),
        ("BoolEquals", false),
        ("StringIn", false),
        ("StringNotIn", true),
        ("StringBeginsWith", false),
        ("StringNotBeginsWith", false),
        ("StringEndsWith", false),
        ("StringNotEndsWith", false),
        ("StringContains", false),
        ("StringNotContains", false),
        ("IsNullOrUndefined", true),
        ("IsNotNull", false),
    ];

    fn sample_values(name: &str) -> Value {
        match name {
            "NumberLessThan"
            | "NumberGreaterThan"
            | "NumberLessThanOrEquals"
            | "NumberGreaterThanOrEquals" => json!(5),
            "NumberInRange" | "NumberNotInRange" => json!([[1, 10]]),
            "NumberIn" | "NumberNotIn" => json!([1, 2]),
            "BoolEquals" => json!(true),
            _ => json!(["abc"]),
        }
    }

    // ---- missing keys and the NotIn / NotContains asymmetry ----

    #[test]
    fn missing_key_table() {
        for (name, expected) in ALL_OPS {
            let f = op(name, sample_values(name));
            assert_eq!(
                on_value(&f, None, false),
                expected,
                "{name} on a missing key"
            );
            assert_eq!(
                on_value(&f, None, true),
                expected,
                "{name} on a missing key, arrays on"
            );
        }
    }

    #[test]
    fn missing_key_asymmetry_between_not_in_and_not_contains() {
        let event = eg_event(json!({}));
        let passes = |f: Value| with(vec![filter(f)], false).matches(&event, EventGrid);
        assert!(passes(
            json!({"operatorType": "StringNotIn", "key": "data.color", "values": ["red"]})
        ));
        assert!(passes(
            json!({"operatorType": "NumberNotIn", "key": "data.n", "values": [1]})
        ));
        assert!(!passes(
            json!({"operatorType": "StringNotContains", "key": "data.color", "values": ["red"]})
        ));
        assert!(!passes(
            json!({"operatorType": "StringNotBeginsWith", "key": "data.color", "values": ["r"]})
        ));
        assert!(!passes(
            json!({"operatorType": "StringNotEndsWith", "key": "data.color", "values": ["d"]})
        ));
    }

    #[test]
    fn missing_data_and_paths_through_scalars_are_missing() {
        let no_data = json!({"id": "1", "eventType": "t", "subject": "s"});
        let is_null = with(vec![filter(op("IsNullOrUndefined", Value::Null))], false);
        assert!(is_null.matches(&no_data, EventGrid));
        assert!(!is_null.matches(&eg_event(json!({"v": 5})), EventGrid));
        let deep = with(
            vec![filter(
                json!({"operatorType": "IsNullOrUndefined", "key": "data.v.w"}),
            )],
            false,
        );
        assert!(deep.matches(&eg_event(json!({"v": 5})), EventGrid));
        assert!(deep.matches(&eg_event(json!({"v": null})), EventGrid));
        assert!(deep.matches(&eg_event(json!("plain string payload")), EventGrid));
        // Not an object at all: everything is missing, nothing panics.
        assert!(deep.matches(&json!([1, 2]), EventGrid));
        assert!(
            !with(vec![filter(op("IsNotNull", Value::Null))], true)
                .matches(&json!(null), CloudEvents)
        );
    }

    #[test]
    fn null_values_fit_only_the_null_checks() {
        for (name, _) in ALL_OPS {
            let f = op(name, sample_values(name));
            let expected = name == "IsNullOrUndefined";
            assert_eq!(
                on_value(&f, Some(Value::Null), false),
                expected,
                "{name} on null"
            );
        }
    }

    // ---- arrays ----

    #[test]
    fn arrays_never_match_when_array_filtering_is_off() {
        let array = json!([1, "abc", true, null]);
        for (name, _) in ALL_OPS {
            let f = op(name, sample_values(name));
            assert!(
                !on_value(&f, Some(array.clone()), false),
                "{name} on an array, arrays off"
            );
        }
        // The same filters do see the elements once the flag is on.
        assert!(on_value(
            &op("NumberIn", json!([1])),
            Some(array.clone()),
            true
        ));
        assert!(on_value(
            &op("StringIn", json!(["ABC"])),
            Some(array.clone()),
            true
        ));
        assert!(on_value(
            &op("IsNullOrUndefined", Value::Null),
            Some(array.clone()),
            true
        ));
    }

    #[test]
    fn arrays_positive_any_negated_none() {
        let arr = Some(json!(["red", "Green", 7]));
        assert!(on_value(
            &op("StringIn", json!(["green"])),
            arr.clone(),
            true
        ));
        assert!(!on_value(
            &op("StringIn", json!(["blue"])),
            arr.clone(),
            true
        ));
        assert!(!on_value(
            &op("StringNotIn", json!(["green"])),
            arr.clone(),
            true
        ));
        assert!(on_value(
            &op("StringNotIn", json!(["blue"])),
            arr.clone(),
            true
        ));
        assert!(!on_value(
            &op("StringNotContains", json!(["ee"])),
            arr.clone(),
            true
        ));
        assert!(on_value(
            &op("StringNotContains", json!(["x"])),
            arr.clone(),
            true
        ));
        assert!(!on_value(
            &op("StringNotBeginsWith", json!(["R"])),
            arr.clone(),
            true
        ));
        assert!(!on_value(
            &op("StringNotEndsWith", json!(["N"])),
            arr.clone(),
            true
        ));
        // Number operators ignore the strings and see only 7.
        assert!(on_value(&op("NumberIn", json!([7])), arr.clone(), true));
        assert!(!on_value(&op("NumberNotIn", json!([7])), arr.clone(), true));
        assert!(on_value(&op("NumberNotIn", json!([8])), arr.clone(), true));
        assert!(!on_value(
            &op("NumberNotInRange", json!([[0, 10]])),
            arr.clone(),
            true
        ));
        assert!(on_value(
            &op("NumberGreaterThan", json!(6)),
            arr.clone(),
            true
        ));
        assert!(on_value(&op("NumberInRange", json!([[7, 7]])), arr, true));
        // One element is enough for a positive operator; all must stay clear for a negated one.
        let nums = Some(json!([1, 20]));
        assert!(on_value(
            &op("NumberLessThan", json!(5)),
            nums.clone(),
            true
        ));
        assert!(on_value(
            &op("NumberGreaterThan", json!(5)),
            nums.clone(),
            true
        ));
        assert!(!on_value(
            &op("NumberNotInRange", json!([[0, 5]])),
            nums.clone(),
            true
        ));
        assert!(on_value(
            &op("NumberNotInRange", json!([[2, 5]])),
            nums,
            true
        ));
        assert!(on_value(
            &op("BoolEquals", json!(false)),
            Some(json!([true, false])),
            true
        ));
    }

    #[test]
    fn arrays_without_a_fitting_element_match_nothing() {
        for arr in [json!([]), json!([{"a": 1}, {"b": 2}]), json!([[1], [2]])] {
            for (name, _) in ALL_OPS {
                let f = op(name, sample_values(name));
                assert!(!on_value(&f, Some(arr.clone()), true), "{name} on {arr}");
            }
        }
        // Strings are the wrong type for NumberNotIn: ignored, leaving nothing to test.
        assert!(!on_value(
            &op("NumberNotIn", json!([1])),
            Some(json!(["a", "b"])),
            true
        ));
        // Objects mixed with primitives are ignored; the primitives still count.
        assert!(on_value(
            &op("StringIn", json!(["x"])),
            Some(json!([{"v": "x"}, "X"])),
            true
        ));
    }

    #[test]
    fn paths_through_arrays_are_unsupported() {
        let data = json!({"items": [{"name": "a"}, {"name": "b"}]});
        for (name, _) in ALL_OPS {
            let mut f = op(name, sample_values(name));
            f["key"] = json!("data.items.name");
            for arrays in [false, true] {
                assert!(
                    !with(vec![filter(f.clone())], arrays)
                        .matches(&eg_event(data.clone()), EventGrid),
                    "{name} through an array"
                );
            }
        }
    }

    #[test]
    fn null_checks_on_arrays_look_at_elements() {
        assert!(on_value(
            &op("IsNotNull", Value::Null),
            Some(json!([null, 1])),
            true
        ));
        assert!(!on_value(
            &op("IsNotNull", Value::Null),
            Some(json!([null])),
            true
        ));
        assert!(!on_value(
            &op("IsNullOrUndefined", Value::Null),
            Some(json!([1])),
            true
        ));
        // A scalar object is present and not null.
        assert!(on_value(
            &op("IsNotNull", Value::Null),
            Some(json!({"a": 1})),
            false
        ));
        assert!(!on_value(
            &op("IsNullOrUndefined", Value::Null),
            Some(json!({"a": 1})),
            false
        ));
        assert!(!on_value(
            &op("StringIn", json!(["{}"])),
            Some(json!({})),
            false
        ));
    }

    // ---- case-insensitivity ----

    #[test]
    fn string_values_ignore_case() {
        let v = Some(json!("Hello World"));
        assert!(on_value(
            &op("StringIn", json!(["hello WORLD"])),
            v.clone(),
            false
        ));
        assert!(on_value(
            &op("StringBeginsWith", json!(["HELLO"])),
            v.clone(),
            false
        ));
        assert!(on_value(
            &op("StringEndsWith", json!(["world"])),
            v.clone(),
            false
        ));
        assert!(on_value(
            &op("StringContains", json!(["O W"])),
            v.clone(),
            false
        ));
        assert!(!on_value(
            &op("StringNotIn", json!(["HELLO world"])),
            v.clone(),
            false
        ));
        assert!(!on_value(
            &op("StringNotContains", json!(["LO"])),
            v.clone(),
            false
        ));
        // Non-ASCII letters fold too, and final sigma folds like any other sigma.
        assert!(on_value(
            &op("StringIn", json!(["ÄPFEL"])),
            Some(json!("äpfel")),
            false
        ));
        assert!(on_value(
            &op("StringContains", json!(["Σ"])),
            Some(json!("ΟΔΟΣ")),
            false
        ));
        assert!(on_value(
            &op("StringEndsWith", json!(["σ"])),
            Some(json!("οδος")),
            false
        ));
        assert!(on_value(
            &op("StringIn", json!(["οδοσ"])),
            Some(json!("ΟΔΟς")),
            false
        ));
    }

    #[test]
    fn event_grid_envelope_keys_ignore_case() {
        let event = eg_event(json!({}));
        let check = |key: &str, values: Value| {
            with(
                vec![filter(
                    json!({"operatorType": "StringIn", "key": key, "values": values}),
                )],
                false,
            )
            .matches(&event, EventGrid)
        };
        assert!(check("EventType", json!(["RECORDINSERTED"])));
        assert!(check("eventtype", json!(["recordInserted"])));
        assert!(check("Subject", json!(["MYAPP/vehicles/motorcycles"])));
        assert!(check("ID", json!(["1807"])));
        assert!(check("Topic", json!(["/subscriptions/x/topics/t"])));
        assert!(check("DataVersion", json!(["1.0"])));
        // Not filterable in the Event Grid schema: missing, so StringIn fails.
        assert!(!check("eventTime", json!(["2017-08-10T21:03:07+00:00"])));
        assert!(!check("metadataVersion", json!(["1"])));
        assert!(!check("type", json!(["recordInserted"])));
    }

    #[test]
    fn cloud_events_keys() {
        let event = ce_event(json!({"Key1": "x"}));
        let check = |key: &str, values: Value| {
            with(
                vec![filter(
                    json!({"operatorType": "StringIn", "key": key, "values": values}),
                )],
                false,
            )
            .matches(&event, CloudEvents)
        };
        assert!(check("type", json!(["com.example.SomeEvent"])));
        assert!(check("Source", json!(["/mycontext"])));
        assert!(check("specversion", json!(["1.0"])));
        assert!(check("id", json!(["a234"])));
        assert!(check("subject", json!(["blobs/a.jpg"])));
        assert!(check("time", json!(["2018-04-05T17:31:00Z"])));
        assert!(check("datacontenttype", json!(["application/json"])));
        assert!(check("dataschema", json!(["https://example.com/schema"])));
        assert!(check("comexampleextension1", json!(["value"])));
        assert!(check("Data.key1", json!(["X"])));
        assert!(!check("eventType", json!(["com.example.someevent"])));
        // The spec's CloudEvents example: a numeric extension under a string operator.
        let ext = with(
            vec![filter(
                json!({"operatorType": "StringBeginsWith", "key": "myint", "values": ["5", "1"]}),
            )],
            false,
        );
        assert!(ext.matches(&event, CloudEvents));
        let with_b64 = json!({"id": "1", "type": "t", "data_base64": "AAAA"});
        let f = with(
            vec![filter(
                json!({"operatorType": "IsNotNull", "key": "data_base64"}),
            )],
            false,
        );
        assert!(!f.matches(&with_b64, CloudEvents));
    }

    #[test]
    fn data_paths_prefer_exact_case_then_fall_back() {
        let event = eg_event(json!({"color": "exact", "COLOR": "upper", "Nested": {"Deep": 3}}));
        let check = |key: &str, values: Value| {
            with(
                vec![filter(
                    json!({"operatorType": "StringIn", "key": key, "values": values}),
                )],
                false,
            )
            .matches(&event, EventGrid)
        };
        assert!(check("data.color", json!(["exact"])));
        assert!(check("data.COLOR", json!(["upper"])));
        assert!(check("DATA.nested.deep", json!(["3"])));
        let whole = with(
            vec![filter(json!({"operatorType": "IsNotNull", "key": "data"}))],
            false,
        );
        assert!(whole.matches(&event, EventGrid));
        assert!(!whole.matches(&eg_event(Value::Null), EventGrid));
    }

    // ---- types and numbers ----

    #[test]
    fn numbers_given_as_strings_are_not_coerced() {
        let v = Some(json!("5"));
        assert!(!on_value(&op("NumberIn", json!([5])), v.clone(), false));
        assert!(!on_value(&op("NumberNotIn", json!([1])), v.clone(), false));
        assert!(!on_value(
            &op("NumberGreaterThan", json!(1)),
            v.clone(),
            false
        ));
        assert!(!on_value(
            &op("NumberInRange", json!([[0, 10]])),
            v.clone(),
            false
        ));
        assert!(!on_value(
            &op("NumberNotInRange", json!([[6, 10]])),
            v,
            false
        ));
        // String operators do read numbers and booleans as their JSON text.
        assert!(on_value(
            &op("StringIn", json!(["5"])),
            Some(json!(5)),
            false
        ));
        assert!(on_value(
            &op("StringBeginsWith", json!(["1."])),
            Some(json!(1.5)),
            false
        ));
        assert!(on_value(
            &op("StringIn", json!(["TRUE"])),
            Some(json!(true)),
            false
        ));
        // BoolEquals only on real booleans.
        assert!(!on_value(
            &op("BoolEquals", json!(true)),
            Some(json!("true")),
            false
        ));
        assert!(!on_value(
            &op("BoolEquals", json!(true)),
            Some(json!(1)),
            false
        ));
        assert!(on_value(
            &op("BoolEquals", json!(false)),
            Some(json!(false)),
            false
        ));
    }

    #[test]
    fn numbers_compare_as_decimals() {
        let parse = |s: &str| -> Value { serde_json::from_str(s).expect("json") };
        assert!(on_value(
            &op("NumberIn", parse("[0.3]")),
            Some(parse("0.3")),
            false
        ));
        // What 0.1 + 0.2 gives in f64 is not 0.3.
        assert!(!on_value(
            &op("NumberIn", parse("[0.3]")),
            Some(json!(0.1 + 0.2)),
            false
        ));
        assert!(on_value(
            &op("NumberGreaterThan", parse("0.3")),
            Some(json!(0.1 + 0.2)),
            false
        ));
        assert!(on_value(
            &op("NumberIn", parse("[1.0]")),
            Some(parse("1")),
            false
        ));
        assert!(on_value(
            &op("NumberIn", parse("[-0.0]")),
            Some(parse("0")),
            false
        ));
        // Beyond f64's 2^53 these differ; f64 would call them equal.
        let big = Some(parse("9007199254740993"));
        assert!(!on_value(
            &op("NumberIn", parse("[9007199254740992]")),
            big.clone(),
            false
        ));
        assert!(on_value(
            &op("NumberGreaterThan", parse("9007199254740992")),
            big,
            false
        ));
        assert!(on_value(
            &op("NumberLessThan", parse("1e3")),
            Some(parse("999.5")),
            false
        ));
        // Not a decimal: ignored rather than compared approximately.
        assert!(!on_value(
            &op("NumberGreaterThan", parse("1")),
            Some(parse("1e300")),
            false
        ));
        assert!(!on_value(
            &op("NumberNotIn", parse("[1]")),
            Some(parse("1e300")),
            false
        ));
    }

    #[test]
    fn comparison_operators_and_inclusive_ranges() {
        let at = |name: &str, v: Value, x: i64| on_value(&op(name, v), Some(json!(x)), false);
        assert!(at("NumberLessThan", json!(5), 4) && !at("NumberLessThan", json!(5), 5));
        assert!(
            at("NumberLessThanOrEquals", json!(5), 5) && !at("NumberLessThanOrEquals", json!(5), 6)
        );
        assert!(at("NumberGreaterThan", json!(5), 6) && !at("NumberGreaterThan", json!(5), 5));
        assert!(
            at("NumberGreaterThanOrEquals", json!(5), 5)
                && !at("NumberGreaterThanOrEquals", json!(5), 4)
        );
        let ranges = json!([[1, 3], [10, 10]]);
        for (x, inside) in [
            (0, false),
            (1, true),
            (3, true),
            (4, false),
            (10, true),
            (11, false),
        ] {
            assert_eq!(
                at("NumberInRange", ranges.clone(), x),
                inside,
                "InRange {x}"
            );
            assert_eq!(
                at("NumberNotInRange", ranges.clone(), x),
                !inside,
                "NotInRange {x}"
            );
        }
        assert!(on_value(
            &op("NumberInRange", json!([[0.5, 1.5]])),
            Some(json!(1.5)),
            false
        ));
        assert!(at("NumberIn", json!([1, 2]), 2) && !at("NumberIn", json!([1, 2]), 3));
        assert!(at("NumberNotIn", json!([1, 2]), 3) && !at("NumberNotIn", json!([1, 2]), 1));
    }

    #[test]
    fn filters_and_values_combine_with_and_and_or() {
        let event = eg_event(json!({"n": 7, "color": "blue"}));
        let mk = |fs: Vec<Value>| with(fs.into_iter().map(filter).collect(), false);
        let ge5 = json!({"operatorType": "NumberGreaterThanOrEquals", "key": "data.n", "value": 5});
        let le6 = json!({"operatorType": "NumberLessThanOrEquals", "key": "data.n", "value": 6});
        let colors =
            json!({"operatorType": "StringIn", "key": "data.color", "values": ["red", "blue"]});
        assert!(mk(vec![ge5.clone(), colors.clone()]).matches(&event, EventGrid));
        assert!(!mk(vec![ge5, le6, colors]).matches(&event, EventGrid));
        assert!(mk(vec![]).matches(&event, EventGrid));
    }

    // ---- basic filters ----

    #[test]
    fn included_event_types() {
        let event = eg_event(json!({}));
        let types = |t: Option<Vec<&str>>| EventFilter {
            included_event_types: t.map(|v| v.into_iter().map(String::from).collect()),
            ..EventFilter::default()
        };
        assert!(types(None).matches(&event, EventGrid));
        assert!(types(Some(vec![])).matches(&event, EventGrid));
        assert!(types(Some(vec!["All"])).matches(&event, EventGrid));
        assert!(types(Some(vec!["all"])).matches(&event, EventGrid));
        assert!(types(Some(vec!["RecordInserted"])).matches(&event, EventGrid));
        assert!(types(Some(vec!["other", "recordinserted"])).matches(&event, EventGrid));
        assert!(!types(Some(vec!["recordDeleted"])).matches(&event, EventGrid));
        // CloudEvents carry the type in `type`.
        let ce = ce_event(json!({}));
        assert!(types(Some(vec!["COM.example.someevent"])).matches(&ce, CloudEvents));
        assert!(!types(Some(vec!["recordInserted"])).matches(&ce, CloudEvents));
        assert!(!types(Some(vec!["com.example.someevent"])).matches(&ce, EventGrid));
    }

    #[test]
    fn subject_prefix_and_suffix() {
        let event = eg_event(json!({}));
        let subject = |b: Option<&str>, e: Option<&str>, cs: bool| EventFilter {
            subject_begins_with: b.map(String::from),
            subject_ends_with: e.map(String::from),
            is_subject_case_sensitive: cs,
            ..EventFilter::default()
        };
        // Subject is "myapp/vehicles/Motorcycles".
        assert!(subject(Some("myapp/"), Some("cycles"), false).matches(&event, EventGrid));
        assert!(subject(Some("MYAPP/"), Some("MOTORCYCLES"), false).matches(&event, EventGrid));
        assert!(!subject(Some("MYAPP/"), None, true).matches(&event, EventGrid));
        assert!(!subject(None, Some("motorcycles"), true).matches(&event, EventGrid));
        assert!(subject(Some("myapp/"), Some("Motorcycles"), true).matches(&event, EventGrid));
        assert!(subject(Some(""), Some(""), true).matches(&event, EventGrid));
        // Literal, no wildcards.
        assert!(!subject(Some("myapp/*"), None, false).matches(&event, EventGrid));
        assert!(!subject(Some("vehicles"), None, false).matches(&event, EventGrid));
        // A missing subject reads as "".
        let no_subject = json!({"id": "1", "eventType": "t"});
        assert!(subject(Some(""), None, false).matches(&no_subject, EventGrid));
        assert!(!subject(Some("a"), None, false).matches(&no_subject, EventGrid));
        assert!(subject(None, Some(".jpg"), false).matches(&ce_event(json!({})), CloudEvents));
    }

    // ---- limits ----

    fn string_in(n: usize) -> AdvancedFilter {
        F::StringIn {
            key: "data.k".into(),
            values: (0..n).map(|i| i.to_string()).collect(),
        }
    }

    #[test]
    fn filter_count_limit() {
        let is_null = |i: usize| F::IsNullOrUndefined {
            key: format!("data.k{i}"),
        };
        assert_eq!(
            with((0..25).map(is_null).collect(), false).validate(),
            Ok(())
        );
        let err = with((0..26).map(is_null).collect(), false)
            .validate()
            .unwrap_err();
        assert!(err.contains("too many advanced filters: 26"), "{err}");
    }

    #[test]
    fn total_value_limit() {
        assert_eq!(
            with(vec![string_in(20), string_in(5)], false).validate(),
            Ok(())
        );
        let err = with(vec![string_in(20), string_in(6)], false)
            .validate()
            .unwrap_err();
        assert!(err.contains("26 in total"), "{err}");
        let single = |i: i64| F::NumberLessThan {
            key: "data.n".into(),
            value: i.into(),
        };
        let mut filters: Vec<AdvancedFilter> = (0..24).map(single).collect();
        filters.push(string_in(1));
        assert_eq!(with(filters.clone(), false).validate(), Ok(()));
        filters.push(F::IsNotNull {
            key: "data.x".into(),
        });
        assert_eq!(
            with(filters.clone(), false).validate(),
            Err("too many advanced filters: 26 (the limit is 25)".into())
        );
        filters.truncate(24);
        filters.push(F::NumberInRange {
            key: "data.n".into(),
            values: vec![[1.into(), 2.into()]; 2],
        });
        assert!(
            with(filters, false)
                .validate()
                .unwrap_err()
                .contains("26 in total")
        );
    }

    #[test]
    fn string_length_limit() {
        let long = |n: usize| F::StringContains {
            key: "data.k".into(),
            values: vec!["ok".into(), "é".repeat(n)],
        };
        assert_eq!(with(vec![long(512)], false).validate(), Ok(()));
        assert_eq!(
            with(vec![long(513)], false).validate(),
            Err("advancedFilters[0] (StringContains): value 1 is 513 characters long (the limit is 512)".into())
        );
    }

    #[test]
    fn keys_ranges_and_numbers_are_checked() {
        let err = with(vec![F::IsNotNull { key: " ".into() }], false)
            .validate()
            .unwrap_err();
        assert_eq!(err, "advancedFilters[0] (IsNotNull): key must not be empty");
        let range = |lo: i64, hi: i64| F::NumberNotInRange {
            key: "data.n".into(),
            values: vec![[lo.into(), hi.into()]],
        };
        assert_eq!(with(vec![range(3, 3)], false).validate(), Ok(()));
        let err = with(vec![range(0, 1), range(5, 4)], false)
            .validate()
            .unwrap_err();
        assert!(
            err.starts_with("advancedFilters[1] (NumberNotInRange): range [5, 4]"),
            "{err}"
        );
        let huge: AdvancedFilter =
            filter(json!({"operatorType": "NumberLessThan", "key": "data.n", "value": 1e300}));
        let err = with(vec![huge], false).validate().unwrap_err();
        assert!(err.contains("not representable as a decimal"), "{err}");
        assert_eq!(EventFilter::default().validate(), Ok(()));
    }

    // ---- serde ----

    #[test]
    fn spec_example_round_trips() {
        let text = r#"{
          "includedEventTypes": ["Microsoft.KeyVault.SecretNearExpiry"],
          "subjectBeginsWith": "/blobServices/default/containers/mycontainer/",
          "subjectEndsWith": ".jpg",
          "isSubjectCaseSensitive": false,
          "enableAdvancedFilteringOnArrays": true,
          "advancedFilters": [
            {"operatorType": "NumberGreaterThanOrEquals", "key": "data.counter", "value": 5},
            {"operatorType": "StringContains", "key": "subject", "values": ["container1", "container2"]}
          ]
        }"#;
        let original: Value = serde_json::from_str(text).expect("json");
        let parsed: EventFilter = serde_json::from_str(text).expect("filter");
        assert_eq!(
            parsed.advanced_filters[0],
            F::NumberGreaterThanOrEquals {
                key: "data.counter".into(),
                value: 5.into()
            }
        );
        assert!(parsed.enable_advanced_filtering_on_arrays);
        assert_eq!(serde_json::to_value(&parsed).expect("serialize"), original);
        assert_eq!(parsed.validate(), Ok(()));
    }

    #[test]
    fn every_operator_round_trips() {
        let all = json!([
            {"operatorType": "NumberIn", "key": "data.a", "values": [2.5, 2, -7]},
            {"operatorType": "NumberNotIn", "key": "data.a", "values": [0.5]},
            {"operatorType": "NumberLessThan", "key": "data.a", "value": 1.5},
            {"operatorType": "NumberGreaterThan", "key": "data.a", "value": -2},
            {"operatorType": "NumberLessThanOrEquals", "key": "data.a", "value": 10},
            {"operatorType": "NumberGreaterThanOrEquals", "key": "data.a", "value": 0},
            {"operatorType": "NumberInRange", "key": "data.a", "values": [[0, 1], [2.5, 3.5]]},
            {"operatorType": "NumberNotInRange", "key": "data.a", "values": [[-1, 1]]},
            {"operatorType": "BoolEquals", "key": "data.b", "value": true},
            {"operatorType": "StringIn", "key": "Data.Key1", "values": ["a", "b"]},
            {"operatorType": "StringNotIn", "key": "subject", "values": ["x"]},
            {"operatorType": "StringBeginsWith", "key": "data.s", "values": ["p"]},
            {"operatorType": "StringNotBeginsWith", "key": "data.s", "values": ["q"]},
            {"operatorType": "StringEndsWith", "key": "data.s", "values": [".jpg"]},
            {"operatorType": "StringNotEndsWith", "key": "data.s", "values": [".png"]},
            {"operatorType": "StringContains", "key": "data.s", "values": ["mid"]},
            {"operatorType": "StringNotContains", "key": "data.s", "values": ["bad"]},
            {"operatorType": "IsNullOrUndefined", "key": "data.n"},
            {"operatorType": "IsNotNull", "key": "data.m"}
        ]);
        let parsed: Vec<AdvancedFilter> = serde_json::from_value(all.clone()).expect("filters");
        let names: Vec<&str> = parsed.iter().map(AdvancedFilter::operator_type).collect();
        let expected: Vec<&str> = ALL_OPS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, expected);
        for (f, j) in parsed.iter().zip(all.as_array().expect("array")) {
            assert_eq!(j["operatorType"], f.operator_type());
            assert_eq!(j["key"], f.key());
        }
        assert_eq!(serde_json::to_value(&parsed).expect("serialize"), all);
        // Namespace subscriptions reuse the operator objects; arbitrary order of members.
        let reordered: AdvancedFilter =
            serde_json::from_str(r#"{"values":[1],"key":"data.a","operatorType":"NumberIn"}"#)
                .expect("filter");
        assert_eq!(
            reordered,
            F::NumberIn {
                key: "data.a".into(),
                values: vec![1.into()]
            }
        );
    }

    #[test]
    fn malformed_filters_are_rejected_by_serde() {
        for bad in [
            json!({"operatorType": "NumberEquals", "key": "data.a", "value": 1}),
            json!({"operatorType": "numberin", "key": "data.a", "values": [1]}),
            json!({"operatorType": "NumberIn", "key": "data.a", "values": ["1"]}),
            json!({"operatorType": "NumberIn", "key": "data.a"}),
            json!({"operatorType": "StringIn", "key": "data.a", "values": [1]}),
            json!({"operatorType": "BoolEquals", "key": "data.a", "value": "true"}),
            json!({"operatorType": "NumberInRange", "key": "data.a", "values": [[1, 2, 3]]}),
            json!({"operatorType": "NumberInRange", "key": "data.a", "values": [1, 2]}),
            json!({"key": "data.a", "values": [1]}),
            json!({"operatorType": "IsNotNull"}),
        ] {
            assert!(
                serde_json::from_value::<AdvancedFilter>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        let minimal: EventFilter = serde_json::from_str("{}").expect("empty filter");
        assert_eq!(minimal, EventFilter::default());
        assert_eq!(
            serde_json::to_value(&minimal).expect("serialize"),
            json!({
                "isSubjectCaseSensitive": false, "enableAdvancedFilteringOnArrays": false
            })
        );
    }

    // ---- property tests: a reference model per operator ----

    /// A primitive the model understands. Numbers are kept normalized so their text is
    /// exactly what serde_json prints for them.
    #[derive(Debug, Clone)]
    enum Prim {
        Null,
        Bool(bool),
        Num(Decimal),
        Str(String),
    }

    #[derive(Debug, Clone)]
    enum Slot {
        Missing,
        Prim(Prim),
        Object,
        /// `None` elements are objects.
        Array(Vec<Option<Prim>>),
    }

    fn prim_json(p: &Prim) -> Value {
        match p {
            Prim::Null => Value::Null,
            Prim::Bool(b) => Value::Bool(*b),
            Prim::Num(d) => serde_json::from_str(&d.to_string()).expect("number text"),
            Prim::Str(s) => Value::String(s.clone()),
        }
    }

    fn slot_json(s: &Slot) -> Option<Value> {
        match s {
            Slot::Missing => None,
            Slot::Prim(p) => Some(prim_json(p)),
            Slot::Object => Some(json!({"inner": 1})),
            Slot::Array(items) => Some(Value::Array(
                items
                    .iter()
                    .map(|e| e.as_ref().map_or_else(|| json!({"o": 1}), prim_json))
                    .collect(),
            )),
        }
    }

    // A small domain, so that event values and filter values often coincide.
    fn small_decimal() -> impl Strategy<Value = Decimal> {
        (-6i64..=6, 0u32..=1).prop_map(|(m, scale)| Decimal::new(m, scale).normalize())
    }

    fn small_string() -> impl Strategy<Value = String> {
        prop_oneof![
            "[aAbB15.]{0,3}",
            Just("true".to_string()),
            Just("TRUE".to_string()),
            Just("fal".to_string()),
        ]
    }

    fn prim() -> impl Strategy<Value = Prim> {
        prop_oneof![
            Just(Prim::Null),
            any::<bool>().prop_map(Prim::Bool),
            small_decimal().prop_map(Prim::Num),
            small_string().prop_map(Prim::Str),
        ]
    }

    fn slot() -> impl Strategy<Value = Slot> {
        prop_oneof![
            2 => Just(Slot::Missing),
            6 => prim().prop_map(Slot::Prim),
            1 => Just(Slot::Object),
            4 => prop::collection::vec(prop::option::weighted(0.9, prim()), 0..4).prop_map(Slot::Array),
        ]
    }

    fn number(d: &Decimal) -> Number {
        serde_json::from_str(&d.to_string()).expect("number")
    }

    /// Builds operator `index` (in `ALL_OPS` order) from pools of values.
    fn build(
        index: usize,
        key: String,
        nums: &[Number],
        strs: &[String],
        flag: bool,
    ) -> AdvancedFilter {
        let first = nums.first().cloned().unwrap_or_else(|| 0.into());
        let values = nums.to_vec();
        let pairs: Vec<[Number; 2]> = nums
            .chunks_exact(2)
            .map(|c| [c[0].clone(), c[1].clone()])
            .collect();
        let strings = strs.to_vec();
        match index {
            0 => F::NumberIn { key, values },
            1 => F::NumberNotIn { key, values },
            2 => F::NumberLessThan { key, value: first },
            3 => F::NumberGreaterThan { key, value: first },
            4 => F::NumberLessThanOrEquals { key, value: first },
            5 => F::NumberGreaterThanOrEquals { key, value: first },
            6 => F::NumberInRange { key, values: pairs },
            7 => F::NumberNotInRange { key, values: pairs },
            8 => F::BoolEquals { key, value: flag },
            9 => F::StringIn {
                key,
                values: strings,
            },
            10 => F::StringNotIn {
                key,
                values: strings,
            },
            11 => F::StringBeginsWith {
                key,
                values: strings,
            },
            12 => F::StringNotBeginsWith {
                key,
                values: strings,
            },
            13 => F::StringEndsWith {
                key,
                values: strings,
            },
            14 => F::StringNotEndsWith {
                key,
                values: strings,
            },
            15 => F::StringContains {
                key,
                values: strings,
            },
            16 => F::StringNotContains {
                key,
                values: strings,
            },
            17 => F::IsNullOrUndefined { key },
            _ => F::IsNotNull { key },
        }
    }

    fn model_dec(n: &Number) -> Decimal {
        Decimal::from_str(&n.to_string()).expect("generated numbers are decimals")
    }

    fn model_text(p: &Prim) -> Option<String> {
        match p {
            Prim::Null => None,
            Prim::Bool(b) => Some(b.to_string()),
            Prim::Num(d) => Some(d.to_string()),
            Prim::Str(s) => Some(s.to_ascii_lowercase()),
        }
    }

    fn lower(values: &[String]) -> Vec<String> {
        values.iter().map(|s| s.to_ascii_lowercase()).collect()
    }

    /// Whether `p`'s type fits the operator (model of "ignored" elements).
    fn model_fits(f: &AdvancedFilter, p: &Prim) -> bool {
        match f {
            F::IsNullOrUndefined { .. } | F::IsNotNull { .. } => true,
            F::BoolEquals { .. } => matches!(p, Prim::Bool(_)),
            F::StringIn { .. }
            | F::StringNotIn { .. }
            | F::StringBeginsWith { .. }
            | F::StringNotBeginsWith { .. }
            | F::StringEndsWith { .. }
            | F::StringNotEndsWith { .. }
            | F::StringContains { .. }
            | F::StringNotContains { .. } => !matches!(p, Prim::Null),
            _ => matches!(p, Prim::Num(_)),
        }
    }

    /// The spec's table, one operator at a time, for a single primitive.
    fn model_scalar(f: &AdvancedFilter, p: &Prim) -> bool {
        let num = match p {
            Prim::Num(d) => Some(*d),
            _ => None,
        };
        let text = model_text(p);
        match f {
            F::NumberIn { values, .. } => {
                num.is_some_and(|x| values.iter().any(|v| model_dec(v) == x))
            }
            F::NumberNotIn { values, .. } => {
                num.is_some_and(|x| values.iter().all(|v| model_dec(v) != x))
            }
            F::NumberLessThan { value, .. } => num.is_some_and(|x| x < model_dec(value)),
            F::NumberGreaterThan { value, .. } => num.is_some_and(|x| x > model_dec(value)),
            F::NumberLessThanOrEquals { value, .. } => num.is_some_and(|x| x <= model_dec(value)),
            F::NumberGreaterThanOrEquals { value, .. } => {
                num.is_some_and(|x| x >= model_dec(value))
            }
            F::NumberInRange { values, .. } => num.is_some_and(|x| {
                values
                    .iter()
                    .any(|[lo, hi]| model_dec(lo) <= x && x <= model_dec(hi))
            }),
            F::NumberNotInRange { values, .. } => num.is_some_and(|x| {
                values
                    .iter()
                    .all(|[lo, hi]| !(model_dec(lo) <= x && x <= model_dec(hi)))
            }),
            F::BoolEquals { value, .. } => matches!(p, Prim::Bool(b) if b == value),
            F::StringIn { values, .. } => text.is_some_and(|t| lower(values).contains(&t)),
            F::StringNotIn { values, .. } => {
                text.is_some_and(|t| lower(values).iter().all(|v| t != *v))
            }
            F::StringBeginsWith { values, .. } => {
                text.is_some_and(|t| lower(values).iter().any(|v| t.starts_with(v.as_str())))
            }
            F::StringNotBeginsWith { values, .. } => {
                text.is_some_and(|t| lower(values).iter().all(|v| !t.starts_with(v.as_str())))
            }
            F::StringEndsWith { values, .. } => {
                text.is_some_and(|t| lower(values).iter().any(|v| t.ends_with(v.as_str())))
            }
            F::StringNotEndsWith { values, .. } => {
                text.is_some_and(|t| lower(values).iter().all(|v| !t.ends_with(v.as_str())))
            }
            F::StringContains { values, .. } => {
                text.is_some_and(|t| lower(values).iter().any(|v| t.contains(v.as_str())))
            }
            F::StringNotContains { values, .. } => {
                text.is_some_and(|t| lower(values).iter().all(|v| !t.contains(v.as_str())))
            }
            F::IsNullOrUndefined { .. } => matches!(p, Prim::Null),
            F::IsNotNull { .. } => !matches!(p, Prim::Null),
        }
    }

    fn model_negated(f: &AdvancedFilter) -> bool {
        matches!(
            f.operator_type(),
            "NumberNotIn"
                | "NumberNotInRange"
                | "StringNotIn"
                | "StringNotBeginsWith"
                | "StringNotEndsWith"
                | "StringNotContains"
        )
    }

    fn model(f: &AdvancedFilter, slot: &Slot, arrays: bool) -> bool {
        match slot {
            Slot::Missing => matches!(
                f.operator_type(),
                "NumberNotIn" | "StringNotIn" | "IsNullOrUndefined" | "NumberNotInRange"
            ),
            Slot::Prim(p) => model_scalar(f, p),
            Slot::Object => matches!(f, F::IsNotNull { .. }),
            Slot::Array(_) if !arrays => false,
            Slot::Array(items) => {
                let fitting: Vec<&Prim> = items
                    .iter()
                    .flatten()
                    .filter(|p| model_fits(f, p))
                    .collect();
                if model_negated(f) {
                    // Fails if any element hits the positive form; needs one fitting element.
                    !fitting.is_empty() && fitting.iter().all(|p| model_scalar(f, p))
                } else {
                    fitting.iter().any(|p| model_scalar(f, p))
                }
            }
        }
    }

    /// Three places a key can point at, with the filter key spelled in varying case.
    fn place(event: &mut Value, slot_index: usize, kind: EnvelopeKind, value: Option<Value>) {
        let Some(value) = value else { return };
        match (slot_index, kind) {
            (0, _) => event["data"]["Outer"]["inner"] = value,
            (1, EventGrid) => event["dataVersion"] = value,
            (1, CloudEvents) => event["myext"] = value,
            _ => event["data"]["list"] = value,
        }
    }

    fn key_for(slot_index: usize, kind: EnvelopeKind, spelling: usize) -> String {
        let options: &[&str] = match (slot_index, kind) {
            (0, _) => &["data.Outer.inner", "DATA.outer.INNER", "Data.oUTER.Inner"],
            (1, EventGrid) => &["dataVersion", "DataVersion", "DATAVERSION"],
            (1, CloudEvents) => &["myext", "MyExt", "MYEXT"],
            _ => &["data.list", "data.List", "Data.LIST"],
        };
        options[spelling % options.len()].to_string()
    }

    fn base_event(kind: EnvelopeKind, event_type: &str, subject: &str) -> Value {
        match kind {
            EventGrid => {
                json!({"id": "1", "topic": "/t", "subject": subject, "eventType": event_type,
                                "eventTime": "2020-01-01T00:00:00Z", "data": {"Outer": {}}})
            }
            CloudEvents => {
                json!({"specversion": "1.0", "id": "1", "source": "/s", "type": event_type,
                                  "subject": subject, "data": {"Outer": {}}})
            }
        }
    }

    fn kind() -> impl Strategy<Value = EnvelopeKind> {
        prop_oneof![Just(EventGrid), Just(CloudEvents)]
    }

    fn op_parts() -> impl Strategy<Value = (usize, Vec<Number>, Vec<String>, bool)> {
        (
            0usize..19,
            prop::collection::vec(small_decimal().prop_map(|d| number(&d)), 0..5),
            prop::collection::vec(small_string(), 0..4),
            any::<bool>(),
        )
    }

    fn config(cases: u32) -> ProptestConfig {
        // No regression files: this crate is shared and the test must not write into it.
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config(4096))]

        #[test]
        fn one_filter_matches_the_model(
            kind in kind(),
            slot_index in 0usize..3,
            spelling in 0usize..3,
            value in slot(),
            (index, nums, strs, flag) in op_parts(),
            arrays in any::<bool>(),
        ) {
            let f = build(index, key_for(slot_index, kind, spelling), &nums, &strs, flag);
            let mut event = base_event(kind, "t", "s");
            place(&mut event, slot_index, kind, slot_json(&value));
            let expected = model(&f, &value, arrays);
            prop_assert_eq!(with(vec![f.clone()], arrays).matches(&event, kind), expected);
            // A one-element array reads like its element once array filtering is on.
            if let Slot::Prim(p) = &value {
                let mut wrapped = base_event(kind, "t", "s");
                place(&mut wrapped, slot_index, kind, Some(json!([prim_json(p)])));
                prop_assert_eq!(with(vec![f], true).matches(&wrapped, kind), expected);
            }
        }
    }

    proptest! {
        #![proptest_config(config(1024))]

        #[test]
        fn whole_filter_matches_the_model(
            kind in kind(),
            event_type in prop::sample::select(vec!["Rec.Inserted", "rec.inserted", "Other", "all"]),
            subject in "[aAbB/.]{0,5}",
            slots in prop::collection::vec(slot(), 3),
            types in prop::option::of(prop::collection::vec(
                prop::sample::select(vec!["REC.INSERTED", "other", "All", "x"]).prop_map(String::from), 0..3)),
            begins in prop::option::of("[aAbB/]{0,2}"),
            ends in prop::option::of("[aAbB.]{0,2}"),
            case_sensitive in any::<bool>(),
            arrays in any::<bool>(),
            filters in prop::collection::vec((0usize..3, 0usize..3, op_parts()), 0..4),
        ) {
            let mut event = base_event(kind, event_type, &subject);
            for (i, s) in slots.iter().enumerate() {
                place(&mut event, i, kind, slot_json(s));
            }
            let advanced: Vec<AdvancedFilter> = filters
                .iter()
                .map(|(slot_index, spelling, (index, nums, strs, flag))| {
                    build(*index, key_for(*slot_index, kind, *spelling), nums, strs, *flag)
                })
                .collect();
            let filter = EventFilter {
                included_event_types: types.clone(),
                subject_begins_with: begins.clone(),
                subject_ends_with: ends.clone(),
                is_subject_case_sensitive: case_sensitive,
                enable_advanced_filtering_on_arrays: arrays,
                advanced_filters: advanced.clone(),
            };

            let type_ok = match &types {
                None => true,
                Some(list) if list.is_empty() => true,
                Some(list) => list.iter().any(|t| {
                    t.eq_ignore_ascii_case("all") || t.eq_ignore_ascii_case(event_type)
                }),
            };
            let (s, b, e) = (subject.clone(), begins.unwrap_or_default(), ends.unwrap_or_default());
            let subject_ok = if case_sensitive {
                s.starts_with(&b) && s.ends_with(&e)
            } else {
                let s = s.to_ascii_lowercase();
                s.starts_with(&b.to_ascii_lowercase()) && s.ends_with(&e.to_ascii_lowercase())
            };
            let advanced_ok = filters
                .iter()
                .zip(&advanced)
                .all(|((slot_index, _, _), f)| model(f, &slots[*slot_index], arrays));
            prop_assert_eq!(filter.matches(&event, kind), type_ok && subject_ok && advanced_ok);
        }
    }

    // ---- property tests: no panics on arbitrary input ----

    fn any_number() -> impl Strategy<Value = Number> {
        prop_oneof![
            any::<i64>().prop_map(Number::from),
            any::<u64>().prop_map(Number::from),
            any::<f64>().prop_filter_map("finite", Number::from_f64),
            small_decimal().prop_map(|d| number(&d)),
        ]
    }

    fn any_key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("data".to_string()),
            "(data|Data|DATA)(\\.[a-zA-Z.]{0,3}){0,3}",
            "[a-zA-Z_.]{0,8}",
            "\\PC{0,6}",
        ]
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any_number().prop_map(Value::Number),
            "\\PC{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((any_key(), inner), 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    fn any_event() -> impl Strategy<Value = Value> {
        let name = prop_oneof![
            prop::sample::select(vec![
                "id",
                "subject",
                "eventType",
                "type",
                "topic",
                "data",
                "Data",
                "data_base64",
                "source",
            ])
            .prop_map(String::from),
            any_key(),
        ];
        prop_oneof![
            4 => prop::collection::vec((name, any_json()), 0..8)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
            1 => any_json(),
        ]
    }

    fn any_filter() -> impl Strategy<Value = EventFilter> {
        let advanced = (
            0usize..19,
            any_key(),
            prop::collection::vec(any_number(), 0..5),
            prop::collection::vec("\\PC{0,6}", 0..4),
            any::<bool>(),
        )
            .prop_map(|(index, key, nums, strs, flag)| build(index, key, &nums, &strs, flag));
        (
            prop::option::of(prop::collection::vec("\\PC{0,6}", 0..3)),
            prop::option::of("\\PC{0,4}"),
            prop::option::of("\\PC{0,4}"),
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(advanced, 0..30),
        )
            .prop_map(
                |(types, begins, ends, cs, arrays, advanced_filters)| EventFilter {
                    included_event_types: types,
                    subject_begins_with: begins,
                    subject_ends_with: ends,
                    is_subject_case_sensitive: cs,
                    enable_advanced_filtering_on_arrays: arrays,
                    advanced_filters,
                },
            )
    }

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn never_panics(filter in any_filter(), event in any_event(), kind in kind()) {
            let _ = filter.validate();
            let _ = filter.matches(&event, kind);
            // Serde round trip holds for anything we can build.
            let json = serde_json::to_value(&filter).expect("serialize");
            let back: EventFilter = serde_json::from_value(json).expect("deserialize");
            prop_assert_eq!(back, filter);
        }

        #[test]
        fn deserializing_arbitrary_json_never_panics(json in any_json()) {
            let _ = serde_json::from_value::<EventFilter>(json.clone());
            let _ = serde_json::from_value::<AdvancedFilter>(json);
        }
    }
}
