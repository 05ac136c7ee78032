//! Human tables and JSON output.

use chrono::{TimeZone, Utc};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::Value;

pub fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(headers.to_vec());
    for r in rows {
        t.add_row(r);
    }
    println!("{t}");
}

pub fn json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Unix seconds as RFC 3339, or "-" when absent.
pub fn ts(v: &Value) -> String {
    v.as_i64()
        .and_then(|s| Utc.timestamp_opt(s, 0).single())
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

pub fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Parses `2026-12-01T00:00:00Z`, a unix timestamp, or a relative `+30d`/`+2h`/`+90s`.
pub fn parse_time(raw: &str) -> anyhow::Result<i64> {
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
