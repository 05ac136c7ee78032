//! Event positions and the `apache.org:selector-filter:string` grammar the
//! Event Hubs SDKs send (A9.7). Kept in one small module so it can later be
//! unified with the parser in the hubs domain.

/// Where a reader starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPosition {
    /// From the oldest retained event (`-1`, or no filter).
    Earliest,
    /// Only events enqueued after the attach (`@latest`).
    Latest,
    /// After (or at, when inclusive) an offset string.
    Offset {
        /// The offset text as sent.
        offset: String,
        /// `>=` instead of `>`.
        inclusive: bool,
    },
    /// After (or at) a sequence number.
    SequenceNumber {
        /// The sequence number.
        sequence_number: i64,
        /// `>=` instead of `>`.
        inclusive: bool,
    },
    /// The first event enqueued after (or at) a time, ms since the epoch.
    EnqueuedTime {
        /// Milliseconds since the Unix epoch.
        enqueued_time_ms: i64,
        /// `>=` instead of `>`.
        inclusive: bool,
    },
}

/// Parse a selector such as `amqp.annotation.x-opt-offset > '-1'`.
pub fn parse_selector(selector: &str) -> Result<EventPosition, String> {
    let s = selector.trim();
    let bad = || format!("invalid selector filter '{selector}'");
    let (field, rest) = s.split_once(char::is_whitespace).ok_or_else(bad)?;
    let rest = rest.trim_start();
    let (inclusive, rest) = if let Some(r) = rest.strip_prefix(">=") {
        (true, r)
    } else if let Some(r) = rest.strip_prefix('>') {
        (false, r)
    } else if let Some(r) = rest.strip_prefix('=') {
        (true, r)
    } else {
        return Err(bad());
    };
    let value = rest.trim();
    let value = value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or(value);
    let field = field.to_ascii_lowercase();
    let field = field.strip_prefix("amqp.annotation.").unwrap_or(&field);
    match field {
        "x-opt-offset" => Ok(match value {
            "-1" => EventPosition::Earliest,
            "@latest" => EventPosition::Latest,
            "" => return Err(bad()),
            v => EventPosition::Offset {
                offset: v.to_string(),
                inclusive,
            },
        }),
        "x-opt-sequence-number" => {
            let n: i64 = value.parse().map_err(|_| bad())?;
            Ok(EventPosition::SequenceNumber {
                sequence_number: n,
                inclusive,
            })
        }
        "x-opt-enqueued-time" => {
            let ms: i64 = value.parse().map_err(|_| bad())?;
            Ok(EventPosition::EnqueuedTime {
                enqueued_time_ms: ms,
                inclusive,
            })
        }
        _ => Err(bad()),
    }
}

/// For a resolver over dense sequence numbers whose offsets are the decimal
/// text of the sequence number: the first sequence number to deliver.
/// `next` is the next sequence number to be written; `first_at_or_after_time`
/// maps a time to the first sequence number enqueued at or after it.
pub fn start_sequence(
    position: &EventPosition,
    begin: i64,
    next: i64,
    first_at_or_after_time: impl Fn(i64) -> i64,
) -> Result<i64, String> {
    let s = match position {
        EventPosition::Earliest => begin,
        EventPosition::Latest => next,
        EventPosition::Offset { offset, inclusive } => {
            let n: i64 = offset
                .parse()
                .map_err(|_| format!("invalid offset '{offset}'"))?;
            if *inclusive { n } else { n + 1 }
        }
        EventPosition::SequenceNumber {
            sequence_number,
            inclusive,
        } => {
            if *inclusive {
                *sequence_number
            } else {
                sequence_number + 1
            }
        }
        EventPosition::EnqueuedTime {
            enqueued_time_ms,
            inclusive,
        } => {
            let t = if *inclusive {
                *enqueued_time_ms
            } else {
                enqueued_time_ms + 1
            };
            first_at_or_after_time(t)
        }
    };
    Ok(s.max(begin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sdk_selectors() {
        assert_eq!(
            parse_selector("amqp.annotation.x-opt-offset > '-1'"),
            Ok(EventPosition::Earliest)
        );
        assert_eq!(
            parse_selector("amqp.annotation.x-opt-offset > '@latest'"),
            Ok(EventPosition::Latest)
        );
        assert_eq!(
            parse_selector("amqp.annotation.x-opt-offset >= '12'"),
            Ok(EventPosition::Offset {
                offset: "12".into(),
                inclusive: true
            })
        );
        assert_eq!(
            parse_selector("amqp.annotation.x-opt-sequence-number > '5'"),
            Ok(EventPosition::SequenceNumber {
                sequence_number: 5,
                inclusive: false
            })
        );
        assert_eq!(
            parse_selector("amqp.annotation.x-opt-enqueued-time > '1700000000000'"),
            Ok(EventPosition::EnqueuedTime {
                enqueued_time_ms: 1_700_000_000_000,
                inclusive: false
            })
        );
        assert!(parse_selector("amqp.annotation.x-opt-sequence-number > 'x'").is_err());
        assert!(parse_selector("garbage").is_err());
    }

    #[test]
    fn start_sequences() {
        let t = |_| 7;
        assert_eq!(start_sequence(&EventPosition::Earliest, 2, 10, t), Ok(2));
        assert_eq!(start_sequence(&EventPosition::Latest, 2, 10, t), Ok(10));
        let p = EventPosition::SequenceNumber {
            sequence_number: 4,
            inclusive: false,
        };
        assert_eq!(start_sequence(&p, 0, 10, t), Ok(5));
        let p = EventPosition::Offset {
            offset: "4".into(),
            inclusive: true,
        };
        assert_eq!(start_sequence(&p, 0, 10, t), Ok(4));
    }
}
