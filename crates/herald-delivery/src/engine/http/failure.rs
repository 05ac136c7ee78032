//! Why a request got no response, from reqwest's error chain.

use super::guard::ResolveError;
use std::error::Error as StdError;
use std::fmt;

/// Why a request produced no HTTP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// No complete response head within the timeout.
    TimedOut,
    /// The host name could not be resolved.
    ResolutionError,
    /// Connect, TLS or connection-level I/O failure.
    SocketError,
    /// The SSRF guard refused the target address.
    Blocked,
    /// Anything else (bad URL, invalid header, protocol error).
    Other,
}

impl FailureKind {
    /// Name as used for `lastDeliveryOutcome` where Event Grid has one.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TimedOut => "TimedOut",
            Self::ResolutionError => "ResolutionError",
            Self::SocketError => "SocketError",
            Self::Blocked => "Blocked",
            Self::Other => "Other",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// reqwest error → failure kind, looking through the source chain for the
/// resolver's own error and for connection-level I/O errors.
pub(super) fn classify(err: &reqwest::Error) -> FailureKind {
    let mut io_failure = false;
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = source {
        let mut found = e.downcast_ref::<ResolveError>();
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            // io::Error::source skips its payload, so look at it directly.
            found = found.or_else(|| io.get_ref().and_then(|i| i.downcast_ref::<ResolveError>()));
            io_failure = true;
        }
        if let Some(resolve) = found {
            return match resolve {
                ResolveError::Blocked { .. } => FailureKind::Blocked,
                ResolveError::Lookup { .. } | ResolveError::NoAddresses { .. } => {
                    FailureKind::ResolutionError
                }
            };
        }
        source = e.source();
    }
    if err.is_timeout() {
        FailureKind::TimedOut
    } else if err.is_connect() || io_failure {
        FailureKind::SocketError
    } else {
        FailureKind::Other
    }
}

/// The error and its causes, without the URL (its query string may hold a
/// receiver's secret, and this text ends up in the delivery log).
pub(super) fn error_message(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = e.source();
    }
    message
}
