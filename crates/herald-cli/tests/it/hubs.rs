//! Hubs over HTTPS: the management API (namespaces, hubs, consumer groups,
//! SAS policies and their connection strings), REST send as Event Hubs
//! serves it, and Herald's pull and checkpoint extension, with SAS tokens
//! checked exactly as the spec says.

use crate::helpers::*;
use herald_hubs::sas;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A management call under `/api/v1/hubs`.
async fn hubs(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> Resp {
    let url = format!("https://localhost:{}/api/v1/hubs{path}", app.port);
    let mut req = app.client.request(method, url).bearer_auth(&app.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    app.send(req).await
}

fn ns_origin(app: &TestApp, ns: &str) -> String {
    format!("https://{ns}.servicebus.localhost:{}", app.port)
}

/// A namespace `orders-ns` with hub `orders` (2 partitions), a Send policy
/// and a Listen policy on the hub; returns their (name, key) pairs.
async fn setup(app: &TestApp) -> ((String, String), (String, String)) {
    hubs(
        app,
        Method::POST,
        "/namespaces",
        Some(json!({"name": "orders-ns"})),
    )
    .await
    .expect(201);
    hubs(
        app,
        Method::POST,
        "/namespaces/orders-ns/eventhubs",
        Some(json!({"name": "orders", "partitionCount": 2})),
    )
    .await
    .expect(201);
    let mut out = Vec::new();
    for (name, right) in [("sender", "Send"), ("reader", "Listen")] {
        hubs(
            app,
            Method::PUT,
            &format!("/namespaces/orders-ns/eventhubs/orders/authorizationRules/{name}"),
            Some(json!({"rights": [right]})),
        )
        .await
        .expect(201);
        let keys = hubs(
            app,
            Method::POST,
            &format!("/namespaces/orders-ns/eventhubs/orders/authorizationRules/{name}/listKeys"),
            None,
        )
        .await;
        out.push((
            name.to_owned(),
            keys.expect(200)["primaryKey"].as_str().unwrap().to_owned(),
        ));
    }
    (out[0].clone(), out[1].clone())
}

fn token(uri: &str, (name, key): &(String, String), ttl: i64) -> String {
    sas::sign(uri, name, key, now() + ttl)
}

const HUB_URI: &str = "https://orders-ns.servicebus.localhost/orders";

async fn post(app: &TestApp, path: &str, auth: &str, body: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = app
        .client
        .post(format!("{}{path}", ns_origin(app, "orders-ns")))
        .header("Authorization", auth)
        .body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    app.send(req).await
}

async fn pull(app: &TestApp, auth: &str, cg: &str, p: u32, query: &str) -> Resp {
    app.send(
        app.client
            .get(format!(
                "{}/orders/consumergroups/{cg}/partitions/{p}/messages?{query}",
                ns_origin(app, "orders-ns")
            ))
            .header("Authorization", auth),
    )
    .await
}

#[tokio::test]
async fn namespaces_hubs_groups_and_policies() {
    let app = spawn_app().await;
    let ns = hubs(
        &app,
        Method::POST,
        "/namespaces",
        Some(json!({"name": "Contoso-Orders"})),
    )
    .await;
    assert_eq!(
        ns.expect(201)["serviceBusEndpoint"],
        "sb://contoso-orders.servicebus.localhost/"
    );
    hubs(
        &app,
        Method::POST,
        "/namespaces",
        Some(json!({"name": "contoso-orders"})),
    )
    .await
    .expect_error(409, "Conflict");
    hubs(
        &app,
        Method::POST,
        "/namespaces",
        Some(json!({"name": "no"})),
    )
    .await
    .expect_error(400, "BadRequest");
    // Every namespace has its root policy, with Azure's connection string grammar.
    let keys = hubs(
        &app,
        Method::POST,
        "/namespaces/contoso-orders/authorizationRules/RootManageSharedAccessKey/listKeys",
        None,
    )
    .await;
    let keys = keys.expect(200);
    let cs = keys["primaryConnectionString"].as_str().unwrap();
    assert_eq!(
        cs,
        format!(
            "Endpoint=sb://contoso-orders.servicebus.localhost/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={}",
            keys["primaryKey"].as_str().unwrap()
        )
    );
    assert_eq!(keys["primaryKey"].as_str().unwrap().len(), 44);
    assert_ne!(keys["primaryKey"], keys["secondaryKey"]);

    let hub = hubs(
        &app,
        Method::POST,
        "/namespaces/contoso-orders/eventhubs",
        Some(json!({"name": "orders", "partitionCount": 4, "retentionTimeInHours": 24})),
    )
    .await;
    let hub = hub.expect(201);
    assert_eq!(hub["partitionIds"], json!(["0", "1", "2", "3"]));
    assert_eq!(hub["retentionTimeInHours"], 24);
    hubs(
        &app,
        Method::POST,
        "/namespaces/contoso-orders/eventhubs",
        Some(json!({"name": "big", "partitionCount": 1025})),
    )
    .await
    .expect_error(400, "BadRequest");
    hubs(
        &app,
        Method::POST,
        "/namespaces/nope-nope/eventhubs",
        Some(json!({"name": "x"})),
    )
    .await
    .expect_error(404, "NotFound");
    // Partitions are raised, never lowered.
    let raised = hubs(
        &app,
        Method::PATCH,
        "/namespaces/contoso-orders/eventhubs/orders",
        Some(json!({"partitionCount": 6})),
    )
    .await;
    assert_eq!(raised.expect(200)["partitionCount"], 6);
    hubs(
        &app,
        Method::PATCH,
        "/namespaces/contoso-orders/eventhubs/orders",
        Some(json!({"partitionCount": 2})),
    )
    .await
    .expect_error(400, "BadRequest");
    let shown = hubs(
        &app,
        Method::GET,
        "/namespaces/contoso-orders/eventhubs/ORDERS",
        None,
    )
    .await;
    let shown = shown.expect(200);
    assert_eq!(shown["partitions"].as_array().unwrap().len(), 6);
    assert_eq!(shown["partitions"][0]["isEmpty"], true);
    assert_eq!(shown["partitions"][0]["lastEnqueuedSequenceNumber"], -1);

    // $Default always exists and stays.
    let groups = hubs(
        &app,
        Method::GET,
        "/namespaces/contoso-orders/eventhubs/orders/consumergroups",
        None,
    )
    .await;
    assert_eq!(groups.expect(200)["value"][0]["name"], "$Default");
    hubs(
        &app,
        Method::PUT,
        "/namespaces/contoso-orders/eventhubs/orders/consumergroups/analytics",
        None,
    )
    .await
    .expect(201);
    hubs(
        &app,
        Method::PUT,
        "/namespaces/contoso-orders/eventhubs/orders/consumergroups/analytics",
        Some(json!({"userMetadata": "team"})),
    )
    .await
    .expect(200);
    hubs(
        &app,
        Method::DELETE,
        "/namespaces/contoso-orders/eventhubs/orders/consumergroups/$Default",
        None,
    )
    .await
    .expect_error(400, "BadRequest");
    hubs(
        &app,
        Method::DELETE,
        "/namespaces/contoso-orders/eventhubs/orders/consumergroups/analytics",
        None,
    )
    .await
    .expect(204);

    // Hub-level policies carry EntityPath; keys regenerate one at a time.
    hubs(
        &app,
        Method::PUT,
        "/namespaces/contoso-orders/eventhubs/orders/authorizationRules/send",
        Some(json!({"rights": ["Send"]})),
    )
    .await
    .expect(201);
    hubs(
        &app,
        Method::PUT,
        "/namespaces/contoso-orders/eventhubs/orders/authorizationRules/bad",
        Some(json!({"rights": ["Manage"]})),
    )
    .await
    .expect_error(400, "BadParameter");
    let before = hubs(
        &app,
        Method::POST,
        "/namespaces/contoso-orders/eventhubs/orders/authorizationRules/send/listKeys",
        None,
    )
    .await;
    let before = before.expect(200).clone();
    assert!(
        before["primaryConnectionString"]
            .as_str()
            .unwrap()
            .ends_with(";EntityPath=orders")
    );
    let after = hubs(
        &app,
        Method::POST,
        "/namespaces/contoso-orders/eventhubs/orders/authorizationRules/send/regenerateKeys",
        Some(json!({"keyType": "PrimaryKey"})),
    )
    .await;
    let after = after.expect(200);
    assert_ne!(after["primaryKey"], before["primaryKey"]);
    assert_eq!(after["secondaryKey"], before["secondaryKey"]);
    let rules = hubs(
        &app,
        Method::GET,
        "/namespaces/contoso-orders/eventhubs/orders/authorizationRules",
        None,
    )
    .await;
    let rules = rules.expect(200);
    assert_eq!(rules["value"][0]["rights"], json!(["Send"]));
    assert!(
        rules["value"][0].get("primaryKey").is_none(),
        "keys only through listKeys"
    );

    // The management API is the admin's.
    let anon = app
        .send(app.client.get(format!(
            "https://localhost:{}/api/v1/hubs/namespaces",
            app.port
        )))
        .await;
    assert_eq!(anon.status, 401);

    hubs(
        &app,
        Method::DELETE,
        "/namespaces/contoso-orders/eventhubs/orders",
        None,
    )
    .await
    .expect(204);
    hubs(&app, Method::DELETE, "/namespaces/contoso-orders", None)
        .await
        .expect(204);
    hubs(&app, Method::GET, "/namespaces/contoso-orders", None)
        .await
        .expect_error(404, "NotFound");
}

#[tokio::test]
async fn rest_send_and_pull_with_sas_tokens() {
    let mut app = spawn_app().await;
    let (sender, reader) = setup(&app).await;
    let send = token(HUB_URI, &sender, 3600);
    let listen = token(HUB_URI, &reader, 3600);

    // A single event with a partition key and a user property.
    let r = post(
        &app,
        "/orders/messages",
        &send,
        "first",
        &[
            ("BrokerProperties", r#"{"PartitionKey": "device-7"}"#),
            ("Alert", "Strong Wind"),
            (
                "Content-Type",
                "application/atom+xml;type=entry;charset=utf-8",
            ),
        ],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.text.is_empty());
    // A batch, all or nothing, with the same key: the same partition.
    let batch = json!([
        {"Body": "second", "UserProperties": {"n": 2}, "BrokerProperties": {"PartitionKey": "device-7"}},
        {"Body": "third", "BrokerProperties": {"PartitionKey": "device-7"}},
    ]);
    let r = post(
        &app,
        "/orders/messages",
        &send,
        &batch.to_string(),
        &[("Content-Type", "application/vnd.microsoft.servicebus.json")],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let p = herald_hubs::partition_for_key("device-7", herald_hubs::PartitionCount::new(2).unwrap())
        .index() as u32;
    let got = pull(&app, &listen, "$Default", p, "fromSequenceNumber=0").await;
    let got = got.expect(200);
    let events = got["value"].as_array().unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| e["body"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["first", "second", "third"]
    );
    assert_eq!(
        events
            .iter()
            .map(|e| e["sequenceNumber"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(events[1]["offset"], "1");
    assert_eq!(events[0]["partitionKey"], "device-7");
    // HTTP header names arrive lower-cased, so header properties are too.
    assert_eq!(
        events[0]["properties"]["alert"], "Strong Wind",
        "{}",
        events[0]
    );
    assert_eq!(events[1]["properties"]["n"], 2);
    assert_eq!(got["nextSequenceNumber"], 3);

    // To a partition, and via a publisher (its name is the partition key).
    let other = 1 - p;
    assert_eq!(
        post(
            &app,
            &format!("/orders/partitions/{other}/messages"),
            &send,
            "direct",
            &[]
        )
        .await
        .status,
        201
    );
    assert_eq!(
        post(
            &app,
            "/orders/publishers/device-7/messages",
            &send,
            "published",
            &[]
        )
        .await
        .status,
        201
    );
    let direct = pull(&app, &listen, "$Default", other, "fromSequenceNumber=0").await;
    assert_eq!(direct.expect(200)["value"][0]["body"], "direct");
    let more = pull(&app, &listen, "$Default", p, "fromSequenceNumber=3").await;
    assert_eq!(more.expect(200)["value"][0]["body"], "published");
    assert_eq!(
        post(&app, "/orders/partitions/9/messages", &send, "x", &[])
            .await
            .status,
        404
    );

    // Rights: a Listen token cannot send, a Send token cannot read.
    assert_eq!(
        post(&app, "/orders/messages", &listen, "x", &[])
            .await
            .status,
        401
    );
    assert_eq!(pull(&app, &send, "$Default", 0, "").await.status, 401);
    // Expired, forged, malformed, missing, for another hub.
    let expired = token(HUB_URI, &sender, -10);
    let r = post(&app, "/orders/messages", &expired, "x", &[]).await;
    assert_eq!(r.status, 401);
    assert!(
        r.text.starts_with("<Error><Code>401</Code><Detail>"),
        "{}",
        r.text
    );
    let forged = sas::sign(HUB_URI, &sender.0, "not-the-key", now() + 60);
    assert_eq!(
        post(&app, "/orders/messages", &forged, "x", &[])
            .await
            .status,
        401
    );
    assert_eq!(
        post(
            &app,
            "/orders/messages",
            "SharedAccessSignature sr=&sig=",
            "x",
            &[]
        )
        .await
        .status,
        401
    );
    let none = app
        .send(
            app.client
                .post(format!("{}/orders/messages", ns_origin(&app, "orders-ns")))
                .body("x"),
        )
        .await;
    assert_eq!(none.status, 401);
    let elsewhere = token(
        "https://orders-ns.servicebus.localhost/payments",
        &sender,
        60,
    );
    assert_eq!(
        post(&app, "/orders/messages", &elsewhere, "x", &[])
            .await
            .status,
        401
    );
    // A namespace-wide token (the root policy) covers every hub in it.
    let root = hubs(
        &app,
        Method::POST,
        "/namespaces/orders-ns/authorizationRules/RootManageSharedAccessKey/listKeys",
        None,
    )
    .await;
    let root_key = root.expect(200)["secondaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let ns_token = sas::sign(
        "sb://orders-ns.servicebus.localhost",
        "RootManageSharedAccessKey",
        &root_key,
        now() + 60,
    );
    assert_eq!(
        post(&app, "/orders/messages", &ns_token, "by root", &[])
            .await
            .status,
        201
    );
    // Unknown hubs, bad batches and oversize publications.
    assert_eq!(
        post(&app, "/payments/messages", &send, "x", &[])
            .await
            .status,
        404
    );
    assert_eq!(
        post(
            &app,
            "/orders/messages",
            &send,
            "[{\"Body\": 5}",
            &[("Content-Type", "application/vnd.microsoft.servicebus.json")]
        )
        .await
        .status,
        400
    );
    let mixed = json!([{"Body": "a", "BrokerProperties": {"PartitionKey": "x"}}, {"Body": "b"}]);
    assert_eq!(
        post(
            &app,
            "/orders/messages",
            &send,
            &mixed.to_string(),
            &[("Content-Type", "application/vnd.microsoft.servicebus.json")]
        )
        .await
        .status,
        400
    );
    let big = "x".repeat(1_048_577);
    assert_eq!(
        post(&app, "/orders/messages", &send, &big, &[])
            .await
            .status,
        403
    );

    // Acknowledged sends survive a restart, numbering carries on densely.
    app.restart().await;
    assert_eq!(
        post(
            &app,
            "/orders/messages",
            &send,
            "after",
            &[("BrokerProperties", r#"{"PartitionKey":"device-7"}"#)]
        )
        .await
        .status,
        201
    );
    let all = pull(&app, &listen, "$Default", p, "fromSequenceNumber=0&max=100").await;
    let seqs: Vec<i64> = all.expect(200)["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequenceNumber"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (0..seqs.len() as i64).collect::<Vec<_>>());
    assert_eq!(
        all.json["value"].as_array().unwrap().last().unwrap()["body"],
        "after"
    );
}

#[tokio::test]
async fn a_waiting_pull_wakes_on_send_and_checkpoints_resume() {
    let app = spawn_app().await;
    let (sender, reader) = setup(&app).await;
    let send = token(HUB_URI, &sender, 3600);
    let listen = token(HUB_URI, &reader, 3600);
    let cg_path = format!(
        "{}/orders/consumergroups/$Default/checkpoints/0",
        ns_origin(&app, "orders-ns")
    );

    let waiting = {
        let (client, listen, origin) = (
            app.client.clone(),
            listen.clone(),
            ns_origin(&app, "orders-ns"),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let r = client
                .get(format!("{origin}/orders/consumergroups/$Default/partitions/0/messages?fromSequenceNumber=0&wait=20"))
                .header("Authorization", listen)
                .send()
                .await
                .unwrap();
            (r.json::<Value>().await.unwrap(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        post(&app, "/orders/partitions/0/messages", &send, "wake", &[])
            .await
            .status,
        201
    );
    let (page, took) = waiting.await.unwrap();
    assert_eq!(page["value"][0]["body"], "wake");
    assert!(
        took < Duration::from_secs(5),
        "the pull woke on the send, took {took:?}"
    );

    // A checkpoint per group and partition; a pull without a position resumes after it.
    assert_eq!(
        app.send(app.client.get(&cg_path).header("Authorization", &listen))
            .await
            .status,
        404
    );
    for body in ["one", "two"] {
        post(&app, "/orders/partitions/0/messages", &send, body, &[]).await;
    }
    let put = app
        .send(
            app.client
                .put(&cg_path)
                .header("Authorization", &listen)
                .body(r#"{"sequenceNumber": 1}"#),
        )
        .await;
    assert_eq!(put.status, 204, "{}", put.text);
    let cp = app
        .send(app.client.get(&cg_path).header("Authorization", &listen))
        .await;
    assert_eq!(cp.expect(200)["sequenceNumber"], 1);
    let rest = pull(&app, &listen, "$Default", 0, "").await;
    assert_eq!(rest.expect(200)["value"][0]["body"], "two");
    // Lag: the retained events after the group's checkpoints.
    let groups = hubs(
        &app,
        Method::GET,
        "/namespaces/orders-ns/eventhubs/orders/consumergroups",
        None,
    )
    .await;
    assert_eq!(groups.expect(200)["value"][0]["lag"], 1, "{}", groups.text);
    let status = app
        .send(
            app.client
                .get(format!("https://localhost:{}/api/v1/status", app.port))
                .bearer_auth(&app.token),
        )
        .await;
    let hub_status = status.expect(200)["hubs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "orders")
        .cloned()
        .expect("the hub in status");
    assert_eq!(hub_status["incomingEvents"], 3);
    // Delivered: "wake" to the waiting pull, then "two".
    assert_eq!(hub_status["outgoingEvents"], 2, "{hub_status}");
    let shown = hubs(
        &app,
        Method::GET,
        "/namespaces/orders-ns/eventhubs/orders",
        None,
    )
    .await;
    let p0 = shown.expect(200)["partitions"][0].clone();
    assert_eq!(p0["outgoingEvents"], 2);
    assert_eq!(p0["outgoingBytes"], 7, "{p0}");
    assert_eq!(
        hub_status["consumerGroups"][0],
        json!({"lag": 1, "name": "$Default"})
    );
    assert_eq!(
        app.send(
            app.client
                .put(&cg_path)
                .header("Authorization", &send)
                .body(r#"{"sequenceNumber": 1}"#)
        )
        .await
        .status,
        401
    );
    assert_eq!(
        app.send(
            app.client
                .put(&cg_path)
                .header("Authorization", &listen)
                .body("nope")
        )
        .await
        .status,
        400
    );
    assert_eq!(pull(&app, &listen, "nogroup", 0, "").await.status, 404);
}

#[tokio::test]
async fn every_hubs_management_route_needs_the_admin_token_and_keys_are_sealed() {
    let app = spawn_app().await;
    let ((_, send_key), (_, listen_key)) = setup(&app).await;
    let routes = [
        (Method::GET, "/namespaces"),
        (Method::POST, "/namespaces"),
        (Method::GET, "/namespaces/orders-ns"),
        (Method::DELETE, "/namespaces/orders-ns"),
        (Method::GET, "/namespaces/orders-ns/eventhubs"),
        (Method::POST, "/namespaces/orders-ns/eventhubs"),
        (Method::GET, "/namespaces/orders-ns/eventhubs/orders"),
        (Method::PATCH, "/namespaces/orders-ns/eventhubs/orders"),
        (Method::DELETE, "/namespaces/orders-ns/eventhubs/orders"),
        (
            Method::GET,
            "/namespaces/orders-ns/eventhubs/orders/consumergroups",
        ),
        (
            Method::PUT,
            "/namespaces/orders-ns/eventhubs/orders/consumergroups/g",
        ),
        (
            Method::DELETE,
            "/namespaces/orders-ns/eventhubs/orders/consumergroups/g",
        ),
        (Method::GET, "/namespaces/orders-ns/authorizationRules"),
        (Method::PUT, "/namespaces/orders-ns/authorizationRules/r"),
        (Method::DELETE, "/namespaces/orders-ns/authorizationRules/r"),
        (
            Method::POST,
            "/namespaces/orders-ns/authorizationRules/RootManageSharedAccessKey/listKeys",
        ),
        (
            Method::POST,
            "/namespaces/orders-ns/authorizationRules/RootManageSharedAccessKey/regenerateKeys",
        ),
        (
            Method::GET,
            "/namespaces/orders-ns/eventhubs/orders/authorizationRules",
        ),
        (
            Method::PUT,
            "/namespaces/orders-ns/eventhubs/orders/authorizationRules/r",
        ),
        (
            Method::DELETE,
            "/namespaces/orders-ns/eventhubs/orders/authorizationRules/sender",
        ),
        (
            Method::POST,
            "/namespaces/orders-ns/eventhubs/orders/authorizationRules/sender/listKeys",
        ),
        (
            Method::POST,
            "/namespaces/orders-ns/eventhubs/orders/authorizationRules/sender/regenerateKeys",
        ),
    ];
    for (method, path) in routes {
        let url = format!("https://localhost:{}/api/v1/hubs{path}", app.port);
        let anon = app.send(app.client.request(method.clone(), &url)).await;
        assert_eq!(anon.status, 401, "{method} {path} without a token");
        let wrong = app
            .send(
                app.client
                    .request(method.clone(), &url)
                    .bearer_auth("hrd_not-a-token"),
            )
            .await;
        assert_eq!(wrong.status, 401, "{method} {path} with a wrong token");
    }
    // Nothing changed, and SAS keys are sealed at rest.
    hubs(
        &app,
        Method::GET,
        "/namespaces/orders-ns/eventhubs/orders",
        None,
    )
    .await
    .expect(200);
    for f in files_under(app.data_dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        for key in [&send_key, &listen_key] {
            assert!(
                !contains(&bytes, key.as_bytes()),
                "a SAS key in plaintext in {}",
                f.display()
            );
        }
    }
}

/// Runs the `herald` CLI against the test server; returns stdout, failing
/// with stderr when the command fails.
async fn cli(app: &TestApp, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let config = app.data_dir.path().join("cli-config");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(args)
        .env("HERALD_ADDR", format!("https://localhost:{}", app.port))
        .env("HERALD_TOKEN", &app.token)
        .env("HERALD_CACERT", &app.ca_path)
        .env("HERALD_CONFIG_DIR", &config)
        .env_remove("HERALD_HUB_NAMESPACE")
        .env_remove("HERALD_HUB_CONNECTION_STRING");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("run herald");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn the_cli_manages_hubs_and_sends_and_tails_with_policies() {
    let app = spawn_app().await;
    // The default namespace exists from the start.
    let list = cli(&app, &["hub", "namespace", "list", "--json"], &[])
        .await
        .unwrap();
    assert!(list.contains("\"default\""), "{list}");
    let made = cli(
        &app,
        &[
            "hub",
            "create",
            "orders",
            "--partitions",
            "2",
            "--retention-hours",
            "24",
        ],
        &[],
    )
    .await
    .unwrap();
    assert!(
        made.contains("orders") && made.contains("PARTITIONS"),
        "{made}"
    );
    cli(
        &app,
        &["hub", "consumer-group", "create", "app", "--hub", "orders"],
        &[],
    )
    .await
    .unwrap();
    let groups = cli(
        &app,
        &["hub", "consumer-group", "list", "--hub", "orders", "--json"],
        &[],
    )
    .await
    .unwrap();
    assert!(
        groups.contains("$Default") && groups.contains("\"app\""),
        "{groups}"
    );
    cli(
        &app,
        &[
            "hub", "policy", "create", "sender", "--hub", "orders", "--rights", "Send",
        ],
        &[],
    )
    .await
    .unwrap();
    cli(
        &app,
        &[
            "hub", "policy", "create", "reader", "--hub", "orders", "--rights", "Listen",
        ],
        &[],
    )
    .await
    .unwrap();
    let keys: Value = serde_json::from_str(
        &cli(
            &app,
            &[
                "hub", "policy", "keys", "sender", "--hub", "orders", "--json",
            ],
            &[],
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let send_cs = keys["primaryConnectionString"].as_str().unwrap().to_owned();
    assert!(send_cs.starts_with("Endpoint=sb://default.servicebus.localhost/;SharedAccessKeyName=sender;SharedAccessKey="), "{send_cs}");
    assert!(send_cs.ends_with(";EntityPath=orders"));
    let keys: Value = serde_json::from_str(
        &cli(
            &app,
            &[
                "hub", "policy", "keys", "reader", "--hub", "orders", "--json",
            ],
            &[],
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let listen_cs = keys["primaryConnectionString"].as_str().unwrap().to_owned();

    // The sender holds only its Send policy; the app only its Listen policy.
    let sent = cli(
        &app,
        &[
            "hub",
            "send",
            "orders",
            "one",
            "two",
            "--partition-key",
            "k1",
            "--property",
            "kind=test",
        ],
        &[("HERALD_HUB_CONNECTION_STRING", &send_cs)],
    )
    .await
    .unwrap();
    assert!(sent.contains("Sent 2 event(s)"), "{sent}");
    let p = herald_hubs::partition_for_key("k1", herald_hubs::PartitionCount::new(2).unwrap())
        .index()
        .to_string();
    let tailed = cli(
        &app,
        &[
            "hub",
            "tail",
            "orders",
            "--from",
            "earliest",
            "--partition",
            &p,
            "--count",
            "2",
            "--consumer-group",
            "app",
        ],
        &[("HERALD_HUB_CONNECTION_STRING", &listen_cs)],
    )
    .await
    .unwrap();
    assert_eq!(tailed, format!("[{p}:0] one\n[{p}:1] two\n"));
    let refused = cli(
        &app,
        &["hub", "send", "orders", "x"],
        &[("HERALD_HUB_CONNECTION_STRING", &listen_cs)],
    )
    .await
    .unwrap_err();
    assert!(
        refused.contains("401") && refused.contains("Send"),
        "{refused}"
    );
    // With the admin token alone, tail reads every partition.
    let all = cli(
        &app,
        &[
            "hub", "tail", "orders", "--from", "earliest", "--count", "2", "--json",
        ],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(all.lines().count(), 2, "{all}");
    let shown = cli(&app, &["hub", "show", "orders"], &[]).await.unwrap();
    assert!(shown.contains("LAST SEQ"), "{shown}");
    let bad = cli(&app, &["hub", "create", "orders", "--partitions", "0"], &[])
        .await
        .unwrap_err();
    assert!(bad.contains("artition"), "{bad}");
}

#[tokio::test]
async fn the_plain_host_serves_the_default_namespace() {
    let app = spawn_app().await;
    hubs(
        &app,
        Method::POST,
        "/namespaces/default/eventhubs",
        Some(json!({"name": "plain", "partitionCount": 1})),
    )
    .await
    .expect(201);
    let keys = hubs(
        &app,
        Method::POST,
        "/namespaces/default/authorizationRules/RootManageSharedAccessKey/listKeys",
        None,
    )
    .await;
    let root = (
        "RootManageSharedAccessKey".to_owned(),
        keys.expect(200)["primaryKey"].as_str().unwrap().to_owned(),
    );
    let origin = format!("https://localhost:{}", app.port);
    // Tokens name the host the caller uses.
    let good = token("https://localhost/plain", &root, 600);
    let r = app
        .send(
            app.client
                .post(format!("{origin}/plain/messages"))
                .header("Authorization", &good)
                .body("on the plain host"),
        )
        .await;
    r.expect(201);
    let r = app
        .send(
            app.client
                .get(format!(
                    "{origin}/plain/consumergroups/$Default/partitions/0/messages?fromSequenceNumber=0"
                ))
                .header("Authorization", &good),
        )
        .await;
    assert_eq!(r.expect(200)["value"][0]["body"], "on the plain host");
    // A token for the namespace host does not cover the plain host.
    let other = token("https://default.servicebus.localhost/plain", &root, 600);
    let r = app
        .send(
            app.client
                .post(format!("{origin}/plain/messages"))
                .header("Authorization", &other)
                .body("x"),
        )
        .await;
    assert_eq!(r.status, 401);
    // The plain host's own planes keep their paths: a secret named
    // "messages" is still a secret, and unknown hubs are 404.
    let r = app
        .send(
            app.client
                .post(format!("{origin}/nohub/messages"))
                .header("Authorization", &good)
                .body("x"),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = app
        .send(
            app.client
                .put(format!("{origin}/secrets/messages?api-version=7.6"))
                .bearer_auth(&app.token)
                .json(&json!({"value": "v"})),
        )
        .await;
    r.expect(200);
}
