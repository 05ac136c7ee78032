//! Dead-letter objects in Event Grid's blob layout, through `object_store`
//! (a local directory by default; any other store can be plugged in).

use std::sync::Arc;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Datelike as _, Timelike as _, Utc};
use futures_util::TryStreamExt as _;
use herald_core::event::event_time;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, PutPayload};
use serde_json::Value;

/// Where dead-lettered events are written and read back for replay.
#[derive(Debug, Clone)]
pub struct DeadLetterStore {
    store: Arc<dyn ObjectStore>,
}

impl DeadLetterStore {
    /// A store rooted at a local directory, created if missing.
    pub fn local(root: &std::path::Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating dead-letter directory {}", root.display()))?;
        let fs = LocalFileSystem::new_with_prefix(root)
            .with_context(|| format!("opening dead-letter directory {}", root.display()))?;
        Ok(Self::from_store(Arc::new(fs)))
    }

    /// An S3-compatible bucket, `s3://bucket[/prefix]`. Credentials, region
    /// and endpoint come from the usual `AWS_*` variables (`AWS_ENDPOINT`
    /// and `AWS_ALLOW_HTTP=true` for MinIO-style local stores).
    pub fn s3(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| anyhow::anyhow!("dead-letter URL {url} must start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        anyhow::ensure!(!bucket.is_empty(), "dead-letter URL {url} names no bucket");
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .with_context(|| format!("configuring the S3 dead-letter store {url}"))?;
        let store: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
            Arc::new(store)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(
                store,
                prefix.trim_matches('/'),
            ))
        };
        Ok(Self::from_store(store))
    }

    /// A store over any `object_store` backend.
    pub fn from_store(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    /// `<container>/<SUBSCRIPTION-NAME-UPPERCASED>/<YYYY>/<M>/<D>/<H>/<guid>.json`
    /// in UTC without zero padding, e.g. `deadletters/MY-SUB/2019/8/8/5/<guid>.json`.
    pub fn object_path(
        container: &str,
        subscription: &str,
        at: DateTime<Utc>,
        id: uuid::Uuid,
    ) -> String {
        format!(
            "{container}/{}/{}/{}/{}/{}/{id}.json",
            subscription.to_ascii_uppercase(),
            at.year(),
            at.month(),
            at.day(),
            at.hour()
        )
    }

    /// Writes one blob holding a JSON array of the given events; returns its path.
    pub async fn write(
        &self,
        container: &str,
        subscription: &str,
        events: &[Value],
        at: DateTime<Utc>,
    ) -> anyhow::Result<String> {
        check_segment("container", container)?;
        check_segment("subscription", subscription)?;
        if events.is_empty() {
            bail!("no events to dead-letter");
        }
        let path = Self::object_path(container, subscription, at, uuid::Uuid::new_v4());
        let location = Path::parse(&path)?;
        let body = serde_json::to_vec(events).context("serialising dead-lettered events")?;
        self.store
            .put(&location, PutPayload::from(body))
            .await
            .with_context(|| format!("writing dead-letter object {path}"))?;
        Ok(path)
    }

    /// Paths of a subscription's dead-letter objects, oldest hour first.
    pub async fn list(&self, container: &str, subscription: &str) -> anyhow::Result<Vec<String>> {
        check_segment("container", container)?;
        check_segment("subscription", subscription)?;
        let prefix = Path::parse(format!("{container}/{}", subscription.to_ascii_uppercase()))?;
        let mut found: Vec<ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .with_context(|| format!("listing dead-letter objects under {prefix}"))?;
        found.retain(|meta| meta.location.as_ref().ends_with(".json"));
        // Non-padded date parts do not sort as text ("10" < "9"), so sort by
        // their numeric value, then by write time.
        found.sort_by_cached_key(|meta| {
            let hour: Vec<u32> = meta
                .location
                .parts()
                .skip(2)
                .take(4)
                .map(|part| part.as_ref().parse().unwrap_or(0))
                .collect();
            (hour, meta.last_modified, meta.location.to_string())
        });
        Ok(found
            .into_iter()
            .map(|meta| meta.location.to_string())
            .collect())
    }

    /// The events of one dead-letter object.
    pub async fn read(&self, path: &str) -> anyhow::Result<Vec<Value>> {
        let location =
            Path::parse(path).with_context(|| format!("invalid dead-letter path {path:?}"))?;
        let data = self
            .store
            .get(&location)
            .await
            .with_context(|| format!("reading dead-letter object {path}"))?
            .bytes()
            .await
            .with_context(|| format!("reading dead-letter object {path}"))?;
        serde_json::from_slice(&data)
            .with_context(|| format!("dead-letter object {path} is not a JSON array of events"))
    }
}

/// Container and subscription names become one path segment each, so they
/// must not carry separators or dot segments (a path escape on local disk).
fn check_segment(what: &str, value: &str) -> anyhow::Result<()> {
    let valid = !value.is_empty()
        && value.len() <= 255
        && !value.starts_with('.')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        bail!("invalid dead-letter {what} name {value:?}: use letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// Dead-letter facts recorded on each event.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterInfo<'a> {
    /// Why the event was dead-lettered, e.g. `MaxDeliveryAttemptsExceeded`.
    pub reason: &'a str,
    /// Attempts made before giving up.
    pub delivery_attempts: i64,
    /// The last attempt's outcome name, if there was an attempt.
    pub last_delivery_outcome: Option<&'a str>,
    /// The last attempt's HTTP status, if the receiver answered.
    pub last_http_status: Option<u16>,
    /// When the event was published to Herald.
    pub publish_time: DateTime<Utc>,
    /// When the last attempt was made.
    pub last_attempt_time: Option<DateTime<Utc>>,
}

/// Adds the dead-letter fields to an event in its delivery schema.
///
/// Event Grid: top-level `deadLetterReason`, `deliveryAttempts`,
/// `lastDeliveryOutcome`, `lastHttpStatusCode`, `publishTime`,
/// `lastDeliveryAttemptTime`. CloudEvents: the lower-case extension names
/// `deadletterreason`, `deliveryattempts`, `lastdeliveryoutcome`,
/// `lasthttpstatuscode`, `publishtime`. Optional facts that are `None` are
/// left out; times use Event Grid's seven fractional digits. A value that is
/// not a JSON object is returned unchanged.
pub fn annotate(mut event: Value, cloud_events: bool, info: &DeadLetterInfo<'_>) -> Value {
    let Some(fields) = event.as_object_mut() else {
        return event;
    };
    let mut set = |eg: &str, ce: &str, value: Value| {
        fields.insert(if cloud_events { ce } else { eg }.to_string(), value);
    };
    set("deadLetterReason", "deadletterreason", info.reason.into());
    set(
        "deliveryAttempts",
        "deliveryattempts",
        info.delivery_attempts.into(),
    );
    if let Some(outcome) = info.last_delivery_outcome {
        set("lastDeliveryOutcome", "lastdeliveryoutcome", outcome.into());
    }
    if let Some(status) = info.last_http_status {
        set("lastHttpStatusCode", "lasthttpstatuscode", status.into());
    }
    set(
        "publishTime",
        "publishtime",
        event_time(info.publish_time).into(),
    );
    // The CloudEvents dead-letter sample has no attempt-time attribute.
    if let (false, Some(at)) = (cloud_events, info.last_attempt_time) {
        fields.insert("lastDeliveryAttemptTime".to_string(), event_time(at).into());
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;
    use serde_json::json;

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 7, 9).unwrap()
    }

    #[test]
    fn path_layout() {
        let id = uuid::Uuid::parse_str("7e5b1a43-2f0a-4f8e-9a4b-0c1d2e3f4a5b").unwrap();
        assert_eq!(
            DeadLetterStore::object_path(
                "deadletters",
                "my-blob-subscription",
                at(2019, 8, 8, 5),
                id
            ),
            "deadletters/MY-BLOB-SUBSCRIPTION/2019/8/8/5/7e5b1a43-2f0a-4f8e-9a4b-0c1d2e3f4a5b.json"
        );
        assert_eq!(
            DeadLetterStore::object_path("dl", "Sub1", at(2024, 12, 31, 23), id),
            "dl/SUB1/2024/12/31/23/7e5b1a43-2f0a-4f8e-9a4b-0c1d2e3f4a5b.json"
        );
        assert_eq!(
            DeadLetterStore::object_path("dl", "s", at(2024, 1, 1, 0), id),
            "dl/S/2024/1/1/0/7e5b1a43-2f0a-4f8e-9a4b-0c1d2e3f4a5b.json"
        );
    }

    #[tokio::test]
    async fn write_list_read_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("dead");
        let store = DeadLetterStore::local(&root).unwrap();

        let first = vec![json!({"id": "1", "data": {"n": 1}})];
        let second = vec![json!({"id": "2"}), json!({"id": "3"})];
        let p2 = store
            .write("deadletters", "my-sub", &second, at(2019, 10, 1, 0))
            .await
            .unwrap();
        let p1 = store
            .write("deadletters", "my-sub", &first, at(2019, 8, 8, 5))
            .await
            .unwrap();
        store
            .write("deadletters", "my-sub-2", &first, at(2019, 8, 8, 5))
            .await
            .unwrap();

        assert!(p1.starts_with("deadletters/MY-SUB/2019/8/8/5/"), "{p1}");
        assert!(p1.ends_with(".json"));
        assert!(root.join(&p1).is_file(), "blob layout on disk");

        // Chronological, and not mixed with MY-SUB-2.
        let listed = store.list("deadletters", "My-Sub").await.unwrap();
        assert_eq!(listed, vec![p1.clone(), p2.clone()]);

        assert_eq!(store.read(&p1).await.unwrap(), first);
        assert_eq!(store.read(&p2).await.unwrap(), second);
        let raw: Value = serde_json::from_slice(&std::fs::read(root.join(&p2)).unwrap()).unwrap();
        assert!(raw.is_array());

        assert!(
            store
                .list("deadletters", "nobody")
                .await
                .unwrap()
                .is_empty()
        );
        assert!(store.list("other", "my-sub").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn rejects_bad_names_and_paths() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::local(dir.path()).unwrap();
        let events = [json!({"id": "1"})];
        let now = Utc::now();
        for (container, sub) in [
            ("..", "s"),
            ("c", "a/b"),
            ("c", ""),
            ("", "s"),
            ("c", ".."),
            ("c", "x\n"),
        ] {
            assert!(
                store.write(container, sub, &events, now).await.is_err(),
                "{container:?}/{sub:?}"
            );
            assert!(store.list(container, sub).await.is_err());
        }
        assert!(store.write("c", "s", &[], now).await.is_err());
        assert!(store.read("../etc/passwd").await.is_err());
        assert!(store.read("c/S/2019/1/1/1/missing.json").await.is_err());

        std::fs::create_dir_all(dir.path().join("c/S")).unwrap();
        std::fs::write(dir.path().join("c/S/junk.json"), b"{not json").unwrap();
        assert!(store.read("c/S/junk.json").await.is_err());
    }

    fn info() -> DeadLetterInfo<'static> {
        DeadLetterInfo {
            reason: "MaxDeliveryAttemptsExceeded",
            delivery_attempts: 1,
            last_delivery_outcome: Some("NotFound"),
            last_http_status: Some(404),
            publish_time: DateTime::parse_from_rfc3339("2020-08-13T17:18:14.0265758Z")
                .unwrap()
                .with_timezone(&Utc),
            last_attempt_time: Some(
                DateTime::parse_from_rfc3339("2020-08-13T17:18:14.0465788Z")
                    .unwrap()
                    .with_timezone(&Utc),
            ),
        }
    }

    #[test]
    fn annotate_event_grid() {
        let event = json!({"id": "93902694", "eventType": "Microsoft.Storage.BlobCreated", "data": {"api": "PutBlob"}});
        let out = annotate(event, false, &info());
        assert_eq!(
            out,
            json!({
                "id": "93902694", "eventType": "Microsoft.Storage.BlobCreated", "data": {"api": "PutBlob"},
                "deadLetterReason": "MaxDeliveryAttemptsExceeded", "deliveryAttempts": 1,
                "lastDeliveryOutcome": "NotFound", "lastHttpStatusCode": 404,
                "publishTime": "2020-08-13T17:18:14.0265758Z",
                "lastDeliveryAttemptTime": "2020-08-13T17:18:14.0465788Z"
            })
        );

        let sparse = DeadLetterInfo {
            reason: "TimeToLiveExceeded",
            last_delivery_outcome: None,
            last_http_status: None,
            last_attempt_time: None,
            ..info()
        };
        let out = annotate(json!({"id": "1"}), false, &sparse);
        assert_eq!(
            out,
            json!({"id": "1", "deadLetterReason": "TimeToLiveExceeded", "deliveryAttempts": 1,
                   "publishTime": "2020-08-13T17:18:14.0265758Z"})
        );
    }

    #[test]
    fn annotate_cloud_events() {
        let event = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
        let out = annotate(event, true, &info());
        assert_eq!(
            out,
            json!({
                "specversion": "1.0", "id": "1", "source": "/s", "type": "t",
                "deadletterreason": "MaxDeliveryAttemptsExceeded", "deliveryattempts": 1,
                "lastdeliveryoutcome": "NotFound", "lasthttpstatuscode": 404,
                "publishtime": "2020-08-13T17:18:14.0265758Z"
            })
        );
        // Not an object: returned as is rather than failing.
        assert_eq!(annotate(json!([1, 2]), true, &info()), json!([1, 2]));
    }
}
