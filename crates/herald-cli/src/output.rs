//! Human tables and JSON output.
//!
//! Every command that lists or shows something prints through [`print`]
//! (rows under headers) or [`fields`] (one record as FIELD/VALUE pairs):
//! `--json` prints the server's JSON as it came, otherwise a table.

use chrono::{TimeZone, Utc};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;
use serde_json::Value;

/// How a column gets its cell from a row.
type Cell<'a, R> = Box<dyn Fn(&R) -> String + 'a>;

/// A table's columns: each a header and how to get its cell from a row.
pub(crate) struct Columns<'a, R> {
    cols: Vec<(&'a str, Cell<'a, R>)>,
}

impl<'a, R> Columns<'a, R> {
    pub(crate) fn new() -> Self {
        Self { cols: Vec::new() }
    }

    /// Adds a column headed `header` whose cells are `cell(row)`.
    pub(crate) fn col(mut self, header: &'a str, cell: impl Fn(&R) -> String + 'a) -> Self {
        self.cols.push((header, Box::new(cell)));
        self
    }

    fn render(&self, rows: &[R]) -> String {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED)
            .set_header(self.cols.iter().map(|(h, _)| *h).collect::<Vec<_>>());
        for r in rows {
            t.add_row(
                self.cols
                    .iter()
                    .map(|(_, cell)| cell(r))
                    .collect::<Vec<_>>(),
            );
        }
        t.to_string()
    }
}

/// With `json`, prints `raw` as pretty JSON; otherwise a table of `rows`.
pub(crate) fn print<R>(json: bool, raw: &impl Serialize, rows: &[R], columns: Columns<'_, R>) {
    if json {
        self::json(raw);
    } else {
        print_table(rows, columns);
    }
}

/// With `json`, prints `raw` as pretty JSON; otherwise a two-column table
/// (headed `headers`) of the `(label, value)` pairs `rows` builds.
pub(crate) fn fields(
    json: bool,
    raw: &impl Serialize,
    headers: [&str; 2],
    rows: impl FnOnce() -> Vec<(String, String)>,
) {
    if json {
        self::json(raw);
    } else {
        print_table(&rows(), pairs(headers));
    }
}

/// The two columns of a `(label, value)` table.
pub(crate) fn pairs(headers: [&str; 2]) -> Columns<'_, (String, String)> {
    Columns::new()
        .col(headers[0], |r: &(String, String)| r.0.clone())
        .col(headers[1], |r: &(String, String)| r.1.clone())
}

/// A table of `rows`, whatever `--json` says (for output that has no JSON form).
pub(crate) fn print_table<R>(rows: &[R], columns: Columns<'_, R>) {
    println!("{}", columns.render(rows));
}

/// Pretty JSON.
pub(crate) fn json(v: &impl Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Unix seconds as RFC 3339, or "-" when absent.
pub(crate) fn ts(v: &Value) -> String {
    v.as_i64()
        .and_then(|s| Utc.timestamp_opt(s, 0).single())
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Parses `2026-12-01T00:00:00Z`, a unix timestamp, or a relative `+30d`/`+2h`/`+90s`.
pub(crate) fn parse_time(raw: &str) -> anyhow::Result<i64> {
    if let Some(rel) = raw.strip_prefix('+') {
        let (num, unit) = rel.split_at(rel.len().saturating_sub(1));
        let n: i64 = num.parse().map_err(|_| {
            anyhow::anyhow!("bad relative time '{raw}': use e.g. +30d, +12h, +15m or +90s")
        })?;
        let secs = match unit {
            "d" => 86_400,
            "h" => 3_600,
            "m" => 60,
            "s" => 1,
            _ => anyhow::bail!("bad relative time '{raw}': use e.g. +30d, +12h, +15m or +90s"),
        };
        return Ok(Utc::now().timestamp() + n * secs);
    }
    if let Ok(n) = raw.parse::<i64>() {
        return Ok(n);
    }
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| t.timestamp())
        .map_err(|_| {
            anyhow::anyhow!(
                "bad time '{raw}': use RFC 3339 (2026-12-01T00:00:00Z), unix seconds, or +30d"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_keep_their_format() {
        let rows = vec![
            json!({"name": "a", "n": 1}),
            json!({"name": "bee", "n": null}),
        ];
        let text = Columns::<Value>::new()
            .col("NAME", |r| s(&r["name"]))
            .col("N", |r| s(&r["n"]))
            .render(&rows);
        assert_eq!(
            text,
            "┌──────┬───┐\n\
             │ NAME ┆ N │\n\
             ╞══════╪═══╡\n\
             │ a    ┆ 1 │\n\
             │ bee  ┆ - │\n\
             └──────┴───┘"
        );
    }

    #[test]
    fn field_tables_are_label_value_pairs() {
        let text = pairs(["FIELD", "VALUE"]).render(&[("Name".into(), "x".into())]);
        assert!(text.contains("│ FIELD ┆ VALUE │"), "{text}");
        assert!(text.contains("│ Name  ┆ x     │"), "{text}");
    }
}
