//! `herald events ...`: pull delivery from the shell.

use crate::client::{Client, Conn};
use crate::output::{self, Columns};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Subcommand)]
pub(crate) enum EventsCmd {
    /// Receive (and lock) events from a Queue subscription
    Receive {
        topic: String,
        subscription: String,
        /// At most this many events (1-100)
        #[arg(long, default_value_t = 10)]
        max: u32,
        /// Seconds to wait for the first event (0-120)
        #[arg(long, default_value_t = 10)]
        wait: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Acknowledge (delete) received events by lock token
    Ack {
        topic: String,
        subscription: String,
        #[arg(required = true)]
        lock_tokens: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Release events for redelivery, optionally after a delay
    Release {
        topic: String,
        subscription: String,
        #[arg(required = true)]
        lock_tokens: Vec<String>,
        /// 0, 10, 60, 600 or 3600 seconds
        #[arg(long, default_value_t = 0)]
        delay: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Reject events: they are dead-lettered
    Reject {
        topic: String,
        subscription: String,
        #[arg(required = true)]
        lock_tokens: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List an event subscription's dead-lettered events
    Deadletters {
        topic: String,
        subscription: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `herald deadletter ...`
#[derive(Subcommand)]
pub(crate) enum DeadletterCmd {
    /// List dead-lettered events of an event subscription
    List {
        topic: String,
        subscription: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one dead-lettered event in full
    Show {
        topic: String,
        subscription: String,
        id: i64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Send dead-lettered events back through delivery (all, or the given ids)
    Replay {
        topic: String,
        subscription: String,
        ids: Vec<i64>,
        #[command(flatten)]
        conn: Conn,
    },
}

pub(crate) async fn run_deadletter(cmd: DeadletterCmd) -> anyhow::Result<()> {
    match cmd {
        DeadletterCmd::List {
            topic,
            subscription,
            conn,
        } => {
            run(EventsCmd::Deadletters {
                topic,
                subscription,
                conn,
            })
            .await
        }
        DeadletterCmd::Show {
            topic,
            subscription,
            id,
            conn,
        } => {
            let v = Client::new(&conn)?
                .api(
                    Method::GET,
                    &format!("/api/v1/topics/{topic}/eventSubscriptions/{subscription}/deadLetters?after={}&limit=1", id - 1),
                    None,
                )
                .await?;
            let item = v["value"]
                .as_array()
                .and_then(|a| a.first())
                .filter(|d| d["id"] == id);
            match item {
                Some(d) => output::json(d),
                None => anyhow::bail!(
                    "no dead-lettered event {id} on {topic}/{subscription}; list them with `herald deadletter list {topic} {subscription}`"
                ),
            }
            Ok(())
        }
        DeadletterCmd::Replay {
            topic,
            subscription,
            ids,
            conn,
        } => {
            let body = if ids.is_empty() {
                json!({})
            } else {
                json!({ "ids": ids })
            };
            let v = Client::new(&conn)?
                .api(
                    Method::POST,
                    &format!("/api/v1/topics/{topic}/eventSubscriptions/{subscription}/deadLetters/replay"),
                    Some(&body),
                )
                .await?;
            if conn.json {
                output::json(&v);
            } else {
                println!(
                    "Replayed {} event(s) to {topic}/{subscription}.",
                    output::s(&v["replayed"])
                );
            }
            Ok(())
        }
    }
}

const API: &str = "api-version=2024-06-01";

async fn settle(
    conn: &Conn,
    topic: &str,
    sub: &str,
    op: &str,
    tokens: Vec<String>,
    extra: &str,
) -> anyhow::Result<()> {
    let v = Client::new(conn)?
        .api(
            Method::POST,
            &format!("/topics/{topic}/eventsubscriptions/{sub}:{op}?{API}{extra}"),
            Some(&json!({ "lockTokens": tokens })),
        )
        .await?;
    if conn.json {
        output::json(&v);
        return Ok(());
    }
    let ok = v["succeededLockTokens"].as_array().map_or(0, Vec::len);
    println!("{op}: {ok} succeeded");
    for f in v["failedLockTokens"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        println!(
            "  failed {}: {}",
            output::s(&f["lockToken"]),
            output::s(&f["error"]["message"])
        );
    }
    Ok(())
}

pub(crate) async fn run(cmd: EventsCmd) -> anyhow::Result<()> {
    match cmd {
        EventsCmd::Receive {
            topic,
            subscription,
            max,
            wait,
            conn,
        } => {
            let spinner = (!conn.json).then(|| {
                let pb = ProgressBar::new_spinner();
                pb.set_style(
                    ProgressStyle::with_template("{spinner} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                pb.set_message(format!(
                    "waiting up to {wait}s for events on {topic}/{subscription}"
                ));
                pb.enable_steady_tick(Duration::from_millis(100));
                pb
            });
            let v = Client::new(&conn)?
                .api(
                    Method::POST,
                    &format!("/topics/{topic}/eventsubscriptions/{subscription}:receive?{API}&maxEvents={max}&maxWaitTime={wait}"),
                    None,
                )
                .await;
            if let Some(pb) = spinner {
                pb.finish_and_clear();
            }
            let v = v?;
            let items = v["value"].as_array().cloned().unwrap_or_default();
            if !conn.json && items.is_empty() {
                println!("No events.");
                return Ok(());
            }
            output::print(
                conn.json,
                &v,
                &items,
                Columns::new()
                    .col("LOCK TOKEN", |i: &Value| {
                        output::s(&i["brokerProperties"]["lockToken"])
                    })
                    .col("DELIVERY", |i| {
                        output::s(&i["brokerProperties"]["deliveryCount"])
                    })
                    .col("ID", |i| output::s(&i["event"]["id"]))
                    .col("TYPE", |i| output::s(&i["event"]["type"]))
                    .col("SUBJECT", |i| output::s(&i["event"]["subject"]))
                    .col("DATA", |i| {
                        let e = &i["event"];
                        let data = match &e["data"] {
                            Value::Null => output::s(&e["data_base64"]),
                            d => d.to_string(),
                        };
                        data.chars().take(60).collect()
                    }),
            );
        }
        EventsCmd::Ack {
            topic,
            subscription,
            lock_tokens,
            conn,
        } => {
            settle(&conn, &topic, &subscription, "acknowledge", lock_tokens, "").await?;
        }
        EventsCmd::Release {
            topic,
            subscription,
            lock_tokens,
            delay,
            conn,
        } => {
            settle(
                &conn,
                &topic,
                &subscription,
                "release",
                lock_tokens,
                &format!("&releaseDelayInSeconds={delay}"),
            )
            .await?;
        }
        EventsCmd::Reject {
            topic,
            subscription,
            lock_tokens,
            conn,
        } => {
            settle(&conn, &topic, &subscription, "reject", lock_tokens, "").await?;
        }
        EventsCmd::Deadletters {
            topic,
            subscription,
            conn,
        } => {
            let v = Client::new(&conn)?
                .api(
                    Method::GET,
                    &format!(
                        "/api/v1/topics/{topic}/eventSubscriptions/{subscription}/deadLetters"
                    ),
                    None,
                )
                .await?;
            let dead = v["value"].as_array().cloned().unwrap_or_default();
            output::print(
                conn.json,
                &v,
                &dead,
                Columns::new()
                    .col("ID", |d: &Value| output::s(&d["id"]))
                    .col("REASON", |d| output::s(&d["deadLetterReason"]))
                    .col("ATTEMPTS", |d| output::s(&d["deliveryAttempts"]))
                    .col("EVENT ID", |d| output::s(&d["event"]["id"]))
                    .col("TYPE", |d| output::s(&d["event"]["type"]))
                    .col("DEAD-LETTERED", |d| output::s(&d["deadLetteredTime"])),
            );
        }
    }
    Ok(())
}
