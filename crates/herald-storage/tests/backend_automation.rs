//! AutomationStore scenarios, written once and run on SQLite and on
//! PostgreSQL (when HERALD_TEST_DATABASE_URL or CI=true provides one), plus
//! PostgreSQL-only races between several nodes on one database: claims,
//! concurrency caps, idempotency keys, lease sweeps and stream appends.

// A test binary has no outside: its helpers are `pub` for its own modules.
#![allow(unreachable_pub)]

mod common;

use herald_automation::transitions::{cap_rule, lapse_rule, resume_rule, stop_rule};
use herald_storage::*;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

// ---------------------------------------------------------------- fixtures

fn runbook(name: &str, settings: &str) -> RunbookRecord {
    RunbookRecord {
        id: format!("rb-{}", name.to_lowercase()).into(),
        key: name.to_lowercase(),
        name: name.to_owned(),
        kind: "bash".into(),
        description: format!("{name} runbook"),
        draft: format!("echo {name}"),
        draft_params: "[]".into(),
        settings: settings.to_owned(),
        published_version: None,
        created: 1_000,
        updated: 1_000,
    }
}

fn webhook(name: &str, runbook_id: &str, token: &str) -> WebhookRecord {
    WebhookRecord {
        id: format!("wh-{name}").into(),
        key: name.to_lowercase(),
        name: name.to_owned(),
        runbook_id: runbook_id.into(),
        token_hash: token.to_owned(),
        is_enabled: true,
        expiry: 9_999_999,
        parameters: r#"{"a":"1"}"#.into(),
        secure_parameters: Some(vec![1, 2, 3, 0, 255]),
        run_on: String::new(),
        description: "hook".into(),
        last_invoked: None,
        created: 2_000,
        updated: 2_000,
    }
}

/// A queued job; ids sort like creation times (as uuid v7 ids do).
fn job(n: i64, runbook_id: &str, run_on: &str) -> JobRecord {
    JobRecord {
        id: format!("job-{n:06}").into(),
        runbook_id: runbook_id.into(),
        runbook_name: runbook_id.trim_start_matches("rb-").to_owned(),
        runbook_version: 1,
        started_by: "tester".into(),
        run_on: run_on.to_owned(),
        status: JobStatus::New,
        status_details: String::new(),
        exception: None,
        parameters: r#"{"x":"***"}"#.into(),
        input: vec![7, 0, 7, n as u8],
        created: 10_000 + n,
        start_time: None,
        end_time: None,
        last_modified: 10_000 + n,
        last_status_modified: 10_000 + n,
        worker: None,
        lease_until: None,
        restarts: 0,
        sandbox: None,
        exit_code: None,
    }
}

fn rec(stream: &str, text: &str, value: Option<&str>) -> StreamRecord {
    StreamRecord {
        seq: 0,
        stream: stream.to_owned(),
        time: 50_000,
        text: text.to_owned(),
        value: value.map(str::to_owned),
    }
}

fn end(status: &str, at: i64) -> JobEnd {
    JobEnd {
        status: JobStatus::parse(status).expect("a status name"),
        details: format!("{status} details"),
        exception: (status == "Failed").then(|| "boom".to_owned()),
        exit_code: Some(if status == "Failed" { 3 } else { 0 }),
        at,
    }
}

async fn statuses(s: &dyn AutomationStore, id: &str) -> Vec<String> {
    let t = s.job_transitions(id).await.unwrap();
    let seqs: Vec<i64> = t.iter().map(|t| t.seq).collect();
    let want: Vec<i64> = (1..=t.len() as i64).collect();
    assert_eq!(seqs, want, "transition seqs of {id} are 1..n");
    t.into_iter()
        .map(|t| t.status.as_str().to_owned())
        .collect()
}

async fn new_job(s: &dyn AutomationStore, j: &JobRecord) {
    assert_eq!(
        s.create_job(j, None, None).await.unwrap(),
        JobCreated::Created
    );
}

// ---------------------------------------------------------------- scenarios

async fn scenario_runbooks(s: &dyn AutomationStore) {
    let a = runbook("Alpha", "{}");
    let b = runbook("beta", r#"{"timeoutSeconds":5}"#);
    assert!(s.create_runbook(&b).await.unwrap());
    assert!(s.create_runbook(&a).await.unwrap());
    let mut taken = runbook("ALPHA", "{}");
    taken.id = "rb-other".into();
    assert!(!s.create_runbook(&taken).await.unwrap(), "name taken");

    assert_eq!(s.runbook("alpha").await.unwrap(), Some(a.clone()));
    assert_eq!(s.runbook("nope").await.unwrap(), None);
    assert_eq!(s.runbook_by_id("rb-beta").await.unwrap(), Some(b.clone()));
    assert_eq!(s.runbook_by_id("rb-nope").await.unwrap(), None);
    let keys: Vec<String> = s
        .list_runbooks()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(keys, ["alpha", "beta"]);

    // update replaces draft, params, settings, description.
    let mut a2 = a.clone();
    a2.draft = "echo v1".into();
    a2.draft_params = r#"[{"name":"p"}]"#.into();
    a2.settings = r#"{"maxConcurrentJobs":1}"#.into();
    a2.description = "changed".into();
    a2.updated = 1_500;
    assert!(s.update_runbook(&a2).await.unwrap());
    assert!(!s.update_runbook(&runbook("ghost", "{}")).await.unwrap());
    assert_eq!(s.runbook("alpha").await.unwrap(), Some(a2.clone()));

    // publish freezes the draft as consecutive versions.
    assert_eq!(s.publish_runbook("alpha", 2_000).await.unwrap(), Some(1));
    let mut a3 = a2.clone();
    a3.draft = "echo v2".into();
    a3.updated = 2_500;
    assert!(s.update_runbook(&a3).await.unwrap());
    assert_eq!(s.publish_runbook("alpha", 3_000).await.unwrap(), Some(2));
    assert_eq!(s.publish_runbook("ghost", 3_000).await.unwrap(), None);
    let got = s.runbook("alpha").await.unwrap().unwrap();
    assert_eq!(got.published_version, Some(2));
    assert_eq!(got.updated, 3_000);
    assert_eq!(
        s.runbook_version("rb-alpha", 1).await.unwrap(),
        Some(RunbookVersionRecord {
            runbook_id: "rb-alpha".into(),
            version: 1,
            content: "echo v1".into(),
            params: r#"[{"name":"p"}]"#.into(),
            published: 2_000,
        })
    );
    assert_eq!(
        s.runbook_version("rb-alpha", 2)
            .await
            .unwrap()
            .unwrap()
            .content,
        "echo v2"
    );
    assert_eq!(s.runbook_version("rb-alpha", 3).await.unwrap(), None);

    // delete takes its webhooks and versions; its jobs stay.
    assert!(
        s.create_webhook(&webhook("hook", "rb-alpha", "tok-a"), false)
            .await
            .unwrap()
    );
    new_job(s, &job(1, "rb-alpha", "")).await;
    assert!(s.delete_runbook("alpha").await.unwrap());
    assert!(!s.delete_runbook("alpha").await.unwrap());
    assert_eq!(s.runbook("alpha").await.unwrap(), None);
    assert_eq!(s.runbook_version("rb-alpha", 1).await.unwrap(), None);
    assert_eq!(s.webhook("hook").await.unwrap(), None);
    assert!(s.job("job-000001").await.unwrap().is_some());
    // The name is free again.
    assert!(s.create_runbook(&a).await.unwrap());
}

async fn scenario_webhooks(s: &dyn AutomationStore) {
    assert!(s.create_runbook(&runbook("rb", "{}")).await.unwrap());
    assert!(s.create_runbook(&runbook("other", "{}")).await.unwrap());

    // Pending tokens: consumed by the bind, unknown ones refused.
    s.put_pending_webhook_token("pending-1", 100_000_000)
        .await
        .unwrap();
    assert!(
        !s.create_webhook(&webhook("w0", "rb-rb", "never-minted"), true)
            .await
            .unwrap()
    );
    let w1 = webhook("W1", "rb-rb", "pending-1");
    assert!(s.create_webhook(&w1, true).await.unwrap());
    let mut again = webhook("w1b", "rb-rb", "pending-1");
    again.id = "wh-again".into();
    assert!(!s.create_webhook(&again, true).await.unwrap(), "consumed");

    // Pending tokens older than a day are dropped by the next mint.
    s.put_pending_webhook_token("stale", 1_000).await.unwrap();
    s.put_pending_webhook_token("fresh", 100_000_000)
        .await
        .unwrap();
    assert!(
        !s.create_webhook(&webhook("w-stale", "rb-rb", "stale"), true)
            .await
            .unwrap()
    );

    // Name and token are unique.
    let mut dup = webhook("w1", "rb-rb", "tok-other");
    dup.id = "wh-dup".into();
    assert!(!s.create_webhook(&dup, false).await.unwrap(), "name taken");
    let mut w2 = webhook("w2", "rb-other", "tok-2");
    w2.secure_parameters = None;
    w2.run_on = "grp".into();
    assert!(s.create_webhook(&w2, false).await.unwrap());
    let w3 = webhook("a3", "rb-rb", "tok-3");
    assert!(s.create_webhook(&w3, false).await.unwrap());

    assert_eq!(s.webhook("w1").await.unwrap(), Some(w1.clone()));
    assert_eq!(s.webhook("nope").await.unwrap(), None);
    assert_eq!(s.webhook_by_token("tok-2").await.unwrap(), Some(w2.clone()));
    assert_eq!(s.webhook_by_token("tok-x").await.unwrap(), None);
    let all: Vec<String> = s
        .list_webhooks(None)
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.key)
        .collect();
    assert_eq!(all, ["a3", "w1", "w2"]);
    let of_rb: Vec<String> = s
        .list_webhooks(Some("rb-rb"))
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.key)
        .collect();
    assert_eq!(of_rb, ["a3", "w1"]);
    assert!(s.list_webhooks(Some("rb-none")).await.unwrap().is_empty());

    // Patches touch only what they name.
    let got = s
        .update_webhook(
            "w1",
            &WebhookPatch {
                is_enabled: Some(false),
                secure_parameters: Some(None),
                run_on: Some("linux".into()),
                updated: 3_000,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    let mut want = w1.clone();
    want.is_enabled = false;
    want.secure_parameters = None;
    want.run_on = "linux".into();
    want.updated = 3_000;
    assert_eq!(got, want);
    let got = s
        .update_webhook(
            "w1",
            &WebhookPatch {
                expiry: Some(42),
                parameters: Some("{}".into()),
                secure_parameters: Some(Some(vec![9, 9])),
                description: Some("new".into()),
                updated: 4_000,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    want.expiry = 42;
    want.parameters = "{}".into();
    want.secure_parameters = Some(vec![9, 9]);
    want.description = "new".into();
    want.updated = 4_000;
    assert_eq!(got, want);
    assert_eq!(s.webhook("w1").await.unwrap(), Some(want));
    assert_eq!(
        s.update_webhook(
            "nope",
            &WebhookPatch {
                updated: 1,
                ..Default::default()
            }
        )
        .await
        .unwrap(),
        None
    );

    assert!(s.delete_webhook("w2").await.unwrap());
    assert!(!s.delete_webhook("w2").await.unwrap());
    assert_eq!(s.webhook_by_token("tok-2").await.unwrap(), None);
}

async fn scenario_create_and_list_jobs(s: &dyn AutomationStore) {
    assert!(s.create_runbook(&runbook("rb", "{}")).await.unwrap());
    assert!(
        s.create_webhook(&webhook("hook", "rb-rb", "tok"), false)
            .await
            .unwrap()
    );

    // Idempotency: a key seen within `since` returns the original job.
    let j1 = job(1, "rb-rb", "");
    assert_eq!(
        s.create_job(
            &j1,
            Some(("wh-hook", "key-1", 0)),
            Some(("wh-hook", 12_345))
        )
        .await
        .unwrap(),
        JobCreated::Created
    );
    assert_eq!(s.job(&j1.id).await.unwrap(), Some(j1.clone()));
    assert_eq!(
        s.webhook("hook").await.unwrap().unwrap().last_invoked,
        Some(12_345)
    );
    let j2 = job(2, "rb-rb", "");
    assert_eq!(
        s.create_job(
            &j2,
            Some(("wh-hook", "key-1", 0)),
            Some(("wh-hook", 99_999))
        )
        .await
        .unwrap(),
        JobCreated::Existing(j1.id.to_string())
    );
    assert_eq!(s.job(&j2.id).await.unwrap(), None, "nothing written");
    assert_eq!(
        s.webhook("hook").await.unwrap().unwrap().last_invoked,
        Some(12_345),
        "a duplicate does not stamp the webhook"
    );
    // The same key on another webhook is another key.
    assert_eq!(
        s.create_job(&j2, Some(("wh-other", "key-1", 0)), None)
            .await
            .unwrap(),
        JobCreated::Created
    );
    // A key older than `since` is replaced.
    let j3 = job(3, "rb-rb", "");
    assert_eq!(
        s.create_job(&j3, Some(("wh-hook", "key-1", j1.created + 1)), None)
            .await
            .unwrap(),
        JobCreated::Created
    );
    let j4 = job(4, "rb-rb", "");
    assert_eq!(
        s.create_job(&j4, Some(("wh-hook", "key-1", j1.created + 1)), None)
            .await
            .unwrap(),
        JobCreated::Existing(j3.id.to_string())
    );
    assert_eq!(statuses(s, &j1.id).await, ["New"]);
    let t = &s.job_transitions(&j1.id).await.unwrap()[0];
    assert_eq!((t.details.as_str(), t.at), ("", j1.created));
    assert!(s.job_transitions("job-nope").await.unwrap().is_empty());

    // More jobs on another runbook and group, for filters.
    let mut j5 = job(5, "rb-x", "grp");
    j5.status = JobStatus::Suspended;
    new_job(s, &j5).await;
    new_job(s, &job(6, "rb-x", "grp")).await;

    let ids = |v: Vec<JobRecord>| v.into_iter().map(|j| j.id).collect::<Vec<_>>();
    let all = s
        .list_jobs(&JobFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        ids(all),
        [
            "job-000006",
            "job-000005",
            "job-000003",
            "job-000002",
            "job-000001"
        ]
    );
    let page = s
        .list_jobs(&JobFilter {
            limit: 2,
            before_id: Some("job-000005".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(page), ["job-000003", "job-000002"]);
    let filtered = s
        .list_jobs(&JobFilter {
            status: Some(JobStatus::New),
            runbook_id: Some("rb-x".into()),
            created_after: Some(10_006),
            limit: 0, // clamped to 1
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(filtered), ["job-000006"]);
    assert!(
        s.list_jobs(&JobFilter {
            status: Some(JobStatus::Running),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty()
    );
    assert_eq!(
        s.count_jobs_by_status().await.unwrap(),
        [("New".to_owned(), 4), ("Suspended".to_owned(), 1)]
    );
}

async fn scenario_claim_and_run(s: &dyn AutomationStore) {
    assert!(s.create_runbook(&runbook("rb", "{}")).await.unwrap());
    // Created out of order: claims go oldest first.
    for n in [3, 1, 2] {
        new_job(s, &job(n, "rb-rb", "")).await;
    }
    new_job(s, &job(4, "rb-rb", "linux")).await;
    new_job(s, &job(5, "rb-rb", "")).await;

    assert!(
        s.claim_jobs("", "w1", 0, 1, 1, cap_rule())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.claim_jobs("", "w1", -1, 1, 1, cap_rule())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.claim_jobs("windows", "w1", 5, 1, 1, cap_rule())
            .await
            .unwrap()
            .is_empty()
    );
    let got = s
        .claim_jobs("", "w1", 2, 90_000, 20_000, cap_rule())
        .await
        .unwrap();
    let ids: Vec<&str> = got.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["job-000001", "job-000002"]);
    for j in &got {
        assert_eq!(j.status, JobStatus::Activating);
        assert_eq!(j.worker.as_deref(), Some("w1"));
        assert_eq!(j.lease_until, Some(90_000));
        assert_eq!(j.start_time, Some(20_000));
        assert_eq!(j.last_status_modified, 20_000);
        assert_eq!(s.job(&j.id).await.unwrap().as_ref(), Some(j));
    }
    let linux = s
        .claim_jobs("linux", "w2", 5, 90_000, 20_000, cap_rule())
        .await
        .unwrap();
    assert_eq!(linux.len(), 1);
    assert_eq!(linux[0].id, "job-000004");

    // start_job: only the leaseholder, only from Activating.
    assert!(!s.start_job("job-000001", "w2", "sb", 21_000).await.unwrap());
    assert!(
        s.start_job("job-000001", "w1", "sb-1", 21_000)
            .await
            .unwrap()
    );
    assert!(
        !s.start_job("job-000001", "w1", "sb-1", 21_000)
            .await
            .unwrap()
    );
    let j = s.job("job-000001").await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Running);
    assert_eq!(j.sandbox.as_deref(), Some("sb-1"));
    assert_eq!(
        statuses(s, "job-000001").await,
        ["New", "Activating", "Running"]
    );

    // heartbeat: the leaseholder gets the status, others nothing.
    assert_eq!(
        s.heartbeat_job("job-000001", "w1", 95_000).await.unwrap(),
        Some("Running".into())
    );
    assert_eq!(
        s.job("job-000001").await.unwrap().unwrap().lease_until,
        Some(95_000)
    );
    assert_eq!(s.heartbeat_job("job-000001", "w2", 1).await.unwrap(), None);
    assert_eq!(s.heartbeat_job("job-000003", "w1", 1).await.unwrap(), None);

    // Streams: numbered per job, capped by bytes, filtered on read.
    assert_eq!(
        s.append_records("job-nope", &[rec("Output", "x", None)], 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(s.append_records("job-000001", &[], 100).await.unwrap(), 0);
    let first = [
        rec("Output", "hello", None),
        rec("Error", "bad", Some(r#"{"code":1}"#)),
        rec("Output", "world", None),
    ];
    assert_eq!(s.append_records("job-000001", &first, 30).await.unwrap(), 3);
    // 5 + 13 + 5 = 23 bytes used; 7 left: 6 + 1 bytes fit exactly, the rest is dropped.
    let second = [
        rec("Output", "abcdef", None),
        rec("Output", "z", None),
        rec("Verbose", "dropped", None),
    ];
    assert_eq!(
        s.append_records("job-000001", &second, 30).await.unwrap(),
        5
    );
    assert_eq!(
        s.append_records("job-000001", &second, 30).await.unwrap(),
        5
    );
    let all = s.read_records("job-000001", 0, None, 100).await.unwrap();
    let got: Vec<(i64, &str, &str)> = all
        .iter()
        .map(|r| (r.seq, r.stream.as_str(), r.text.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1, "Output", "hello"),
            (2, "Error", "bad"),
            (3, "Output", "world"),
            (4, "Output", "abcdef"),
            (5, "Output", "z"),
        ]
    );
    assert_eq!(all[1].value.as_deref(), Some(r#"{"code":1}"#));
    assert_eq!(all[1].time, 50_000);
    let outs: Vec<i64> = s
        .read_records("job-000001", 1, Some("Output"), 2)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(outs, [3, 4]);
    assert!(
        s.read_records("job-000002", 0, None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Job tokens, revoked when the job ends.
    s.put_job_token("jt-1", "job-000001", 99_000).await.unwrap();
    assert_eq!(
        s.job_token("jt-1").await.unwrap(),
        Some(("job-000001".into(), 99_000))
    );
    assert_eq!(s.job_token("jt-x").await.unwrap(), None);

    // finish: leaseholder only, once.
    assert!(
        !s.finish_job("job-000001", Some("w2"), &end("Completed", 30_000))
            .await
            .unwrap()
    );
    assert!(
        s.finish_job("job-000001", Some("w1"), &end("Failed", 30_000))
            .await
            .unwrap()
    );
    assert!(
        !s.finish_job("job-000001", Some("w1"), &end("Completed", 31_000))
            .await
            .unwrap()
    );
    assert!(
        !s.finish_job("job-000001", None, &end("Completed", 31_000))
            .await
            .unwrap()
    );
    let j = s.job("job-000001").await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.status_details, "Failed details");
    assert_eq!(j.exception.as_deref(), Some("boom"));
    assert_eq!(j.exit_code, Some(3));
    assert_eq!(j.end_time, Some(30_000));
    assert_eq!((j.worker, j.lease_until), (None, None));
    assert_eq!(s.job_token("jt-1").await.unwrap(), None, "revoked");
    assert_eq!(
        statuses(s, "job-000001").await,
        ["New", "Activating", "Running", "Failed"]
    );
    // Anyone may end a job with worker None (e.g. an admin or a timeout).
    assert!(
        s.finish_job("job-000002", None, &end("Completed", 32_000))
            .await
            .unwrap()
    );
    assert_eq!(
        s.job("job-000002").await.unwrap().unwrap().exit_code,
        Some(0)
    );

    let counts: HashMap<String, i64> = s
        .count_jobs_by_status()
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(counts.get("Failed"), Some(&1));
    assert_eq!(counts.get("Completed"), Some(&1));
    assert_eq!(counts.get("Activating"), Some(&1));
    assert_eq!(counts.get("New"), Some(&2));
}

async fn scenario_concurrency_cap(s: &dyn AutomationStore) {
    assert!(
        s.create_runbook(&runbook("capped", r#"{"maxConcurrentJobs":2}"#))
            .await
            .unwrap()
    );
    assert!(
        s.create_runbook(&runbook("free", r#"{"timeoutSeconds":9}"#))
            .await
            .unwrap()
    );
    for n in 1..=4 {
        new_job(s, &job(n, "rb-capped", "")).await;
    }
    new_job(s, &job(5, "rb-free", "")).await;
    // A job whose runbook is gone has no cap.
    new_job(s, &job(6, "rb-deleted", "")).await;
    new_job(s, &job(7, "rb-capped", "")).await;

    let got = s
        .claim_jobs("", "w1", 10, 90_000, 20_000, cap_rule())
        .await
        .unwrap();
    let ids: Vec<&str> = got.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(
        ids,
        ["job-000001", "job-000002", "job-000005", "job-000006"]
    );
    assert!(
        s.claim_jobs("", "w2", 10, 90_000, 20_000, cap_rule())
            .await
            .unwrap()
            .is_empty()
    );
    // Ending one frees a slot: the oldest waiting job of the runbook goes.
    assert!(
        s.finish_job("job-000001", Some("w1"), &end("Completed", 21_000))
            .await
            .unwrap()
    );
    let got = s
        .claim_jobs("", "w2", 10, 90_000, 22_000, cap_rule())
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, "job-000003");
    // Running and Stopping jobs count too.
    assert!(s.start_job("job-000002", "w1", "sb", 23_000).await.unwrap());
    let stopping = s
        .request_stop("job-000002", 24_000, stop_rule())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stopping.status, JobStatus::Stopping);
    assert!(
        s.claim_jobs("", "w3", 10, 90_000, 25_000, cap_rule())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn scenario_stop_resume_expire(s: &dyn AutomationStore) {
    assert!(s.create_runbook(&runbook("rb", "{}")).await.unwrap());
    for n in 1..=6 {
        new_job(s, &job(n, "rb-rb", "")).await;
    }
    let mut suspended = job(7, "rb-rb", "");
    suspended.status = JobStatus::Suspended;
    new_job(s, &suspended).await;

    assert_eq!(
        s.request_stop("job-nope", 1, stop_rule()).await.unwrap(),
        None
    );
    // Queued → Stopped at once.
    let j = s
        .request_stop("job-000006", 15_000, stop_rule())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(j.status, JobStatus::Stopped);
    assert_eq!(j.status_details, "stopped by user before it ran");
    assert_eq!(j.end_time, Some(15_000));
    // Terminal: unchanged.
    let again = s
        .request_stop("job-000006", 16_000, stop_rule())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, j);
    assert_eq!(statuses(s, "job-000006").await, ["New", "Stopped"]);
    let j = s
        .request_stop("job-000007", 15_000, stop_rule())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(j.status, JobStatus::Stopped);

    // Leases: jobs 1..=5 go to w1 with lease 50_000; job 5 stops (Stopping).
    let got = s
        .claim_jobs("", "w1", 5, 50_000, 20_000, cap_rule())
        .await
        .unwrap();
    assert_eq!(got.len(), 5);
    assert!(s.start_job("job-000002", "w1", "sb", 21_000).await.unwrap());
    let j = s
        .request_stop("job-000005", 22_000, stop_rule())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (j.status.as_str(), j.worker.as_deref()),
        ("Stopping", Some("w1"))
    );
    assert_eq!(
        s.heartbeat_job("job-000005", "w1", 50_000).await.unwrap(),
        Some("Stopping".into())
    );
    // Job 4's worker keeps heart-beating; its lease has not lapsed.
    assert_eq!(
        s.heartbeat_job("job-000004", "w1", 200_000).await.unwrap(),
        Some("Activating".into())
    );
    s.put_job_token("jt-1", "job-000001", 999_999)
        .await
        .unwrap();
    assert!(
        s.expire_leases(49_999, lapse_rule(2))
            .await
            .unwrap()
            .is_empty()
    );
    let mut lapsed = s.expire_leases(60_000, lapse_rule(2)).await.unwrap();
    lapsed.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    let got: Vec<(&str, &str)> = lapsed
        .iter()
        .map(|l| (l.job_id.as_str(), l.status.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("job-000001", "New"),
            ("job-000002", "New"),
            ("job-000003", "New"),
            ("job-000005", "Stopped"),
        ]
    );
    assert!(lapsed.iter().all(|l| l.worker.as_deref() == Some("w1")));
    assert_eq!(s.job_token("jt-1").await.unwrap(), None, "revoked");
    let j = s.job("job-000001").await.unwrap().unwrap();
    assert_eq!((j.status.as_str(), j.restarts), ("New", 1));
    assert_eq!((j.worker, j.lease_until), (None, None));
    assert_eq!(j.status_details, "re-queued after restart 1");
    assert_eq!(
        statuses(s, "job-000002").await,
        ["New", "Activating", "Running", "Disconnected", "New"]
    );
    let t = s.job_transitions("job-000002").await.unwrap();
    assert_eq!(t[3].details, "worker w1 stopped sending heartbeats");
    let j5 = s.job("job-000005").await.unwrap().unwrap();
    assert_eq!((j5.status.as_str(), j5.end_time), ("Stopped", Some(60_000)));
    assert_eq!(
        statuses(s, "job-000005").await,
        ["New", "Activating", "Stopping", "Disconnected", "Stopped"]
    );
    assert_eq!(
        s.job("job-000004").await.unwrap().unwrap().status,
        JobStatus::Activating
    );
    // A finished lease-holder that lost its lease cannot finish any more.
    assert!(
        !s.finish_job("job-000001", Some("w1"), &end("Completed", 61_000))
            .await
            .unwrap()
    );

    // Two more losses of job 3: restart 2 re-queues, restart 3 suspends.
    for (round, want) in [(2, "New"), (3, "Suspended")] {
        let now = 100_000 * round;
        let got = s
            .claim_jobs("", "w9", 3, now + 1, now, cap_rule())
            .await
            .unwrap();
        assert!(got.iter().any(|j| j.id == "job-000003"), "round {round}");
        for j in got.iter().filter(|j| j.id != "job-000003") {
            assert!(
                s.finish_job(&j.id, Some("w9"), &end("Completed", now))
                    .await
                    .unwrap()
            );
        }
        let lapsed = s.expire_leases(now + 2, lapse_rule(2)).await.unwrap();
        let l3 = lapsed.iter().find(|l| l.job_id == "job-000003").unwrap();
        assert_eq!(l3.status.as_str(), want, "round {round}");
        assert_eq!(l3.worker.as_deref(), Some("w9"));
    }
    let j3 = s.job("job-000003").await.unwrap().unwrap();
    assert_eq!((j3.status.as_str(), j3.restarts), ("Suspended", 3));
    assert_eq!(
        j3.status_details,
        "the job was attempted 3 times and its worker was lost each time"
    );

    // Resume: Suspended → Resuming → New, restarts reset; only from Suspended.
    assert!(
        s.resume_job("job-000003", 400_000, resume_rule())
            .await
            .unwrap()
    );
    assert!(
        !s.resume_job("job-000003", 400_000, resume_rule())
            .await
            .unwrap()
    );
    assert!(
        !s.resume_job("job-000004", 400_000, resume_rule())
            .await
            .unwrap()
    );
    assert!(
        !s.resume_job("job-nope", 400_000, resume_rule())
            .await
            .unwrap()
    );
    let j3 = s.job("job-000003").await.unwrap().unwrap();
    assert_eq!(
        (j3.status.as_str(), j3.restarts, j3.end_time),
        ("New", 0, None)
    );
    let hist = statuses(s, "job-000003").await;
    assert_eq!(&hist[hist.len() - 3..], ["Suspended", "Resuming", "New"]);
    // Stop an Activating job: Stopping, then the worker reports Stopped.
    let claimed = s
        .claim_jobs("", "w1", 5, 400_010, 400_001, cap_rule())
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, "job-000003");
    let j = s
        .request_stop("job-000003", 400_002, stop_rule())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(j.status, JobStatus::Stopping);
    assert!(
        s.finish_job("job-000003", Some("w1"), &end("Stopped", 400_003))
            .await
            .unwrap()
    );
    assert_eq!(
        s.job("job-000003").await.unwrap().unwrap().status,
        JobStatus::Stopped
    );
}

async fn scenario_prune(s: &dyn AutomationStore) {
    assert!(s.create_runbook(&runbook("rb", "{}")).await.unwrap());
    assert!(
        s.create_webhook(&webhook("hook", "rb-rb", "tok"), false)
            .await
            .unwrap()
    );
    for n in 1..=4 {
        let idem = format!("k{n}");
        let created = s
            .create_job(&job(n, "rb-rb", ""), Some(("wh-hook", &idem, 0)), None)
            .await
            .unwrap();
        assert_eq!(created, JobCreated::Created);
    }
    let got = s
        .claim_jobs("", "w", 3, 99_000, 20_000, cap_rule())
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    s.append_records("job-000001", &[rec("Output", "x", None)], 100)
        .await
        .unwrap();
    assert!(
        s.finish_job("job-000001", None, &end("Completed", 30_000))
            .await
            .unwrap()
    );
    assert!(
        s.finish_job("job-000002", None, &end("Failed", 40_000))
            .await
            .unwrap()
    );
    // Job 3 stays active; job 4 stays queued.
    s.put_job_token("old", "job-000003", 5_000).await.unwrap();
    s.put_job_token("live", "job-000003", 500_000)
        .await
        .unwrap();

    // Only finished jobs that ended before `before`; keys created before `keys_before`.
    assert_eq!(s.prune_jobs(35_000, 10_003).await.unwrap(), 1);
    assert_eq!(s.job("job-000001").await.unwrap(), None);
    assert!(s.job_transitions("job-000001").await.unwrap().is_empty());
    assert!(
        s.read_records("job-000001", 0, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.job("job-000002").await.unwrap().is_some());
    assert_eq!(s.job_token("old").await.unwrap(), None);
    assert!(s.job_token("live").await.unwrap().is_some());
    // Keys k1, k2 (created 10_001, 10_002) are gone: reusable; k3 stays.
    assert_eq!(
        s.create_job(&job(10, "rb-rb", ""), Some(("wh-hook", "k2", 0)), None)
            .await
            .unwrap(),
        JobCreated::Created
    );
    assert_eq!(
        s.create_job(&job(11, "rb-rb", ""), Some(("wh-hook", "k3", 0)), None)
            .await
            .unwrap(),
        JobCreated::Existing("job-000003".into())
    );
    assert_eq!(s.prune_jobs(1_000_000, 0).await.unwrap(), 1);
    assert_eq!(s.prune_jobs(1_000_000, 0).await.unwrap(), 0);
    assert!(s.job("job-000003").await.unwrap().is_some());
    assert!(s.job("job-000004").await.unwrap().is_some());
}

async fn scenario_assets_and_workers(s: &dyn AutomationStore) {
    let var = AssetRecord {
        key: "var1".into(),
        name: "Var1".into(),
        kind: "variable".into(),
        encrypted: false,
        username: None,
        value: b"\"plain\"".to_vec(),
        description: String::new(),
        created: 1_000,
        updated: 1_000,
    };
    let cred = AssetRecord {
        key: "cred".into(),
        name: "Cred".into(),
        kind: "credential".into(),
        encrypted: true,
        username: Some("admin".into()),
        value: vec![0, 1, 2, 254, 255],
        description: "login".into(),
        created: 1_000,
        updated: 1_000,
    };
    s.put_asset(&var).await.unwrap();
    s.put_asset(&cred).await.unwrap();
    assert_eq!(s.asset("var1").await.unwrap(), Some(var.clone()));
    assert_eq!(s.asset("cred").await.unwrap(), Some(cred.clone()));
    assert_eq!(s.asset("nope").await.unwrap(), None);
    // An upsert keeps `created`.
    let mut var2 = var.clone();
    var2.encrypted = true;
    var2.value = vec![5, 5];
    var2.description = "sealed".into();
    var2.created = 9_999;
    var2.updated = 2_000;
    s.put_asset(&var2).await.unwrap();
    let got = s.asset("var1").await.unwrap().unwrap();
    assert_eq!(got.created, 1_000);
    assert_eq!(
        (got.encrypted, got.value.clone(), got.updated),
        (true, vec![5, 5], 2_000)
    );
    let keys: Vec<String> = s
        .list_assets()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.key)
        .collect();
    assert_eq!(keys, ["cred", "var1"]);
    assert!(s.delete_asset("cred").await.unwrap());
    assert!(!s.delete_asset("cred").await.unwrap());
    assert_eq!(s.list_assets().await.unwrap().len(), 1);

    let w = |id: &str, group: &str, seen: i64| WorkerRecord {
        id: id.into(),
        group: group.into(),
        hostname: format!("host-{id}"),
        slots: 4,
        last_seen: seen,
    };
    s.touch_worker(&w("b", "linux", 1_000)).await.unwrap();
    s.touch_worker(&w("a", "linux", 1_000)).await.unwrap();
    s.touch_worker(&w("c", "arm", 500)).await.unwrap();
    let mut moved = w("b", "gpu", 2_000);
    moved.slots = 8;
    s.touch_worker(&moved).await.unwrap();
    let got = s.list_workers(1_000).await.unwrap();
    assert_eq!(got, [moved.clone(), w("a", "linux", 1_000)]);
    let ids: Vec<String> = s
        .list_workers(0)
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(ids, ["c", "b", "a"]);
}

macro_rules! both_engines {
    ($name:ident, $scenario:ident) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                let (_dir, sqlite) = common::sqlite().await;
                super::$scenario(&sqlite).await;
            }

            #[tokio::test]
            #[ignore = "needs PostgreSQL: set HERALD_TEST_DATABASE_URL and pass --include-ignored (see README)"]
            async fn postgres() {
                let pg = common::postgres().await.expect("PostgreSQL is configured");
                super::$scenario(&pg).await;
            }
        }
    };
}

both_engines!(runbooks, scenario_runbooks);
both_engines!(webhooks, scenario_webhooks);
both_engines!(create_and_list_jobs, scenario_create_and_list_jobs);
both_engines!(claim_and_run, scenario_claim_and_run);
both_engines!(concurrency_cap, scenario_concurrency_cap);
both_engines!(stop_resume_expire, scenario_stop_resume_expire);
both_engines!(prune, scenario_prune);
both_engines!(assets_and_workers, scenario_assets_and_workers);

// ------------------------------------------- PostgreSQL: several nodes racing

/// Two nodes (two pools, two listeners) on one fresh database.
async fn pg_nodes() -> Option<(Arc<PgStorage>, Arc<PgStorage>)> {
    let url = common::fresh_pg_url().await?;
    let a = PgStorage::open(&url).await.expect("open node a");
    let b = PgStorage::open(&url).await.expect("open node b");
    Some((Arc::new(a), Arc::new(b)))
}

fn pick(a: &Arc<PgStorage>, b: &Arc<PgStorage>, i: usize) -> Arc<PgStorage> {
    if i.is_multiple_of(2) {
        a.clone()
    } else {
        b.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set HERALD_TEST_DATABASE_URL and pass --include-ignored (see README)"]
async fn pg_claimers_never_share_a_job() {
    let Some((a, b)) = pg_nodes().await else {
        return;
    };
    assert!(a.create_runbook(&runbook("rb", "{}")).await.unwrap());
    const JOBS: i64 = 60;
    for n in 1..=JOBS {
        new_job(&*a, &job(n, "rb-rb", "")).await;
    }
    let mut tasks = Vec::new();
    for i in 0..8 {
        let node = pick(&a, &b, i);
        tasks.push(tokio::spawn(async move {
            let worker = format!("w{i}");
            let mut mine = Vec::new();
            loop {
                let got = node
                    .claim_jobs("", &worker, 3, 1_000_000, 20_000, cap_rule())
                    .await
                    .unwrap();
                if got.is_empty() {
                    break;
                }
                for j in got {
                    assert_eq!(j.worker.as_deref(), Some(worker.as_str()));
                    mine.push(j.id);
                }
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: BTreeSet<&JobId> = all.iter().collect();
    assert_eq!(all.len() as i64, JOBS, "every job leased exactly once");
    assert_eq!(unique.len() as i64, JOBS);
    for id in &all {
        assert_eq!(statuses(&*a, id).await, ["New", "Activating"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set HERALD_TEST_DATABASE_URL and pass --include-ignored (see README)"]
async fn pg_concurrency_cap_holds_across_nodes() {
    let Some((a, b)) = pg_nodes().await else {
        return;
    };
    assert!(
        a.create_runbook(&runbook("capped", r#"{"maxConcurrentJobs":3}"#))
            .await
            .unwrap()
    );
    assert!(a.create_runbook(&runbook("free", "{}")).await.unwrap());
    // The queue's head is all capped jobs. Claimers asking for one job each
    // lock disjoint windows of candidates (SKIP LOCKED), so without the
    // runbook lock each would count the same active jobs and overshoot.
    for n in 1..=30 {
        let rb = if n > 24 { "rb-free" } else { "rb-capped" };
        new_job(&*a, &job(n, rb, "")).await;
    }
    for round in 0..3 {
        let start = Arc::new(tokio::sync::Barrier::new(8));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let node = pick(&a, &b, i);
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                node.claim_jobs(
                    "",
                    &format!("w{round}-{i}"),
                    1,
                    1_000_000,
                    20_000,
                    cap_rule(),
                )
                .await
                .unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let active = a
            .list_jobs(&JobFilter {
                runbook_id: Some("rb-capped".into()),
                status: Some(JobStatus::Activating),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            active.len(),
            3,
            "round {round}: the cap holds, no overshoot"
        );
    }
    // Whatever the racing claimers passed over (locked by another) is free now.
    a.claim_jobs("", "last", 100, 1_000_000, 20_000, cap_rule())
        .await
        .unwrap();
    let free = a
        .list_jobs(&JobFilter {
            runbook_id: Some("rb-free".into()),
            status: Some(JobStatus::Activating),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(free.len(), 6, "uncapped runbooks all leased");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set HERALD_TEST_DATABASE_URL and pass --include-ignored (see README)"]
async fn pg_racing_idempotency_keys_agree_on_one_job() {
    let Some((a, b)) = pg_nodes().await else {
        return;
    };
    assert!(a.create_runbook(&runbook("rb", "{}")).await.unwrap());
    assert!(
        a.create_webhook(&webhook("hook", "rb-rb", "tok"), false)
            .await
            .unwrap()
    );
    for key in ["k1", "k2", "k3"] {
        let mut tasks = Vec::new();
        for i in 0..10usize {
            let node = pick(&a, &b, i);
            let mut j = job(i as i64, "rb-rb", "");
            j.id = format!("job-{key}-{i:02}").into();
            tasks.push(tokio::spawn(async move {
                let got = node
                    .create_job(&j, Some(("wh-hook", key, 0)), Some(("wh-hook", 5)))
                    .await
                    .unwrap();
                (j.id.to_string(), got)
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let created: Vec<&String> = results
            .iter()
            .filter(|(_, c)| *c == JobCreated::Created)
            .map(|(id, _)| id)
            .collect();
        assert_eq!(created.len(), 1, "{key}: exactly one call creates the job");
        let winner = created[0].clone();
        for (_, c) in &results {
            if let JobCreated::Existing(id) = c {
                assert_eq!(id, &winner, "{key}: duplicates return the original");
            }
        }
        let jobs = a
            .list_jobs(&JobFilter {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        let prefix = format!("job-{key}-");
        let mine: Vec<String> = jobs
            .into_iter()
            .map(|j| j.id.to_string())
            .filter(|id| id.starts_with(&prefix))
            .collect();
        assert_eq!(mine, [winner]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set HERALD_TEST_DATABASE_URL and pass --include-ignored (see README)"]
async fn pg_lease_sweeps_never_double_process() {
    let Some((a, b)) = pg_nodes().await else {
        return;
    };
    assert!(a.create_runbook(&runbook("rb", "{}")).await.unwrap());
    const JOBS: usize = 80;
    for n in 1..=JOBS as i64 {
        new_job(&*a, &job(n, "rb-rb", "")).await;
    }
    let got = a
        .claim_jobs("", "w", JOBS as i64, 50_000, 20_000, cap_rule())
        .await
        .unwrap();
    assert_eq!(got.len(), JOBS);
    let mut tasks = Vec::new();
    for i in 0..6 {
        let node = pick(&a, &b, i);
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            // Keep sweeping until nothing is left, as a node's loop would.
            loop {
                let lapsed = node.expire_leases(60_000, lapse_rule(5)).await.unwrap();
                if lapsed.is_empty() {
                    break;
                }
                mine.extend(lapsed);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), JOBS, "each lapsed lease processed once");
    let unique: BTreeSet<&str> = all.iter().map(|l| l.job_id.as_str()).collect();
    assert_eq!(unique.len(), JOBS);
    for l in &all {
        assert_eq!(l.status, JobStatus::New);
        let j = a.job(&l.job_id).await.unwrap().unwrap();
        assert_eq!((j.status.as_str(), j.restarts), ("New", 1));
        assert_eq!(
            statuses(&*a, &l.job_id).await,
            ["New", "Activating", "Disconnected", "New"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set HERALD_TEST_DATABASE_URL and pass --include-ignored (see README)"]
async fn pg_lease_holder_and_sweeper_race() {
    // A worker finishing (or heart-beating) while a sweeper expires its
    // lease: exactly one of them wins, and the history stays consistent.
    let Some((a, b)) = pg_nodes().await else {
        return;
    };
    assert!(a.create_runbook(&runbook("rb", "{}")).await.unwrap());
    const JOBS: i64 = 40;
    for n in 1..=JOBS {
        new_job(&*a, &job(n, "rb-rb", "")).await;
    }
    let got = a
        .claim_jobs("", "w", JOBS, 50_000, 20_000, cap_rule())
        .await
        .unwrap();
    assert_eq!(got.len() as i64, JOBS);
    let finisher = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut won = 0;
            for n in 1..=JOBS {
                let id = format!("job-{n:06}");
                if a.finish_job(&id, Some("w"), &end("Completed", 70_000))
                    .await
                    .unwrap()
                {
                    won += 1;
                }
            }
            won
        })
    };
    let sweeper = {
        let b = b.clone();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let l = b.expire_leases(60_000, lapse_rule(5)).await.unwrap();
                if l.is_empty() {
                    break;
                }
                n += l.len();
            }
            n
        })
    };
    let finished = finisher.await.unwrap();
    let swept = sweeper.await.unwrap() as i64;
    assert_eq!(finished + swept, JOBS);
    for n in 1..=JOBS {
        let id = format!("job-{n:06}");
        let hist = statuses(&*a, &id).await;
        let j = a.job(&id).await.unwrap().unwrap();
        match j.status.as_str() {
            "Completed" => assert_eq!(hist, ["New", "Activating", "Completed"]),
            "New" => assert_eq!(hist, ["New", "Activating", "Disconnected", "New"]),
            other => panic!("{id}: unexpected {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set HERALD_TEST_DATABASE_URL and pass --include-ignored (see README)"]
async fn pg_concurrent_appends_and_transitions_keep_sequences() {
    let Some((a, b)) = pg_nodes().await else {
        return;
    };
    assert!(a.create_runbook(&runbook("rb", "{}")).await.unwrap());
    new_job(&*a, &job(1, "rb-rb", "")).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let node = pick(&a, &b, i);
        tasks.push(tokio::spawn(async move {
            for k in 0..10 {
                let r = [
                    rec("Output", &format!("{i}-{k}"), None),
                    rec("Output", "x", None),
                ];
                node.append_records("job-000001", &r, 1_000_000)
                    .await
                    .unwrap();
            }
        }));
    }
    // Meanwhile: lease/lapse churn on the job's history from both nodes
    // (claim → Activating, sweep → Disconnected → New).
    for i in 0..4 {
        let node = pick(&a, &b, i);
        tasks.push(tokio::spawn(async move {
            // Appenders hold the job's row lock most of the time, and
            // claims skip locked rows: retry until a few claims land.
            let mut landed = 0;
            for _ in 0..2_000 {
                let got = node
                    .claim_jobs("", &format!("w{i}"), 1, 0, 20_000, cap_rule())
                    .await
                    .unwrap();
                landed += got.len();
                node.expire_leases(1, lapse_rule(1_000)).await.unwrap();
                if landed >= 3 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let recs = a.read_records("job-000001", 0, None, 10_000).await.unwrap();
    let seqs: Vec<i64> = recs.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=160).collect::<Vec<_>>());
    // `statuses` asserts seqs are exactly 1..n.
    let hist = statuses(&*a, "job-000001").await;
    assert!(hist.len() > 1, "some claims got through: {hist:?}");
    let cycles = (hist.len() - 1) / 3;
    let mut want = vec!["New".to_owned()];
    for _ in 0..cycles {
        want.extend(["Activating", "Disconnected", "New"].map(str::to_owned));
    }
    if hist.len() % 3 == 2 {
        want.push("Activating".to_owned());
    }
    assert_eq!(hist, want);
    let j = a.job("job-000001").await.unwrap().unwrap();
    assert_eq!(j.restarts as usize, cycles);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set HERALD_TEST_DATABASE_URL and pass --include-ignored (see README)"]
async fn pg_new_jobs_wake_other_nodes() {
    let Some((a, b)) = pg_nodes().await else {
        return;
    };
    let mut wake = b.wakeups().expect("postgres has wake-ups");
    assert!(a.create_runbook(&runbook("rb", "{}")).await.unwrap());
    // The listener connects in the background: keep creating until one lands.
    let hinted = |want: &'static str, rx: &mut tokio::sync::broadcast::Receiver<String>| {
        let mut rx = rx.resubscribe();
        async move {
            tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    if let Ok(p) = rx.recv().await
                        && p == want
                    {
                        return;
                    }
                }
            })
            .await
            .is_ok()
        }
    };
    let mut ok = false;
    for n in 1..=10 {
        let waiting = tokio::spawn(hinted("job:linux", &mut wake));
        tokio::time::sleep(Duration::from_millis(50)).await;
        new_job(&*a, &job(n, "rb-rb", "linux")).await;
        if waiting.await.unwrap() {
            ok = true;
            break;
        }
    }
    assert!(ok, "create_job sends job:<group>");

    // A re-queue by the lease sweep and a resume send it too.
    let got = a
        .claim_jobs("linux", "w", 100, 50_000, 20_000, cap_rule())
        .await
        .unwrap();
    assert!(!got.is_empty());
    let waiting = tokio::spawn(hinted("job:linux", &mut wake));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let lapsed = a.expire_leases(60_000, lapse_rule(0)).await.unwrap();
    assert!(lapsed.iter().all(|l| l.status == JobStatus::Suspended));
    // Suspended, not re-queued: no hint expected from that sweep; resume sends one.
    assert!(
        a.resume_job(&lapsed[0].job_id, 70_000, resume_rule())
            .await
            .unwrap()
    );
    assert!(waiting.await.unwrap(), "resume_job sends job:<group>");

    let got = a
        .claim_jobs("linux", "w", 1, 80_000, 75_000, cap_rule())
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let waiting = tokio::spawn(hinted("job:linux", &mut wake));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let lapsed = a.expire_leases(90_000, lapse_rule(5)).await.unwrap();
    assert_eq!(lapsed.len(), 1);
    assert_eq!(lapsed[0].status, JobStatus::New);
    assert!(
        waiting.await.unwrap(),
        "expire_leases re-queue sends job:<group>"
    );
}
