//! A job's status, as Azure Automation names it: the typed state the
//! automation store records and the job state machine reasons about.

use serde::{Deserialize, Serialize};

/// Job statuses as Azure's API spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus {
    /// Queued, waiting for a worker.
    New,
    /// Leased by a worker, starting up.
    Activating,
    /// The job's process is running.
    Running,
    /// The job's process exited 0.
    Completed,
    /// The job failed (non-zero exit, timeout, or could not start).
    Failed,
    /// A stop was requested; the worker is ending the process.
    Stopping,
    /// The job was stopped on request.
    Stopped,
    /// The job is being suspended.
    Suspending,
    /// The job was put aside (e.g. it lost its worker too often); it can be resumed.
    Suspended,
    /// A suspended job is being queued again.
    Resuming,
    /// The job's worker stopped sending heartbeats.
    Disconnected,
}

impl JobStatus {
    /// Parses a status name, case-insensitively (`Queued` means `New`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "new" | "queued" => Self::New,
            "activating" | "starting" => Self::Activating,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "stopping" => Self::Stopping,
            "stopped" => Self::Stopped,
            "suspending" => Self::Suspending,
            "suspended" => Self::Suspended,
            "resuming" => Self::Resuming,
            "disconnected" => Self::Disconnected,
            _ => return None,
        })
    }

    /// The status as Azure's API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "New",
            Self::Activating => "Activating",
            Self::Running => "Running",
            Self::Completed => "Completed",
            Self::Failed => "Failed",
            Self::Stopping => "Stopping",
            Self::Stopped => "Stopped",
            Self::Suspending => "Suspending",
            Self::Suspended => "Suspended",
            Self::Resuming => "Resuming",
            Self::Disconnected => "Disconnected",
        }
    }

    /// Where a client polling the job stops waiting.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Stopped | Self::Suspended
        )
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored status that is not one of [`JobStatus`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job status '{0}'")]
pub struct UnknownStatus(pub String);

impl TryFrom<String> for JobStatus {
    type Error = UnknownStatus;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s).ok_or(UnknownStatus(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_round_trip() {
        for s in [
            "New",
            "Activating",
            "Running",
            "Completed",
            "Failed",
            "Stopping",
            "Stopped",
            "Suspending",
            "Suspended",
            "Resuming",
            "Disconnected",
        ] {
            let status = JobStatus::try_from(s.to_owned()).unwrap();
            assert_eq!(status.as_str(), s);
            assert_eq!(serde_json::to_value(status).unwrap(), serde_json::json!(s));
        }
        assert_eq!(JobStatus::parse("queued"), Some(JobStatus::New));
        assert!(JobStatus::try_from("Lost".to_owned()).is_err());
    }
}
