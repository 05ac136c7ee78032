//! BlobStore scenarios, written once and run on SQLite and on PostgreSQL
//! (when HERALD_TEST_DATABASE_URL or CI=true provides one): accounts,
//! containers, compare-and-set blob writes, staged blocks, and listings
//! that page in byte order on both engines.

#![allow(unreachable_pub)]

mod common;

use herald_storage::*;

fn account(name: &str) -> StorageAccountRecord {
    StorageAccountRecord {
        name: name.to_owned(),
        key1: vec![1; 8],
        key2: vec![2; 8],
        created: 5,
    }
}

fn container(account: &str, name: &str) -> ContainerRecord {
    ContainerRecord {
        account: account.to_owned(),
        name: name.to_owned(),
        metadata: "{}".into(),
        etag: format!("\"c-{name}\""),
        last_modified: 7,
    }
}

fn blob(name: &str, etag: &str, parts: &str) -> BlobRecord {
    BlobRecord {
        account: "acct".into(),
        container: "data".into(),
        name: name.to_owned(),
        etag: etag.to_owned(),
        created: 10,
        last_modified: 11,
        size: 3,
        content_type: "text/plain".into(),
        content_encoding: None,
        content_language: None,
        content_md5: Some("md5".into()),
        cache_control: None,
        content_disposition: None,
        metadata: r#"{"k":"v"}"#.into(),
        parts: parts.to_owned(),
    }
}

fn block(blob: &str, id: &str, key: &str) -> BlockRecord {
    BlockRecord {
        account: "acct".into(),
        container: "data".into(),
        blob: blob.to_owned(),
        block_id: id.to_owned(),
        object_key: key.to_owned(),
        size: 4,
        created: 20,
    }
}

async fn scenario_accounts_and_containers(s: &dyn Storage) {
    assert!(s.create_storage_account(&account("acct")).await.unwrap());
    assert!(
        !s.create_storage_account(&account("acct")).await.unwrap(),
        "names are unique"
    );
    assert!(s.set_storage_account_key("acct", 2, &[9; 8]).await.unwrap());
    let a = s.storage_account("acct").await.unwrap().unwrap();
    assert_eq!((a.key1, a.key2), (vec![1; 8], vec![9; 8]));
    assert!(!s.set_storage_account_key("nosuch", 1, &[0]).await.unwrap());

    assert!(
        !s.create_container(&container("nosuch", "data"))
            .await
            .unwrap(),
        "no account, no container"
    );
    for n in ["data", "logs-a", "logs-b", "logs-c"] {
        assert!(s.create_container(&container("acct", n)).await.unwrap());
    }
    assert!(
        !s.create_container(&container("acct", "data"))
            .await
            .unwrap()
    );
    let page = s.list_containers("acct", "logs-", "", 2).await.unwrap();
    let names: Vec<_> = page.items.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["logs-a", "logs-b"]);
    assert_eq!(page.next.as_deref(), Some("logs-b"));
    let rest = s
        .list_containers("acct", "logs-", "logs-b", 2)
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.next, None);
    assert!(
        s.set_container_metadata("acct", "data", r#"{"a":"b"}"#, "\"e2\"", 9)
            .await
            .unwrap()
    );
    let c = s.container("acct", "data").await.unwrap().unwrap();
    assert_eq!(
        (c.metadata.as_str(), c.etag.as_str(), c.last_modified),
        (r#"{"a":"b"}"#, "\"e2\"", 9)
    );
    assert_eq!(
        s.delete_container("acct", "logs-c").await.unwrap(),
        Some(vec![])
    );
    assert_eq!(s.delete_container("acct", "logs-c").await.unwrap(), None);
}

async fn scenario_blob_compare_and_set(s: &dyn Storage) {
    s.create_storage_account(&account("acct")).await.unwrap();
    s.create_container(&container("acct", "data"))
        .await
        .unwrap();
    let p1 = r#"[{"id":"","key":"c/1","size":3}]"#;
    let p2 = r#"[{"id":"","key":"c/2","size":3}]"#;
    assert_eq!(
        s.put_blob(&blob("x", "\"e1\"", p1), Expect::Absent)
            .await
            .unwrap(),
        BlobWrite::Written {
            replaced: None,
            staged: vec![]
        }
    );
    assert_eq!(
        s.put_blob(&blob("x", "\"e9\"", p2), Expect::Absent)
            .await
            .unwrap(),
        BlobWrite::Changed,
        "If-None-Match: * loses to the first writer"
    );
    assert_eq!(
        s.put_blob(&blob("x", "\"e2\"", p2), Expect::Etag("\"stale\"".into()))
            .await
            .unwrap(),
        BlobWrite::Changed
    );
    assert_eq!(
        s.put_blob(&blob("x", "\"e2\"", p2), Expect::Etag("\"e1\"".into()))
            .await
            .unwrap(),
        BlobWrite::Written {
            replaced: Some(p1.into()),
            staged: vec![]
        }
    );
    let got = s.blob("acct", "data", "x").await.unwrap().unwrap();
    assert_eq!((got.etag.as_str(), got.parts.as_str()), ("\"e2\"", p2));
    let mut other = blob("y", "\"e1\"", p1);
    other.container = "nosuch".into();
    assert_eq!(
        s.put_blob(&other, Expect::Absent).await.unwrap(),
        BlobWrite::NoContainer
    );

    // Two writers race with the same expectation: exactly one wins.
    let (b3, b4) = (blob("x", "\"e3\"", p1), blob("x", "\"e4\"", p1));
    let (a, b) = tokio::join!(
        s.put_blob(&b3, Expect::Etag("\"e2\"".into())),
        s.put_blob(&b4, Expect::Etag("\"e2\"".into())),
    );
    let wins = [a.unwrap(), b.unwrap()]
        .iter()
        .filter(|w| matches!(w, BlobWrite::Written { .. }))
        .count();
    assert_eq!(wins, 1);

    assert_eq!(
        s.delete_blob("acct", "data", "x", Some("\"stale\""))
            .await
            .unwrap(),
        None
    );
    let current = s.blob("acct", "data", "x").await.unwrap().unwrap().etag;
    assert_eq!(
        s.delete_blob("acct", "data", "x", Some(&current))
            .await
            .unwrap(),
        Some((p1.to_owned(), vec![]))
    );
    assert!(s.blob("acct", "data", "x").await.unwrap().is_none());
}

async fn scenario_blocks_and_listing(s: &dyn Storage) {
    s.create_storage_account(&account("acct")).await.unwrap();
    s.create_container(&container("acct", "data"))
        .await
        .unwrap();
    assert_eq!(
        s.put_block(&block("big", "AAA=", "b/1")).await.unwrap(),
        (true, None)
    );
    assert_eq!(
        s.put_block(&block("big", "AAA=", "b/2")).await.unwrap(),
        (true, Some("b/1".into())),
        "a block staged again replaces the first"
    );
    s.put_block(&block("big", "AAE=", "b/3")).await.unwrap();
    let mut nosuch = block("big", "AAA=", "b/4");
    nosuch.container = "nosuch".into();
    assert_eq!(s.put_block(&nosuch).await.unwrap(), (false, None));
    let staged = s.blocks("acct", "data", "big").await.unwrap();
    assert_eq!(staged.len(), 2);
    // Committing ends staging: every staged key comes back for the caller
    // to keep (if committed) or delete.
    let parts = r#"[{"id":"AAA=","key":"b/2","size":4}]"#;
    match s
        .put_blob(&blob("big", "\"e1\"", parts), Expect::Absent)
        .await
        .unwrap()
    {
        BlobWrite::Written { staged, .. } => {
            let mut staged = staged;
            staged.sort();
            assert_eq!(staged, ["b/2", "b/3"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(s.blocks("acct", "data", "big").await.unwrap().is_empty());

    // Byte order on both engines: "B" < "a" < "a/" < "ab" < "é".
    for n in ["a", "a/1", "a/2", "ab", "B", "é"] {
        s.put_blob(&blob(n, "\"e\"", "[]"), Expect::Absent)
            .await
            .unwrap();
    }
    let all = s.list_blobs("acct", "data", "", "", 100).await.unwrap();
    let names: Vec<_> = all.items.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["B", "a", "a/1", "a/2", "ab", "big", "é"]);
    let page = s.list_blobs("acct", "data", "a/", "", 1).await.unwrap();
    assert_eq!(page.items[0].name, "a/1");
    assert_eq!(page.next.as_deref(), Some("a/1"));
    let next = s.list_blobs("acct", "data", "a/", "a/1", 1).await.unwrap();
    assert_eq!(next.items[0].name, "a/2");
    assert_eq!(next.next, None);

    // Deleting the account takes everything, and names what to delete.
    let mut keys = s.delete_storage_account("acct").await.unwrap().unwrap();
    keys.sort();
    assert_eq!(keys, ["b/2"]);
    assert!(s.container("acct", "data").await.unwrap().is_none());
    assert!(s.blob("acct", "data", "a").await.unwrap().is_none());
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

both_engines!(accounts_and_containers, scenario_accounts_and_containers);
both_engines!(blob_compare_and_set, scenario_blob_compare_and_set);
both_engines!(blocks_and_listing, scenario_blocks_and_listing);
