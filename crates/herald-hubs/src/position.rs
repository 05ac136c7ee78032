//! Where a reader starts in a partition: event positions, parsed from AMQP
//! selector filters (spec §A9.7) and from Herald's CLI/HTTP forms, and
//! resolved against a partition's retained range.
//!
//! AMQP selectors, as the SDKs send them (`>=` when inclusive):
//!
//! ```text
//! amqp.annotation.x-opt-offset > '-1'              from the oldest retained event
//! amqp.annotation.x-opt-offset > '@latest'         only events enqueued after the attach
//! amqp.annotation.x-opt-offset > '<offset>'        after that offset
//! amqp.annotation.x-opt-sequence-number > '<n>'    after that sequence number
//! amqp.annotation.x-opt-enqueued-time > '<ms>'     first event after that time (ms since epoch)
//! ```
//!
//! CLI/HTTP forms: `earliest`, `latest`, `seq:N`, `offset:N`, `time:T` where
//! `T` is RFC 3339 or milliseconds since the epoch. These start *at* the
//! value (inclusive); `seq:>N`, `offset:>N`, `time:>T` start after it.

use std::fmt;
use std::str::FromStr;

use crate::event::parse_offset;
use crate::names::shown;

/// A starting position in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventPosition {
    /// The oldest retained event.
    Earliest,
    /// Only events enqueued after the reader attached.
    Latest,
    /// At (inclusive) or after the event with this offset.
    Offset {
        /// The offset (= sequence number in Herald).
        value: i64,
        /// Whether the event at `value` itself is delivered.
        inclusive: bool,
    },
    /// At (inclusive) or after the event with this sequence number.
    SequenceNumber {
        /// The sequence number.
        value: i64,
        /// Whether the event at `value` itself is delivered.
        inclusive: bool,
    },
    /// The first event enqueued at (inclusive) or after this time.
    EnqueuedTime {
        /// Milliseconds since the Unix epoch.
        ms: i64,
        /// Whether an event enqueued exactly at `ms` is delivered.
        inclusive: bool,
    },
}

/// Why a position was refused or cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    /// An AMQP selector filter Herald does not understand.
    #[error(
        "The selector filter '{filter}' is not supported: {reason}. Herald understands amqp.annotation.x-opt-offset, x-opt-sequence-number and x-opt-enqueued-time compared with > or >= to a quoted value."
    )]
    Selector {
        /// The filter text (shortened when very long).
        filter: String,
        /// What exactly is wrong.
        reason: String,
    },
    /// A CLI/HTTP position Herald does not understand.
    #[error(
        "The event position '{text}' is invalid: {reason}. Use earliest, latest, seq:<n>, offset:<n> or time:<RFC 3339 time or ms since epoch> (add '>' after the colon to start after the value)."
    )]
    Invalid {
        /// The position text (shortened when very long).
        text: String,
        /// What exactly is wrong.
        reason: String,
    },
    /// The start is beyond the partition's end. The text is Azure's
    /// (AMQP edges detach with `com.microsoft:argument-out-of-range`).
    #[error(
        "The supplied {what} '{supplied}' is invalid. The last {what} in the system is '{last}'"
    )]
    PastEnd {
        /// `sequence number` or `offset`.
        what: &'static str,
        /// The value the reader asked for.
        supplied: i64,
        /// The partition's last sequence number (-1 when empty).
        last: i64,
    },
}

/// Where delivery starts, once a position is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Deliver from this sequence number (it may equal the partition's
    /// next sequence number: wait for new events).
    Sequence(i64),
    /// Storage must find the first event whose enqueued time is `> ms`
    /// (or `>= ms` when `inclusive`); if none, start at the partition's
    /// next sequence number.
    FirstEnqueuedAfter {
        /// Milliseconds since the Unix epoch.
        ms: i64,
        /// Whether an event enqueued exactly at `ms` qualifies.
        inclusive: bool,
    },
}

const ANNOTATION_PREFIX: &str = "amqp.annotation.";

impl EventPosition {
    /// Parses an AMQP selector filter string (`apache.org:selector-filter:string`).
    /// Whitespace around the parts, the case of the annotation name and
    /// unquoted values are tolerated; anything else is refused.
    pub fn from_selector(filter: &str) -> Result<Self, PositionError> {
        let bad = |reason: &str| PositionError::Selector {
            filter: shown(filter),
            reason: reason.to_owned(),
        };
        let s = filter.trim();
        let name_end = s
            .find(|c: char| c.is_whitespace() || matches!(c, '>' | '<' | '=' | '!'))
            .ok_or_else(|| bad("it has no comparison"))?;
        let name = s[..name_end].to_ascii_lowercase();
        let annotation = name
            .strip_prefix(ANNOTATION_PREFIX)
            .ok_or_else(|| bad("it does not compare an amqp.annotation"))?;
        let rest = s[name_end..].trim_start();
        let (inclusive, rest) = if let Some(r) = rest.strip_prefix(">=") {
            (true, r)
        } else if let Some(r) = rest.strip_prefix('>') {
            (false, r)
        } else {
            return Err(bad("only the operators > and >= are supported"));
        };
        let rest = rest.trim();
        let value = if let Some(inner) = rest.strip_prefix('\'') {
            inner
                .strip_suffix('\'')
                .filter(|v| !v.contains('\''))
                .ok_or_else(|| bad("the quoted value is not closed by a single quote"))?
        } else if rest.is_empty() || rest.contains(char::is_whitespace) || rest.contains('\'') {
            return Err(bad("the value must be one quoted string"));
        } else {
            rest
        };
        let value = value.trim();
        let int = |what: &str| {
            value
                .parse::<i64>()
                .map_err(|_| bad(&format!("the {what} '{}' is not an integer", shown(value))))
        };
        match annotation {
            "x-opt-offset" => {
                if value == "-1" {
                    Ok(EventPosition::Earliest)
                } else if value.eq_ignore_ascii_case("@latest") {
                    Ok(EventPosition::Latest)
                } else {
                    let v = parse_offset(value).map_err(|e| bad(&e.to_string()))?;
                    Ok(EventPosition::Offset {
                        value: v,
                        inclusive,
                    })
                }
            }
            "x-opt-sequence-number" => Ok(EventPosition::SequenceNumber {
                value: int("sequence number")?,
                inclusive,
            }),
            "x-opt-enqueued-time" => Ok(EventPosition::EnqueuedTime {
                ms: int("enqueued time (ms since the epoch)")?,
                inclusive,
            }),
            _ => Err(bad(
                "the annotation must be x-opt-offset, x-opt-sequence-number or x-opt-enqueued-time",
            )),
        }
    }

    /// The selector filter string the Azure SDKs would send for this position.
    pub fn to_selector(&self) -> String {
        let op = |inclusive: bool| if inclusive { ">=" } else { ">" };
        match *self {
            EventPosition::Earliest => "amqp.annotation.x-opt-offset > '-1'".to_owned(),
            EventPosition::Latest => "amqp.annotation.x-opt-offset > '@latest'".to_owned(),
            EventPosition::Offset { value, inclusive } => {
                format!("amqp.annotation.x-opt-offset {} '{value}'", op(inclusive))
            }
            EventPosition::SequenceNumber { value, inclusive } => {
                format!(
                    "amqp.annotation.x-opt-sequence-number {} '{value}'",
                    op(inclusive)
                )
            }
            EventPosition::EnqueuedTime { ms, inclusive } => {
                format!(
                    "amqp.annotation.x-opt-enqueued-time {} '{ms}'",
                    op(inclusive)
                )
            }
        }
    }

    /// Resolves the position against a partition whose retained events are
    /// `begin_sequence_number..next_sequence_number` (equal when empty;
    /// `next` is what the next appended event gets). Positions before the
    /// retained range start at its beginning (those events have expired);
    /// positions past the end are refused with Azure's text. Enqueued-time
    /// positions need an index lookup, so they come back as
    /// [`StartAt::FirstEnqueuedAfter`] for storage to finish.
    pub fn resolve(
        &self,
        begin_sequence_number: i64,
        next_sequence_number: i64,
    ) -> Result<StartAt, PositionError> {
        let begin = begin_sequence_number.min(next_sequence_number);
        let next = next_sequence_number;
        let from = |what: &'static str, value: i64, inclusive: bool| {
            let start = if inclusive {
                value
            } else {
                value.saturating_add(1)
            };
            if start > next {
                Err(PositionError::PastEnd {
                    what,
                    supplied: value,
                    last: next.saturating_sub(1),
                })
            } else {
                Ok(StartAt::Sequence(start.max(begin)))
            }
        };
        match *self {
            EventPosition::Earliest => Ok(StartAt::Sequence(begin)),
            EventPosition::Latest => Ok(StartAt::Sequence(next)),
            // Herald's offsets are sequence numbers (§A1).
            EventPosition::Offset { value, inclusive } => from("offset", value, inclusive),
            EventPosition::SequenceNumber { value, inclusive } => {
                from("sequence number", value, inclusive)
            }
            EventPosition::EnqueuedTime { ms, inclusive } => {
                Ok(StartAt::FirstEnqueuedAfter { ms, inclusive })
            }
        }
    }
}

fn format_time(ms: i64) -> String {
    use chrono::Datelike;
    // RFC 3339 has four-digit years only; other times stay as milliseconds
    // so that the text always parses back.
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) if (1..=9999).contains(&t.year()) => {
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        }
        _ => ms.to_string(),
    }
}

impl fmt::Display for EventPosition {
    /// The CLI/HTTP form: `earliest`, `latest`, `seq:N`, `seq:>N`,
    /// `offset:N`, `time:2024-01-01T00:00:00.000Z`, ...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gt = |inclusive: bool| if inclusive { "" } else { ">" };
        match *self {
            EventPosition::Earliest => f.write_str("earliest"),
            EventPosition::Latest => f.write_str("latest"),
            EventPosition::Offset { value, inclusive } => {
                write!(f, "offset:{}{value}", gt(inclusive))
            }
            EventPosition::SequenceNumber { value, inclusive } => {
                write!(f, "seq:{}{value}", gt(inclusive))
            }
            EventPosition::EnqueuedTime { ms, inclusive } => {
                write!(f, "time:{}{}", gt(inclusive), format_time(ms))
            }
        }
    }
}

impl FromStr for EventPosition {
    type Err = PositionError;

    /// Parses the CLI/HTTP form (see the module docs); case-insensitive.
    fn from_str(text: &str) -> Result<Self, PositionError> {
        let bad = |reason: &str| PositionError::Invalid {
            text: shown(text),
            reason: reason.to_owned(),
        };
        let s = text.trim();
        if s.eq_ignore_ascii_case("earliest") {
            return Ok(EventPosition::Earliest);
        }
        if s.eq_ignore_ascii_case("latest") {
            return Ok(EventPosition::Latest);
        }
        let (kind, value) = s
            .split_once(':')
            .ok_or_else(|| bad("it is not a known position"))?;
        let value = value.trim();
        let (inclusive, value) = match value.strip_prefix('>') {
            Some(v) => (false, v.trim_start()),
            None => (true, value),
        };
        match kind.trim().to_ascii_lowercase().as_str() {
            "seq" | "sequence" | "sequencenumber" => {
                let v = value
                    .parse::<i64>()
                    .ok()
                    .filter(|v| *v >= 0)
                    .ok_or_else(|| bad("a sequence number is a non-negative integer"))?;
                Ok(EventPosition::SequenceNumber {
                    value: v,
                    inclusive,
                })
            }
            "offset" => {
                let v =
                    parse_offset(value).map_err(|_| bad("an offset is a non-negative integer"))?;
                Ok(EventPosition::Offset {
                    value: v,
                    inclusive,
                })
            }
            "time" | "enqueuedtime" => {
                let ms = match value.parse::<i64>() {
                    Ok(ms) => ms,
                    Err(_) => chrono::DateTime::parse_from_rfc3339(value)
                        .map_err(|_| bad("the time must be RFC 3339, e.g. 2024-05-01T12:00:00Z, or ms since the epoch"))?
                        .timestamp_millis(),
                };
                Ok(EventPosition::EnqueuedTime { ms, inclusive })
            }
            _ => Err(bad("the kind must be seq, offset or time")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sdk_selectors() {
        use EventPosition as P;
        let cases = [
            ("amqp.annotation.x-opt-offset > '-1'", P::Earliest),
            ("amqp.annotation.x-opt-offset >= '-1'", P::Earliest),
            ("amqp.annotation.x-opt-offset > '@latest'", P::Latest),
            (
                "amqp.annotation.x-opt-offset > '42'",
                P::Offset {
                    value: 42,
                    inclusive: false,
                },
            ),
            (
                "amqp.annotation.x-opt-offset >= '42'",
                P::Offset {
                    value: 42,
                    inclusive: true,
                },
            ),
            (
                "amqp.annotation.x-opt-sequence-number > '7'",
                P::SequenceNumber {
                    value: 7,
                    inclusive: false,
                },
            ),
            (
                "amqp.annotation.x-opt-sequence-number >= '-1'",
                P::SequenceNumber {
                    value: -1,
                    inclusive: true,
                },
            ),
            (
                "amqp.annotation.x-opt-enqueued-time > '1700000000123'",
                P::EnqueuedTime {
                    ms: 1_700_000_000_123,
                    inclusive: false,
                },
            ),
            // Tolerated variations.
            (
                "  AMQP.Annotation.X-Opt-Offset>='5'  ",
                P::Offset {
                    value: 5,
                    inclusive: true,
                },
            ),
            (
                "amqp.annotation.x-opt-sequence-number>  ' 9 '",
                P::SequenceNumber {
                    value: 9,
                    inclusive: false,
                },
            ),
            (
                "amqp.annotation.x-opt-offset > 10",
                P::Offset {
                    value: 10,
                    inclusive: false,
                },
            ),
        ];
        for (s, want) in cases {
            assert_eq!(EventPosition::from_selector(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn bad_selectors() {
        for s in [
            "",
            "amqp.annotation.x-opt-offset",
            "amqp.annotation.x-opt-offset = '1'",
            "amqp.annotation.x-opt-offset < '1'",
            "amqp.annotation.x-opt-offset > '1",
            "amqp.annotation.x-opt-offset > 'a'",
            "amqp.annotation.x-opt-offset > '1' OR 1=1",
            "amqp.annotation.x-opt-offset > ''",
            "amqp.annotation.x-opt-partition-key > 'a'",
            "x-opt-offset > '1'",
            "amqp.annotation.x-opt-sequence-number > '1.5'",
            "amqp.annotation.x-opt-enqueued-time > 'yesterday'",
        ] {
            let e = EventPosition::from_selector(s);
            assert!(
                matches!(e, Err(PositionError::Selector { .. })),
                "{s}: {e:?}"
            );
        }
    }

    #[test]
    fn cli_forms() {
        use EventPosition as P;
        assert_eq!("earliest".parse(), Ok(P::Earliest));
        assert_eq!("LATEST".parse(), Ok(P::Latest));
        assert_eq!(
            "seq:5".parse(),
            Ok(P::SequenceNumber {
                value: 5,
                inclusive: true
            })
        );
        assert_eq!(
            "seq:>5".parse(),
            Ok(P::SequenceNumber {
                value: 5,
                inclusive: false
            })
        );
        assert_eq!(
            "offset:0".parse(),
            Ok(P::Offset {
                value: 0,
                inclusive: true
            })
        );
        assert_eq!(
            "time:2023-11-14T22:13:20.123Z".parse(),
            Ok(P::EnqueuedTime {
                ms: 1_700_000_000_123,
                inclusive: true
            })
        );
        assert_eq!(
            "time:2023-11-14T23:13:20+01:00".parse(),
            Ok(P::EnqueuedTime {
                ms: 1_700_000_000_000,
                inclusive: true
            })
        );
        assert_eq!(
            "time:5".parse(),
            Ok(P::EnqueuedTime {
                ms: 5,
                inclusive: true
            })
        );
        for bad in [
            "",
            "first",
            "seq:",
            "seq:-1",
            "offset:x",
            "time:never",
            "foo:1",
        ] {
            assert!(bad.parse::<EventPosition>().is_err(), "{bad}");
        }
        assert_eq!(
            P::EnqueuedTime {
                ms: 0,
                inclusive: false
            }
            .to_string(),
            "time:>1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn resolution() {
        use EventPosition as P;
        // Retained 10..20 (last event 19, next 20).
        assert_eq!(P::Earliest.resolve(10, 20), Ok(StartAt::Sequence(10)));
        assert_eq!(P::Latest.resolve(10, 20), Ok(StartAt::Sequence(20)));
        let seq = |value, inclusive| P::SequenceNumber { value, inclusive };
        assert_eq!(seq(15, true).resolve(10, 20), Ok(StartAt::Sequence(15)));
        assert_eq!(seq(15, false).resolve(10, 20), Ok(StartAt::Sequence(16)));
        assert_eq!(seq(19, false).resolve(10, 20), Ok(StartAt::Sequence(20)));
        assert_eq!(seq(20, true).resolve(10, 20), Ok(StartAt::Sequence(20)));
        assert_eq!(seq(3, true).resolve(10, 20), Ok(StartAt::Sequence(10)));
        assert_eq!(seq(-1, false).resolve(0, 0), Ok(StartAt::Sequence(0)));
        assert_eq!(
            seq(i64::MAX, false).resolve(0, 5).unwrap_err().to_string(),
            format!(
                "The supplied sequence number '{}' is invalid. The last sequence number in the system is '4'",
                i64::MAX
            )
        );
        assert_eq!(
            seq(25, true).resolve(10, 20),
            Err(PositionError::PastEnd {
                what: "sequence number",
                supplied: 25,
                last: 19
            })
        );
        assert_eq!(
            P::Offset {
                value: 0,
                inclusive: false
            }
            .resolve(0, 0),
            Err(PositionError::PastEnd {
                what: "offset",
                supplied: 0,
                last: -1
            })
        );
        assert_eq!(
            P::EnqueuedTime {
                ms: 5,
                inclusive: false
            }
            .resolve(10, 20),
            Ok(StartAt::FirstEnqueuedAfter {
                ms: 5,
                inclusive: false
            })
        );
        // An empty partition whose events all expired: begin == next.
        assert_eq!(P::Earliest.resolve(30, 30), Ok(StartAt::Sequence(30)));
    }

    fn position() -> impl Strategy<Value = EventPosition> {
        prop_oneof![
            Just(EventPosition::Earliest),
            Just(EventPosition::Latest),
            (0i64..=i64::MAX, any::<bool>())
                .prop_map(|(value, inclusive)| EventPosition::Offset { value, inclusive }),
            (0i64..=i64::MAX, any::<bool>())
                .prop_map(|(value, inclusive)| EventPosition::SequenceNumber { value, inclusive }),
            (any::<i64>(), any::<bool>())
                .prop_map(|(ms, inclusive)| EventPosition::EnqueuedTime { ms, inclusive }),
        ]
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,80}") {
            let _ = EventPosition::from_selector(&s);
            let _ = s.parse::<EventPosition>();
        }

        #[test]
        fn selector_round_trip(p in position()) {
            prop_assert_eq!(EventPosition::from_selector(&p.to_selector()), Ok(p));
        }

        #[test]
        fn cli_round_trip(p in position()) {
            prop_assert_eq!(p.to_string().parse::<EventPosition>(), Ok(p));
        }

        #[test]
        fn resolve_stays_in_range(p in position(), begin in 0i64..1000, len in 0i64..1000) {
            let next = begin + len;
            if let Ok(StartAt::Sequence(s)) = p.resolve(begin, next) {
                prop_assert!(s >= begin && s <= next);
            }
        }
    }
}
