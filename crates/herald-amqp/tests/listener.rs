//! The listener over the in-memory backend, driven by an fe2o3-amqp client
//! and raw sockets (plaintext, 127.0.0.1:0).

mod common;

use std::time::{Duration, Instant};

use common::client::{Client, annotation, batch, inner_message, start};
use common::{KEY, KEY_NAME, MemBackend, SEND_KEY, SEND_KEY_NAME, sas_token};
use fe2o3_amqp::{
    Delivery, Sendable,
    link::{RecvError, SendError},
    types::{
        messaging::{AmqpValue, Body, Message, Outcome},
        primitives::{SimpleValue, Value},
    },
};
use herald_amqp::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "127.0.0.1";

fn backend() -> std::sync::Arc<MemBackend> {
    let b = MemBackend::new(&[NS, "localhost"]);
    b.create_hub(NS, "hub", 2);
    b
}

async fn recv(r: &mut fe2o3_amqp::Receiver) -> Message<Body<Value>> {
    let d: Delivery<Body<Value>> = tokio::time::timeout(Duration::from_secs(10), r.recv())
        .await
        .unwrap()
        .unwrap();
    d.into_message()
}

fn detach_condition(e: &RecvError) -> String {
    format!("{e:?}")
}

#[tokio::test]
async fn cbs_and_management_with_and_without_reply_to() {
    let (addr, shutdown, _h) = start(backend(), Limits::default()).await;
    let mut c = Client::connect(addr, NS).await;
    let aud = c.audience("hub");
    // bad signature -> 401
    let bad = sas_token(&aud, KEY_NAME, "bm90LXRoZS1rZXk=", Duration::from_secs(60));
    assert_eq!(c.put_token(&aud, &bad).await, 401);
    // expired -> 401
    let token = sas_token(&aud, KEY_NAME, KEY, Duration::from_secs(3600));
    // reply-to routing (fe2o3-amqp-cbs sends `cbs-client-node`)
    let (status, desc, _) = c
        .request(
            "$cbs",
            Some("cbs-client-node"),
            vec![
                ("operation", SimpleValue::String("put-token".into())),
                (
                    "type",
                    SimpleValue::String("servicebus.windows.net:sastoken".into()),
                ),
                ("name", SimpleValue::String(aud.clone())),
            ],
            Value::String(token.clone()),
        )
        .await;
    assert_eq!((status, desc.as_str()), (202, "Accepted"));
    // a repeated put-token is accepted too
    assert_eq!(c.put_token(&aud, &token).await, 202);

    let read = |ty: &str, partition: Option<&str>| {
        let mut app = vec![
            ("operation", SimpleValue::String("READ".into())),
            ("type", SimpleValue::String(ty.into())),
            ("name", SimpleValue::String("hub".into())),
        ];
        if let Some(p) = partition {
            app.push(("partition", SimpleValue::String(p.into())));
        }
        app
    };
    let (status, _, m) = c
        .request(
            "$management",
            None,
            read("com.microsoft:eventhub", None),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200);
    let Body::Value(AmqpValue(Value::Map(map))) = m.body else {
        panic!("map body")
    };
    let get = |k: &str| map.get(&Value::String(k.into())).cloned();
    assert_eq!(get("name"), Some(Value::String("hub".into())));
    assert_eq!(get("partition_count"), Some(Value::Int(2)));
    assert!(matches!(get("created_at"), Some(Value::Timestamp(_))));
    match get("partition_ids") {
        Some(Value::Array(a)) => assert_eq!(
            a.0,
            vec![Value::String("0".into()), Value::String("1".into())]
        ),
        other => panic!("partition_ids must be an array: {other:?}"),
    }
    let (status, _, m) = c
        .request(
            "$management",
            Some("mgmt-reply"),
            read("com.microsoft:partition", Some("1")),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200);
    let Body::Value(AmqpValue(Value::Map(map))) = m.body else {
        panic!("map body")
    };
    let get = |k: &str| map.get(&Value::String(k.into())).cloned();
    assert_eq!(get("partition"), Some(Value::String("1".into())));
    assert_eq!(get("begin_sequence_number"), Some(Value::Long(-1)));
    assert_eq!(get("last_enqueued_sequence_number"), Some(Value::Long(-1)));
    assert_eq!(
        get("last_enqueued_offset"),
        Some(Value::String("-1".into()))
    );
    assert!(matches!(
        get("last_enqueued_time_utc"),
        Some(Value::Timestamp(_))
    ));
    assert_eq!(get("is_partition_empty"), Some(Value::Bool(true)));
    // unknown hub -> 404 naming the entity (with a namespace-wide token)
    let ns_aud = format!("sb://{NS}/");
    let ns_token = sas_token(&ns_aud, KEY_NAME, KEY, Duration::from_secs(3600));
    assert_eq!(c.put_token(&ns_aud, &ns_token).await, 202);
    let mut app = read("com.microsoft:eventhub", None);
    app[2] = ("name", SimpleValue::String("nohub".into()));
    let (status, desc, _) = c.request("$management", None, app, Value::Null).await;
    assert_eq!(status, 404);
    assert!(desc.contains("sb://127.0.0.1/nohub"), "{desc}");
    c.close().await;
    shutdown.cancel();
}

#[tokio::test]
async fn batches_round_trip_with_annotations() {
    let b = backend();
    let (addr, shutdown, _h) = start(b.clone(), Limits::default()).await;
    let mut c = Client::connect(addr, NS).await;
    c.authorize("hub").await;
    let mut tx = c.producer("hub").await;
    let inner: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            inner_message(
                format!("ev{i}").as_bytes(),
                &[
                    ("n", SimpleValue::Int(i)),
                    ("s", SimpleValue::String("x".into())),
                ],
                Some("key-1"),
            )
        })
        .collect();
    let outcome = tx.send(batch(inner, Some("key-1"))).await.unwrap();
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    let appends = b.appends.lock().unwrap().clone();
    assert_eq!(appends.len(), 1, "one batch, one atomic append");
    let (_, partition, count) = appends[0].clone();
    assert_eq!(count, 3);

    let mut rx = c
        .consumer(
            "hub",
            &partition,
            Some("amqp.annotation.x-opt-offset > '-1'"),
            None,
            100,
        )
        .await
        .unwrap();
    for i in 0..3 {
        let m = recv(&mut rx).await;
        assert_eq!(
            annotation(&m, "x-opt-sequence-number"),
            Some(&Value::Long(i))
        );
        assert_eq!(
            annotation(&m, "x-opt-offset"),
            Some(&Value::String(i.to_string()))
        );
        assert!(matches!(
            annotation(&m, "x-opt-enqueued-time"),
            Some(Value::Timestamp(_))
        ));
        assert_eq!(
            annotation(&m, "x-opt-partition-key"),
            Some(&Value::String("key-1".into()))
        );
        let ap = m.application_properties.as_ref().unwrap();
        assert_eq!(ap.0.get("n"), Some(&SimpleValue::Int(i as i32)));
        assert_eq!(ap.0.get("s"), Some(&SimpleValue::String("x".into())));
        let Body::Data(data) = m.body else {
            panic!("data body")
        };
        assert_eq!(
            data.into_inner()[0].0.to_vec(),
            format!("ev{i}").into_bytes()
        );
    }
    c.close().await;
    shutdown.cancel();
}

#[tokio::test]
async fn many_pipelined_sends_never_exceed_credit() {
    let b = backend();
    let (addr, shutdown, _h) = start(b.clone(), Limits::default()).await;
    let mut c = Client::connect(addr, NS).await;
    c.authorize("hub").await;
    let mut tx = c.producer("hub/Partitions/0").await;
    let mut futs = Vec::new();
    for i in 0..12_000u32 {
        let s = Sendable::builder().message(format!("m{i}")).build();
        futs.push(tx.send_batchable(s).await.unwrap());
    }
    for f in futs {
        assert!(matches!(f.await.unwrap(), Outcome::Accepted(_)));
    }
    let total: usize = b.appends.lock().unwrap().iter().map(|a| a.2).sum();
    assert_eq!(total, 12_000);
    c.close().await;
    shutdown.cancel();
}

#[tokio::test]
async fn caught_up_consumer_gets_new_events_at_once() {
    let (addr, shutdown, _h) = start(backend(), Limits::default()).await;
    let mut c = Client::connect(addr, NS).await;
    c.authorize("hub").await;
    let mut tx = c.producer("hub/Partitions/1").await;
    tx.send(Sendable::builder().message("old").build())
        .await
        .unwrap();
    let mut rx = c
        .consumer(
            "hub",
            "1",
            Some("amqp.annotation.x-opt-offset > '@latest'"),
            None,
            300,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    tx.send(Sendable::builder().message("new").build())
        .await
        .unwrap();
    let m = recv(&mut rx).await;
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(
        annotation(&m, "x-opt-sequence-number"),
        Some(&Value::Long(1))
    );
    c.close().await;
    shutdown.cancel();
}

#[tokio::test]
async fn refused_links_carry_azure_conditions() {
    let (addr, shutdown, _h) = start(backend(), Limits::default()).await;
    // Send-only token: producing works, consuming is refused with the Listen text.
    let mut c = Client::connect(addr, NS).await;
    let aud = c.audience("hub");
    let t = sas_token(&aud, SEND_KEY_NAME, SEND_KEY, Duration::from_secs(3600));
    assert_eq!(c.put_token(&aud, &t).await, 202);
    let mut tx = c.producer("hub").await;
    assert!(
        tx.send(Sendable::builder().message("x").build())
            .await
            .unwrap()
            .is_accepted()
    );
    let mut rx = c.consumer("hub", "0", None, None, 10).await.unwrap();
    let e = rx.recv::<Body<Value>>().await.unwrap_err();
    let text = detach_condition(&e);
    assert!(
        text.contains("UnauthorizedAccess") && text.contains("'Listen' claim(s) are required"),
        "{text}"
    );
    c.close().await;

    let mut c = Client::connect(addr, NS).await;
    c.authorize("").await;
    // unknown hub
    let mut rx = c.consumer("nohub", "0", None, None, 10).await.unwrap();
    let text = detach_condition(&rx.recv::<Body<Value>>().await.unwrap_err());
    assert!(
        text.contains("NotFound")
            && text.contains("The messaging entity 'sb://127.0.0.1/nohub' could not be found"),
        "{text}"
    );
    // start past the end
    let mut rx = c
        .consumer(
            "hub",
            "0",
            Some("amqp.annotation.x-opt-sequence-number > '41'"),
            None,
            10,
        )
        .await
        .unwrap();
    let text = detach_condition(&rx.recv::<Body<Value>>().await.unwrap_err());
    assert!(
        text.contains("argument-out-of-range")
            && text.contains("The supplied sequence number '41' is invalid"),
        "{text}"
    );
    // unknown partition on a producer link
    let mut tx = c.producer("hub/Partitions/9").await;
    let e = tx
        .send(Sendable::builder().message("x").build())
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("NotFound"), "{e:?}");
    c.close().await;
    shutdown.cancel();
}

#[tokio::test]
async fn oversize_transfer_is_refused() {
    let (addr, shutdown, _h) = start(backend(), Limits::default()).await;
    let mut c = Client::connect(addr, NS).await;
    c.authorize("hub").await;
    let mut tx = c.producer("hub").await;
    assert_eq!(tx.max_message_size(), Some(1024 * 1024));
    // fe2o3's sender refuses locally; a raw peer is detached with message-size-exceeded.
    let big = vec![7u8; 1024 * 1024 + 10];
    let e = tx
        .send(
            Sendable::builder()
                .message(Body::<Value>::Data(
                    vec![fe2o3_amqp::types::messaging::Data(big.into())].into(),
                ))
                .build(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, SendError::MessageSizeExceeded(_)), "{e:?}");
    c.close().await;
    shutdown.cancel();
}

#[tokio::test]
async fn epoch_rules() {
    let (addr, shutdown, _h) = start(backend(), Limits::default()).await;
    let mut c = Client::connect(addr, NS).await;
    c.authorize("hub").await;
    let mut tx = c.producer("hub/Partitions/0").await;
    tx.send(Sendable::builder().message("x").build())
        .await
        .unwrap();
    let mut e5 = c.consumer("hub", "0", None, Some(5), 10).await.unwrap();
    recv(&mut e5).await;
    // lower epoch refused
    let mut e3 = c.consumer("hub", "0", None, Some(3), 10).await.unwrap();
    assert!(detach_condition(&e3.recv::<Body<Value>>().await.unwrap_err()).contains("Stolen"));
    // non-epoch refused while an epoch reader holds the partition
    let mut ne = c.consumer("hub", "0", None, None, 10).await.unwrap();
    assert!(detach_condition(&ne.recv::<Body<Value>>().await.unwrap_err()).contains("Stolen"));
    // higher epoch steals
    let mut e7 = c.consumer("hub", "0", None, Some(7), 10).await.unwrap();
    recv(&mut e7).await;
    assert!(detach_condition(&e5.recv::<Body<Value>>().await.unwrap_err()).contains("Stolen"));
    drop(e7);
    // partition 1: at most 5 non-epoch readers
    let mut keep = Vec::new();
    for _ in 0..5 {
        keep.push(c.consumer("hub", "1", None, None, 10).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut sixth = c.consumer("hub", "1", None, None, 10).await.unwrap();
    assert!(
        detach_condition(&sixth.recv::<Body<Value>>().await.unwrap_err())
            .contains("ResourceLimitExceeded")
    );
    c.close().await;
    shutdown.cancel();
}

#[tokio::test]
async fn expired_grant_detaches_links() {
    let (addr, shutdown, _h) = start(backend(), Limits::default()).await;
    let mut c = Client::connect(addr, NS).await;
    let aud = c.audience("hub");
    let t = sas_token(&aud, KEY_NAME, KEY, Duration::from_secs(2));
    assert_eq!(c.put_token(&aud, &t).await, 202);
    let mut rx = c.consumer("hub", "0", None, None, 10).await.unwrap();
    let started = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(10), rx.recv::<Body<Value>>())
        .await
        .unwrap()
        .unwrap_err();
    assert!(detach_condition(&e).contains("UnauthorizedAccess"), "{e:?}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    c.close().await;
    shutdown.cancel();
}

/// Raw peers that misbehave must not disturb a working client.
#[tokio::test]
async fn garbage_on_one_connection_does_not_affect_others() {
    let b = backend();
    let (addr, shutdown, _h) = start(b.clone(), Limits::default()).await;
    let mut good = Client::connect(addr, NS).await;
    good.authorize("hub").await;
    let mut tx = good.producer("hub/Partitions/0").await;

    let attacks: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"AMQP\x09\x09\x09\x09".to_vec(), // bad SASL header
        [
            b"AMQP\x03\x01\x00\x00".as_slice(),
            &[0xff, 0xff, 0xff, 0xff, 2, 1, 0, 0],
        ]
        .concat(), // 4 GB frame
        [
            b"AMQP\x03\x01\x00\x00".as_slice(),
            &[0, 0, 0, 40, 2, 1, 0, 0, 0x00, 0x53],
        ]
        .concat(), // truncated
        [
            b"AMQP\x03\x01\x00\x00".as_slice(),
            &[
                0, 0, 0, 16, 2, 1, 0, 0, 0x00, 0x53, 0x41, 0xd0, 0xff, 0xff, 0xff, 0xff,
            ],
        ]
        .concat(),
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
        b"AMQP\x00\x01\x00\x00\x00\x00\x00\x08\x02\x00\x00\x00".to_vec(), // AMQP without SASL
    ];
    for (i, a) in attacks.iter().enumerate() {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(a).await;
        if i % 2 == 0 {
            let _ = s.shutdown().await;
        }
        let mut buf = [0u8; 256];
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
        // the good client keeps working throughout
        assert!(
            tx.send(Sendable::builder().message(format!("ok{i}")).build())
                .await
                .unwrap()
                .is_accepted()
        );
    }
    // a half-sent SASL init left hanging, then a fresh client still works
    let mut hang = tokio::net::TcpStream::connect(addr).await.unwrap();
    hang.write_all(b"AMQP\x03\x01\x00\x00\x00\x00\x00\x30")
        .await
        .unwrap();
    let mut fresh = Client::connect(addr, NS).await;
    fresh.authorize("hub").await;
    let mut rx = fresh
        .consumer(
            "hub",
            "0",
            Some("amqp.annotation.x-opt-offset > '-1'"),
            None,
            100,
        )
        .await
        .unwrap();
    for i in 0..attacks.len() {
        let m = recv(&mut rx).await;
        assert_eq!(
            annotation(&m, "x-opt-sequence-number"),
            Some(&Value::Long(i as i64))
        );
    }
    drop(hang);
    good.close().await;
    fresh.close().await;
    shutdown.cancel();
}

async fn read_to_close(s: &mut tokio::net::TcpStream) -> usize {
    let mut buf = [0u8; 256];
    let mut total = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return total,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("connection not closed within 5 s"),
        }
    }
}

#[tokio::test]
async fn handshake_timeout_idle_reaping_and_connection_cap() {
    let limits = Limits {
        handshake_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(700),
        max_connections: 2,
        ..Limits::default()
    };
    let (addr, shutdown, _h) = start(backend(), limits).await;
    // silent peer: closed after the handshake timeout
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let t = Instant::now();
    let got = read_to_close(&mut s).await;
    assert!(got <= 8, "at most the server's protocol header");
    assert!(
        t.elapsed() >= Duration::from_millis(250) && t.elapsed() < Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    drop(s);
    tokio::time::sleep(Duration::from_millis(50)).await;

    // two connections fill the cap; a third is closed at once
    let c1 = Client::connect(addr, NS).await;
    let c2 = Client::connect(addr, NS).await;
    let mut s3 = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s3.write_all(b"AMQP\x03\x01\x00\x00").await;
    assert_eq!(
        read_to_close(&mut s3).await,
        0,
        "over the cap: closed without an answer"
    );
    // an idle connection is reaped
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        c1.conn.is_closed() || {
            let mut c1 = c1;
            tokio::time::timeout(Duration::from_secs(2), c1.conn.on_close())
                .await
                .is_ok()
        }
    );
    drop(c2);
    shutdown.cancel();
}

#[tokio::test]
async fn shutdown_closes_connections_and_serve_returns() {
    let (addr, shutdown, h) = start(backend(), Limits::default()).await;
    let mut c = Client::connect(addr, NS).await;
    c.authorize("hub").await;
    shutdown.cancel();
    let r = tokio::time::timeout(Duration::from_secs(15), h)
        .await
        .unwrap()
        .unwrap();
    assert!(r.is_ok());
    let closed = tokio::time::timeout(Duration::from_secs(5), c.conn.on_close()).await;
    assert!(closed.is_ok());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listening socket is closed"
    );
}

#[tokio::test]
async fn sasl_plain_is_a_namespace_wide_credential() {
    use fe2o3_amqp::{Connection, Session, sasl_profile::SaslProfile};
    let (addr, shutdown, _h) = start(backend(), Limits::default()).await;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut conn = Connection::builder()
        .container_id("plain-client")
        .hostname(NS)
        .sasl_profile(SaslProfile::Plain {
            username: KEY_NAME.into(),
            password: KEY.into(),
        })
        .open_with_stream(stream)
        .await
        .unwrap();
    let mut session = Session::begin(&mut conn).await.unwrap();
    let mut tx =
        fe2o3_amqp::Sender::attach(&mut session, "plain-sender", format!("amqps://{NS}/hub"))
            .await
            .unwrap();
    assert!(
        tx.send(Sendable::builder().message("no cbs needed").build())
            .await
            .unwrap()
            .is_accepted()
    );
    let _ = conn.close().await;
    // a wrong PLAIN key closes the connection
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let r = Connection::builder()
        .container_id("bad-plain")
        .hostname(NS)
        .sasl_profile(SaslProfile::Plain {
            username: KEY_NAME.into(),
            password: "wrong".into(),
        })
        .open_with_stream(stream)
        .await;
    if let Ok(mut conn) = r {
        let closed = tokio::time::timeout(Duration::from_secs(5), conn.on_close()).await;
        assert!(matches!(closed, Ok(Err(_))), "{closed:?}");
    }
    shutdown.cancel();
}
