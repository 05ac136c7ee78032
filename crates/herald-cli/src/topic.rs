//! `herald topic ...` and `herald subscription ...`

use crate::client::{Client, Conn};
use crate::output::{self, Columns};
use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::io::Read;

#[derive(Subcommand)]
pub(crate) enum TopicCmd {
    /// Create a custom topic
    Create {
        name: String,
        /// EventGridSchema, CloudEventSchemaV1_0 or CustomEventSchema
        #[arg(long, default_value = "EventGridSchema")]
        input_schema: String,
        /// inputSchemaMapping JSON file (CustomEventSchema topics)
        #[arg(long)]
        mapping: Option<std::path::PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List topics (custom and vault system topics)
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a topic with its metrics
    Show {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a custom topic, its subscriptions and its events
    Delete {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show or regenerate a topic's access keys
    Keys {
        name: String,
        /// Regenerate key1 or key2
        #[arg(long, value_name = "KEY")]
        regenerate: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Publish events from a file, or stdin with "-"
    Publish {
        name: String,
        #[arg(default_value = "-")]
        file: String,
        /// Content-Type to send [default: from the topic's input schema]
        #[arg(long)]
        content_type: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Args, Clone)]
pub(crate) struct SubscriptionSpec {
    /// Pull delivery (Queue)
    #[arg(long, conflicts_with = "endpoint")]
    queue: bool,
    /// Push delivery to this webhook URL
    #[arg(long)]
    endpoint: Option<String>,
    /// Only these event types (comma-separated)
    #[arg(long, value_delimiter = ',')]
    event_types: Vec<String>,
    #[arg(long)]
    subject_begins_with: Option<String>,
    #[arg(long)]
    subject_ends_with: Option<String>,
    /// An advanced filter as JSON, e.g. '{"operatorType":"NumberGreaterThan","key":"data.n","value":5}' (repeatable)
    #[arg(long = "advanced-filter")]
    advanced_filters: Vec<String>,
    /// EventGridSchema, CloudEventSchemaV1_0 or CustomInputSchema
    #[arg(long)]
    schema: Option<String>,
    /// Queue: deliveries before dead-lettering (1-10)
    #[arg(long)]
    max_delivery_count: Option<i64>,
    /// Queue: lock duration in seconds (30-300)
    #[arg(long)]
    lock_duration: Option<i64>,
    /// WebHook: attempts before dead-lettering (1-30)
    #[arg(long)]
    max_delivery_attempts: Option<i64>,
    /// Full properties as a JSON file (flags above are merged on top)
    #[arg(long)]
    body: Option<std::path::PathBuf>,
}

impl SubscriptionSpec {
    fn to_json(&self) -> anyhow::Result<Value> {
        let mut body: Map<String, Value> = match &self.body {
            Some(p) => serde_json::from_slice(
                &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
            )
            .context("--body must be a JSON object")?,
            None => Map::new(),
        };
        if self.queue {
            let mut queue = Map::new();
            if let Some(n) = self.max_delivery_count {
                queue.insert("maxDeliveryCount".into(), json!(n));
            }
            if let Some(n) = self.lock_duration {
                queue.insert("receiveLockDurationInSeconds".into(), json!(n));
            }
            body.insert(
                "deliveryConfiguration".into(),
                json!({"deliveryMode": "Queue", "queue": queue}),
            );
        }
        if let Some(url) = &self.endpoint {
            body.insert(
                "destination".into(),
                json!({"endpointType": "WebHook", "properties": {"endpointUrl": url}}),
            );
        }
        let mut filter = body
            .remove("filter")
            .and_then(|f| f.as_object().cloned())
            .unwrap_or_default();
        if !self.event_types.is_empty() {
            filter.insert("includedEventTypes".into(), json!(self.event_types));
        }
        if let Some(s) = &self.subject_begins_with {
            filter.insert("subjectBeginsWith".into(), json!(s));
        }
        if let Some(s) = &self.subject_ends_with {
            filter.insert("subjectEndsWith".into(), json!(s));
        }
        if !self.advanced_filters.is_empty() {
            let parsed: Vec<Value> = self
                .advanced_filters
                .iter()
                .map(|f| {
                    serde_json::from_str(f)
                        .with_context(|| format!("--advanced-filter is not JSON: {f}"))
                })
                .collect::<anyhow::Result<_>>()?;
            filter.insert("advancedFilters".into(), json!(parsed));
        }
        if !filter.is_empty() {
            body.insert("filter".into(), Value::Object(filter));
        }
        if let Some(s) = &self.schema {
            body.insert("eventDeliverySchema".into(), json!(s));
        }
        if let Some(n) = self.max_delivery_attempts {
            body.insert("retryPolicy".into(), json!({"maxDeliveryAttempts": n}));
        }
        Ok(Value::Object(body))
    }
}

#[derive(Subcommand)]
pub(crate) enum SubscriptionCmd {
    /// Create (or replace) an event subscription on a topic
    Create {
        topic: String,
        name: String,
        #[command(flatten)]
        spec: SubscriptionSpec,
        #[command(flatten)]
        conn: Conn,
    },
    /// List a topic's event subscriptions
    List {
        topic: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one event subscription with its metrics
    Show {
        topic: String,
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Change some properties of an event subscription
    Update {
        topic: String,
        name: String,
        #[command(flatten)]
        spec: SubscriptionSpec,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete an event subscription
    Delete {
        topic: String,
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show the delivery log: every push request (a batch counts once) with status and latency
    Attempts {
        topic: String,
        name: String,
        /// Only the attempts that carried this event id
        #[arg(long = "event")]
        event_id: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

fn print_topics(conn: &Conn, raw: &Value, list: &[Value]) {
    output::print(
        conn.json,
        raw,
        list,
        Columns::new()
            .col("NAME", |t: &Value| output::s(&t["name"]))
            .col("KIND", |t| output::s(&t["kind"]))
            .col("INPUT SCHEMA", |t| output::s(&t["inputSchema"]))
            .col("PUBLISHED", |t| output::s(&t["metrics"]["published"]))
            .col("ENDPOINT", |t| output::s(&t["endpoint"])),
    );
}

fn print_subscriptions(conn: &Conn, raw: &Value, list: &[Value]) {
    output::print(
        conn.json,
        raw,
        list,
        Columns::new()
            .col("NAME", |s: &Value| output::s(&s["name"]))
            .col("STATE", |s| output::s(&s["provisioningState"]))
            .col("DELIVERY", |s| {
                if s.get("deliveryConfiguration").is_some() {
                    "Queue (pull)".to_owned()
                } else {
                    format!(
                        "WebHook {}",
                        output::s(&s["destination"]["properties"]["endpointBaseUrl"])
                    )
                }
            })
            .col("SCHEMA", |s| output::s(&s["eventDeliverySchema"]))
            .col("MATCHED", |s| output::s(&s["metrics"]["matched"]))
            .col("DELIVERED", |s| output::s(&s["metrics"]["delivered"]))
            .col("DEAD-LETTERED", |s| {
                output::s(&s["metrics"]["deadLettered"])
            })
            .col("BACKLOG", |s| output::s(&s["metrics"]["backlog"])),
    );
}

pub(crate) async fn run_topic(cmd: TopicCmd) -> anyhow::Result<()> {
    match cmd {
        TopicCmd::Create {
            name,
            input_schema,
            mapping,
            conn,
        } => {
            let mut body = json!({"name": name, "inputSchema": input_schema});
            if let Some(p) = mapping {
                body["inputSchemaMapping"] = serde_json::from_slice(&std::fs::read(&p)?)
                    .with_context(|| format!("{} is not JSON", p.display()))?;
            }
            let v = Client::new(&conn)?
                .api(Method::POST, "/api/v1/topics", Some(&body))
                .await?;
            print_topics(&conn, &v, std::slice::from_ref(&v));
        }
        TopicCmd::List { conn } => {
            let c = Client::new(&conn)?;
            let v = c.api(Method::GET, "/api/v1/topics", None).await?;
            // The list omits metrics; fetch each topic for the table.
            let mut rows = Vec::new();
            for t in v["value"].as_array().cloned().unwrap_or_default() {
                let name = t["name"].as_str().unwrap_or_default().to_owned();
                rows.push(
                    c.api(Method::GET, &format!("/api/v1/topics/{name}"), None)
                        .await
                        .unwrap_or(t),
                );
            }
            print_topics(&conn, &v, &rows);
        }
        TopicCmd::Show { name, conn } => {
            let v = Client::new(&conn)?
                .api(Method::GET, &format!("/api/v1/topics/{name}"), None)
                .await?;
            print_topics(&conn, &v, std::slice::from_ref(&v));
        }
        TopicCmd::Delete { name, conn } => {
            Client::new(&conn)?
                .api(Method::DELETE, &format!("/api/v1/topics/{name}"), None)
                .await?;
            if !conn.json {
                println!("Deleted topic {name}.");
            }
        }
        TopicCmd::Keys {
            name,
            regenerate,
            conn,
        } => {
            let c = Client::new(&conn)?;
            let v = match regenerate {
                Some(k) => {
                    c.api(
                        Method::POST,
                        &format!("/api/v1/topics/{name}/regenerateKey"),
                        Some(&json!({"keyName": k})),
                    )
                    .await?
                }
                None => {
                    c.api(Method::GET, &format!("/api/v1/topics/{name}/keys"), None)
                        .await?
                }
            };
            output::fields(conn.json, &v, ["KEY", "VALUE"], || {
                vec![
                    ("key1".into(), output::s(&v["key1"])),
                    ("key2".into(), output::s(&v["key2"])),
                ]
            });
        }
        TopicCmd::Publish {
            name,
            file,
            content_type,
            conn,
        } => {
            let mut body = Vec::new();
            if file == "-" {
                std::io::stdin().read_to_end(&mut body)?;
            } else {
                body = std::fs::read(&file).with_context(|| format!("reading {file}"))?;
            }
            let c = Client::new(&conn)?;
            let content_type = match content_type {
                Some(ct) => ct,
                None => {
                    let t = c
                        .api(Method::GET, &format!("/api/v1/topics/{name}"), None)
                        .await?;
                    let is_array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
                    match (t["inputSchema"].as_str(), is_array) {
                        (Some("CloudEventSchemaV1_0"), true) => {
                            "application/cloudevents-batch+json".into()
                        }
                        (Some("CloudEventSchemaV1_0"), false) => {
                            "application/cloudevents+json".into()
                        }
                        _ => "application/json".into(),
                    }
                }
            };
            c.raw(
                &format!("/topics/{name}/api/events?api-version=2018-01-01"),
                &content_type,
                body,
            )
            .await?;
            if !conn.json {
                println!("Published to topic {name}.");
            }
        }
    }
    Ok(())
}

/// A subscription whose handshake failed was saved, but is no use: say so
/// and exit non-zero, so scripts notice.
fn failed_state(v: &Value) -> anyhow::Result<()> {
    if v["provisioningState"] == "Failed" {
        anyhow::bail!(
            "the subscription is Failed: {} (fix the endpoint and run `herald subscription update`)",
            output::s(&v["stateReason"])
        );
    }
    Ok(())
}

pub(crate) async fn run_subscription(cmd: SubscriptionCmd) -> anyhow::Result<()> {
    let path = |t: &str, n: &str| format!("/api/v1/topics/{t}/eventSubscriptions/{n}");
    match cmd {
        SubscriptionCmd::Create {
            topic,
            name,
            spec,
            conn,
        } => {
            let v = Client::new(&conn)?
                .api(Method::PUT, &path(&topic, &name), Some(&spec.to_json()?))
                .await?;
            print_subscriptions(&conn, &v, std::slice::from_ref(&v));
            failed_state(&v)?;
        }
        SubscriptionCmd::Update {
            topic,
            name,
            spec,
            conn,
        } => {
            let v = Client::new(&conn)?
                .api(Method::PATCH, &path(&topic, &name), Some(&spec.to_json()?))
                .await?;
            print_subscriptions(&conn, &v, std::slice::from_ref(&v));
            failed_state(&v)?;
        }
        SubscriptionCmd::List { topic, conn } => {
            let c = Client::new(&conn)?;
            let v = c
                .api(
                    Method::GET,
                    &format!("/api/v1/topics/{topic}/eventSubscriptions"),
                    None,
                )
                .await?;
            // The list omits metrics; fetch each for the table.
            let mut rows = Vec::new();
            for s in v["value"].as_array().cloned().unwrap_or_default() {
                let name = s["name"].as_str().unwrap_or_default().to_owned();
                rows.push(
                    c.api(Method::GET, &path(&topic, &name), None)
                        .await
                        .unwrap_or(s),
                );
            }
            print_subscriptions(&conn, &v, &rows);
        }
        SubscriptionCmd::Show { topic, name, conn } => {
            let v = Client::new(&conn)?
                .api(Method::GET, &path(&topic, &name), None)
                .await?;
            print_subscriptions(&conn, &v, std::slice::from_ref(&v));
        }
        SubscriptionCmd::Attempts {
            topic,
            name,
            event_id,
            conn,
        } => {
            let filter = event_id
                .map(|id| {
                    format!(
                        "&eventId={}",
                        percent_encoding::utf8_percent_encode(
                            &id,
                            percent_encoding::NON_ALPHANUMERIC
                        )
                    )
                })
                .unwrap_or_default();
            let v = Client::new(&conn)?
                .api(
                    Method::GET,
                    &format!("{}/attempts?limit=1000{filter}", path(&topic, &name)),
                    None,
                )
                .await?;
            let attempts = v["value"].as_array().cloned().unwrap_or_default();
            output::print(
                conn.json,
                &v,
                &attempts,
                Columns::new()
                    .col("TIME", |a: &Value| output::s(&a["time"]))
                    .col("EVENTS", |a| match a["eventCount"].as_u64().unwrap_or(1) {
                        1 => output::s(&a["eventId"]),
                        n => format!("{} (+{} more)", output::s(&a["eventId"]), n - 1),
                    })
                    .col("ATTEMPT", |a| output::s(&a["attempt"]))
                    .col("STATUS", |a| output::s(&a["status"]))
                    .col("OUTCOME", |a| output::s(&a["outcome"]))
                    .col("LATENCY (MS)", |a| output::s(&a["latencyMs"]))
                    .col("RESPONSE", |a| {
                        output::s(&a["response"]).chars().take(40).collect()
                    }),
            );
        }
        SubscriptionCmd::Delete { topic, name, conn } => {
            Client::new(&conn)?
                .api(Method::DELETE, &path(&topic, &name), None)
                .await?;
            if !conn.json {
                println!("Deleted event subscription {name} on topic {topic}.");
            }
        }
    }
    Ok(())
}
