//! The job state machine: what a stop request, a resume and a lost worker
//! do to a job, with the status details users read; and the queue's
//! concurrency cap.
//!
//! The rules live here and the store applies them: each is handed to the
//! store as a [`StatusRule`] or [`LapseRule`] and runs inside the
//! transaction that read the job's status under its row lock, the way the
//! router's `Matcher` runs inside a claim.

use crate::model::JobStatus;
use crate::model::RunbookSettings;
use herald_storage::{CapRule, JobDecision, LapseRule, LapsedJob, StatusChange, StatusRule};
use std::sync::Arc;

fn change(status: JobStatus, details: impl Into<String>) -> StatusChange {
    StatusChange {
        status,
        details: details.into(),
    }
}

/// A stop request: a job that has not started (queued, suspended, or
/// waiting after its worker was lost) is stopped at once; a leased or
/// running one is asked to stop and its worker reports the end; a job
/// already stopping or ended is left as it is.
pub fn on_stop_request(status: JobStatus) -> JobDecision {
    use JobStatus::*;
    match status {
        New | Suspended | Disconnected => JobDecision {
            changes: vec![change(Stopped, "stopped by user before it ran")],
            ends: true,
            requeue: false,
        },
        Activating | Running => JobDecision {
            changes: vec![change(Stopping, "stop requested by user")],
            ..JobDecision::default()
        },
        _ => JobDecision::default(),
    }
}

/// A resume: only a suspended job resumes, through `Resuming` back into
/// its queue (the store resets its restarts).
pub fn on_resume(status: JobStatus) -> JobDecision {
    match status {
        JobStatus::Suspended => JobDecision {
            changes: vec![
                change(JobStatus::Resuming, "resumed by user"),
                change(JobStatus::New, ""),
            ],
            ends: false,
            requeue: true,
        },
        _ => JobDecision::default(),
    }
}

/// A lapsed lease: the job is `Disconnected`, then stopped if a stop was
/// pending, suspended once it has lost its worker more than
/// `max_restarts` times, or queued again.
pub fn on_lease_lapse(job: &LapsedJob<'_>, max_restarts: i64) -> JobDecision {
    let lost = change(
        JobStatus::Disconnected,
        format!(
            "worker {} stopped sending heartbeats",
            job.worker.unwrap_or("?")
        ),
    );
    let restarts = job.restarts;
    if job.status == JobStatus::Stopping {
        JobDecision {
            changes: vec![
                lost,
                change(JobStatus::Stopped, "stopped: its worker was lost"),
            ],
            ends: true,
            requeue: false,
        }
    } else if restarts > max_restarts {
        JobDecision {
            changes: vec![
                lost,
                change(
                    JobStatus::Suspended,
                    format!(
                        "the job was attempted {restarts} times and its worker was lost each time"
                    ),
                ),
            ],
            ends: false,
            requeue: false,
        }
    } else {
        JobDecision {
            changes: vec![
                lost,
                change(
                    JobStatus::New,
                    format!("re-queued after restart {restarts}"),
                ),
            ],
            ends: false,
            requeue: true,
        }
    }
}

/// [`on_stop_request`] as the store takes it.
pub fn stop_rule() -> StatusRule {
    Arc::new(on_stop_request)
}

/// [`on_resume`] as the store takes it.
pub fn resume_rule() -> StatusRule {
    Arc::new(on_resume)
}

/// [`on_lease_lapse`] with the restart limit, as the store takes it.
pub fn lapse_rule(max_restarts: i64) -> LapseRule {
    Arc::new(move |job: &LapsedJob<'_>| on_lease_lapse(job, max_restarts))
}

/// A runbook's `maxConcurrentJobs`, read from its stored settings the way
/// every other setting is read, as the queue claim takes it. Settings that
/// do not parse have no cap, as they have the default of every other
/// setting.
pub fn cap_rule() -> CapRule {
    Arc::new(|stored: &str| {
        serde_json::from_str::<RunbookSettings>(stored)
            .ok()
            .and_then(|s| s.max_concurrent_jobs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_read_from_stored_settings() {
        let cap = cap_rule();
        assert_eq!(cap(r#"{"maxConcurrentJobs":2}"#), Some(2));
        let stored = serde_json::to_string(&RunbookSettings {
            max_concurrent_jobs: Some(7),
            ..RunbookSettings::default()
        })
        .unwrap();
        assert_eq!(cap(&stored), Some(7));
        assert_eq!(cap(r#"{"timeoutSeconds":60}"#), None);
        assert_eq!(cap("not json"), None);
    }

    fn statuses(d: &JobDecision) -> Vec<&str> {
        d.changes.iter().map(|c| c.status.as_str()).collect()
    }

    fn js(s: &str) -> JobStatus {
        JobStatus::parse(s).expect("a status name")
    }

    #[test]
    fn stop_depends_on_whether_the_job_started() {
        for s in ["New", "Suspended", "Disconnected"] {
            let d = on_stop_request(js(s));
            assert_eq!((statuses(&d), d.ends), (vec!["Stopped"], true), "{s}");
        }
        for s in ["Activating", "Running"] {
            let d = on_stop_request(js(s));
            assert_eq!((statuses(&d), d.ends), (vec!["Stopping"], false), "{s}");
        }
        for s in ["Stopping", "Stopped", "Completed", "Failed"] {
            assert_eq!(on_stop_request(js(s)), JobDecision::default(), "{s}");
        }
    }

    #[test]
    fn only_suspended_jobs_resume() {
        let d = on_resume(JobStatus::Suspended);
        assert_eq!(statuses(&d), ["Resuming", "New"]);
        assert!(d.requeue);
        for s in ["New", "Running", "Stopped"] {
            assert_eq!(on_resume(js(s)), JobDecision::default(), "{s}");
        }
    }

    #[test]
    fn a_lost_worker_requeues_then_suspends() {
        let job = |status, restarts| LapsedJob {
            status: js(status),
            restarts,
            worker: Some("w1"),
        };
        let d = on_lease_lapse(&job("Running", 1), 3);
        assert_eq!(statuses(&d), ["Disconnected", "New"]);
        assert_eq!(d.changes[0].details, "worker w1 stopped sending heartbeats");
        assert_eq!(d.changes[1].details, "re-queued after restart 1");
        assert!(d.requeue && !d.ends);
        let d = on_lease_lapse(&job("Activating", 4), 3);
        assert_eq!(statuses(&d), ["Disconnected", "Suspended"]);
        assert!(!d.requeue && !d.ends);
        let d = on_lease_lapse(&job("Stopping", 9), 3);
        assert_eq!(statuses(&d), ["Disconnected", "Stopped"]);
        assert!(d.ends && !d.requeue);
    }
}
