//! `herald hub ...`: namespaces, event hubs, consumer groups and SAS
//! policies through the management API, and `send` / `tail` through the
//! namespace's own REST endpoint with a SAS token, as any Event Hubs
//! client would.

use crate::client::{Client, Conn};
use crate::output::{self, Columns};
use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use herald_hubs::{ConnectionString, Credential, sas};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Subcommand)]
pub(crate) enum HubCmd {
    /// Namespaces: create, list, show, delete
    #[command(subcommand)]
    Namespace(NamespaceCmd),
    /// Create an event hub
    Create {
        name: String,
        #[command(flatten)]
        at: At,
        /// Partitions (1-1024); fixed at creation, may be raised later
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// How long events are kept, in hours (1-2160)
        #[arg(long, default_value_t = 168)]
        retention_hours: i64,
        #[command(flatten)]
        conn: Conn,
    },
    /// List the event hubs of a namespace
    List {
        #[command(flatten)]
        at: At,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show an event hub with its partitions
    Show {
        name: String,
        #[command(flatten)]
        at: At,
        #[command(flatten)]
        conn: Conn,
    },
    /// Raise the partition count or change retention
    Update {
        name: String,
        #[command(flatten)]
        at: At,
        #[arg(long)]
        partitions: Option<u32>,
        #[arg(long)]
        retention_hours: Option<i64>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete an event hub and its events
    Delete {
        name: String,
        #[command(flatten)]
        at: At,
        #[command(flatten)]
        conn: Conn,
    },
    /// Consumer groups of a hub: create, list, delete
    #[command(subcommand, name = "consumer-group")]
    ConsumerGroup(GroupCmd),
    /// SAS policies on a namespace or hub: create, list, keys, regenerate, delete
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Send events to a hub over REST (one event per BODY, as one batch)
    Send {
        hub: String,
        /// Event bodies; `-` reads one body from standard input
        #[arg(required = true)]
        bodies: Vec<String>,
        #[command(flatten)]
        at: At,
        /// Send to this partition
        #[arg(long, conflicts_with = "partition_key")]
        partition: Option<String>,
        /// Partition key: events with one key go to one partition, in order
        #[arg(long)]
        partition_key: Option<String>,
        /// A user property NAME=VALUE (repeatable)
        #[arg(long = "property", value_name = "NAME=VALUE")]
        properties: Vec<String>,
        #[command(flatten)]
        auth: SasAuth,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print events as they arrive, from every partition or one
    Tail {
        hub: String,
        #[command(flatten)]
        at: At,
        /// earliest, latest or seq:N
        #[arg(long, default_value = "latest")]
        from: String,
        #[arg(long, default_value = "$Default")]
        consumer_group: String,
        /// Only this partition
        #[arg(long)]
        partition: Option<u32>,
        /// Stop after this many events
        #[arg(long)]
        count: Option<usize>,
        /// Store a checkpoint after each page, so the next tail without --from resumes
        #[arg(long)]
        checkpoint: bool,
        #[command(flatten)]
        auth: SasAuth,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Where: the namespace (and for some commands the hub).
#[derive(Args, Clone)]
pub(crate) struct At {
    /// Namespace
    #[arg(long, short = 'n', env = "HERALD_HUB_NAMESPACE", default_value = herald_hubs::DEFAULT_NAMESPACE)]
    namespace: String,
}

/// Credentials for the data plane: a connection string (Send to send,
/// Listen to tail), else the namespace's root key fetched with the admin token.
#[derive(Args, Clone)]
pub(crate) struct SasAuth {
    /// An Event Hubs connection string (Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...)
    #[arg(long, env = "HERALD_HUB_CONNECTION_STRING", hide_env_values = true)]
    connection_string: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum NamespaceCmd {
    /// Create a namespace, served at NAME.<hub base>
    Create {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List namespaces
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a namespace
    Show {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a namespace with its hubs and events
    Delete {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub(crate) enum GroupCmd {
    /// Create a consumer group
    Create {
        name: String,
        #[arg(long)]
        hub: String,
        #[command(flatten)]
        at: At,
        #[command(flatten)]
        conn: Conn,
    },
    /// List consumer groups
    List {
        #[arg(long)]
        hub: String,
        #[command(flatten)]
        at: At,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a consumer group and its checkpoints
    Delete {
        name: String,
        #[arg(long)]
        hub: String,
        #[command(flatten)]
        at: At,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Which {
    Primary,
    Secondary,
}

#[derive(Subcommand)]
pub(crate) enum PolicyCmd {
    /// Create a policy (or change its rights)
    Create {
        name: String,
        /// Rights, comma separated: Send, Listen, Manage (Manage needs both others)
        #[arg(long, value_delimiter = ',', required = true)]
        rights: Vec<String>,
        /// On this hub; else on the namespace
        #[arg(long)]
        hub: Option<String>,
        #[command(flatten)]
        at: At,
        #[command(flatten)]
        conn: Conn,
    },
    /// List policies
    List {
        #[arg(long)]
        hub: Option<String>,
        #[command(flatten)]
        at: At,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print a policy's keys and connection strings
    Keys {
        name: String,
        #[arg(long)]
        hub: Option<String>,
        #[command(flatten)]
        at: At,
        #[command(flatten)]
        conn: Conn,
    },
    /// Replace one key (the other keeps working)
    Regenerate {
        name: String,
        #[arg(long, value_enum)]
        key: Which,
        #[arg(long)]
        hub: Option<String>,
        #[command(flatten)]
        at: At,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a policy
    Delete {
        name: String,
        #[arg(long)]
        hub: Option<String>,
        #[command(flatten)]
        at: At,
        #[command(flatten)]
        conn: Conn,
    },
}

fn ns_path(at: &At) -> String {
    format!("/api/v1/hubs/namespaces/{}", at.namespace)
}

fn rules_path(at: &At, hub: &Option<String>) -> String {
    match hub {
        Some(h) => format!("{}/eventhubs/{h}/authorizationRules", ns_path(at)),
        None => format!("{}/authorizationRules", ns_path(at)),
    }
}

fn list_of(v: &Value) -> Vec<Value> {
    v["value"].as_array().cloned().unwrap_or_default()
}

fn print_hubs(conn: &Conn, raw: &Value, rows: &[Value]) {
    output::print(
        conn.json,
        raw,
        rows,
        Columns::new()
            .col("NAME", |v: &Value| output::s(&v["name"]))
            .col("PARTITIONS", |v| output::s(&v["partitionCount"]))
            .col("RETENTION (HOURS)", |v| {
                output::s(&v["retentionTimeInHours"])
            })
            .col("STATUS", |v| output::s(&v["status"]))
            .col("CREATED", |v| output::ts(&v["createdAt"])),
    );
}

pub(crate) async fn run(cmd: HubCmd) -> anyhow::Result<()> {
    match cmd {
        HubCmd::Namespace(cmd) => run_namespace(cmd).await,
        HubCmd::Create {
            name,
            at,
            partitions,
            retention_hours,
            conn,
        } => {
            let body = json!({"name": name, "partitionCount": partitions, "retentionTimeInHours": retention_hours});
            let v = Client::new(&conn)?
                .api(
                    Method::POST,
                    &format!("{}/eventhubs", ns_path(&at)),
                    Some(&body),
                )
                .await?;
            print_hubs(&conn, &v, std::slice::from_ref(&v));
            Ok(())
        }
        HubCmd::List { at, conn } => {
            let v = Client::new(&conn)?
                .api(Method::GET, &format!("{}/eventhubs", ns_path(&at)), None)
                .await?;
            print_hubs(&conn, &v, &list_of(&v));
            Ok(())
        }
        HubCmd::Show { name, at, conn } => {
            let v = Client::new(&conn)?
                .api(
                    Method::GET,
                    &format!("{}/eventhubs/{name}", ns_path(&at)),
                    None,
                )
                .await?;
            if conn.json {
                output::json(&v);
            } else {
                print_hubs(&conn, &v, std::slice::from_ref(&v));
                println!();
                let parts = v["partitions"].as_array().cloned().unwrap_or_default();
                output::print_table(
                    &parts,
                    Columns::new()
                        .col("PARTITION", |p: &Value| output::s(&p["partitionId"]))
                        .col("BEGIN SEQ", |p| output::s(&p["beginSequenceNumber"]))
                        .col("LAST SEQ", |p| output::s(&p["lastEnqueuedSequenceNumber"]))
                        .col("LAST ENQUEUED", |p| output::ts(&p["lastEnqueuedTimeUtc"]))
                        .col("EVENTS IN", |p| output::s(&p["incomingEvents"]))
                        .col("BYTES IN", |p| output::s(&p["incomingBytes"]))
                        .col("EVENTS OUT", |p| output::s(&p["outgoingEvents"]))
                        .col("BYTES OUT", |p| output::s(&p["outgoingBytes"])),
                );
            }
            Ok(())
        }
        HubCmd::Update {
            name,
            at,
            partitions,
            retention_hours,
            conn,
        } => {
            let mut body = json!({});
            if let Some(p) = partitions {
                body["partitionCount"] = json!(p);
            }
            if let Some(r) = retention_hours {
                body["retentionTimeInHours"] = json!(r);
            }
            let v = Client::new(&conn)?
                .api(
                    Method::PATCH,
                    &format!("{}/eventhubs/{name}", ns_path(&at)),
                    Some(&body),
                )
                .await?;
            print_hubs(&conn, &v, std::slice::from_ref(&v));
            Ok(())
        }
        HubCmd::Delete { name, at, conn } => {
            Client::new(&conn)?
                .api(
                    Method::DELETE,
                    &format!("{}/eventhubs/{name}", ns_path(&at)),
                    None,
                )
                .await?;
            if !conn.json {
                println!("Deleted event hub {name} from namespace {}.", at.namespace);
            }
            Ok(())
        }
        HubCmd::ConsumerGroup(cmd) => run_group(cmd).await,
        HubCmd::Policy(cmd) => run_policy(cmd).await,
        HubCmd::Send {
            hub,
            bodies,
            at,
            partition,
            partition_key,
            properties,
            auth,
            conn,
        } => {
            send(
                hub,
                bodies,
                at,
                partition,
                partition_key,
                properties,
                auth,
                conn,
            )
            .await
        }
        HubCmd::Tail {
            hub,
            at,
            from,
            consumer_group,
            partition,
            count,
            checkpoint,
            auth,
            conn,
        } => {
            tail(
                hub,
                at,
                from,
                consumer_group,
                partition,
                count,
                checkpoint,
                auth,
                conn,
            )
            .await
        }
    }
}

async fn run_namespace(cmd: NamespaceCmd) -> anyhow::Result<()> {
    let print = |conn: &Conn, raw: &Value, rows: &[Value]| {
        output::print(
            conn.json,
            raw,
            rows,
            Columns::new()
                .col("NAME", |v: &Value| output::s(&v["name"]))
                .col("ENDPOINT", |v| output::s(&v["serviceBusEndpoint"]))
                .col("CREATED", |v| output::ts(&v["createdAt"])),
        )
    };
    match cmd {
        NamespaceCmd::Create { name, conn } => {
            let v = Client::new(&conn)?
                .api(
                    Method::POST,
                    "/api/v1/hubs/namespaces",
                    Some(&json!({"name": name})),
                )
                .await?;
            print(&conn, &v, std::slice::from_ref(&v));
        }
        NamespaceCmd::List { conn } => {
            let v = Client::new(&conn)?
                .api(Method::GET, "/api/v1/hubs/namespaces", None)
                .await?;
            print(&conn, &v, &list_of(&v));
        }
        NamespaceCmd::Show { name, conn } => {
            let v = Client::new(&conn)?
                .api(
                    Method::GET,
                    &format!("/api/v1/hubs/namespaces/{name}"),
                    None,
                )
                .await?;
            print(&conn, &v, std::slice::from_ref(&v));
        }
        NamespaceCmd::Delete { name, conn } => {
            Client::new(&conn)?
                .api(
                    Method::DELETE,
                    &format!("/api/v1/hubs/namespaces/{name}"),
                    None,
                )
                .await?;
            if !conn.json {
                println!("Deleted namespace {name} with its event hubs.");
            }
        }
    }
    Ok(())
}

async fn run_group(cmd: GroupCmd) -> anyhow::Result<()> {
    let path = |at: &At, hub: &str| format!("{}/eventhubs/{hub}/consumergroups", ns_path(at));
    let print = |conn: &Conn, raw: &Value, rows: &[Value]| {
        output::print(
            conn.json,
            raw,
            rows,
            Columns::new()
                .col("NAME", |v: &Value| output::s(&v["name"]))
                .col("LAG", |v| output::s(&v["lag"]))
                .col("METADATA", |v| output::s(&v["userMetadata"]))
                .col("CREATED", |v| output::ts(&v["createdAt"])),
        )
    };
    match cmd {
        GroupCmd::Create {
            name,
            hub,
            at,
            conn,
        } => {
            let v = Client::new(&conn)?
                .api(
                    Method::PUT,
                    &format!("{}/{name}", path(&at, &hub)),
                    Some(&json!({})),
                )
                .await?;
            print(&conn, &v, std::slice::from_ref(&v));
        }
        GroupCmd::List { hub, at, conn } => {
            let v = Client::new(&conn)?
                .api(Method::GET, &path(&at, &hub), None)
                .await?;
            print(&conn, &v, &list_of(&v));
        }
        GroupCmd::Delete {
            name,
            hub,
            at,
            conn,
        } => {
            Client::new(&conn)?
                .api(Method::DELETE, &format!("{}/{name}", path(&at, &hub)), None)
                .await?;
            if !conn.json {
                println!("Deleted consumer group {name} of {hub}.");
            }
        }
    }
    Ok(())
}

fn print_keys(conn: &Conn, v: &Value) {
    if conn.json {
        output::json(v);
        return;
    }
    let rows: Vec<(String, String)> = [
        ("keyName", "KEY NAME"),
        ("primaryKey", "PRIMARY KEY"),
        ("secondaryKey", "SECONDARY KEY"),
        ("primaryConnectionString", "PRIMARY CONNECTION STRING"),
        ("secondaryConnectionString", "SECONDARY CONNECTION STRING"),
    ]
    .iter()
    .map(|(k, label)| ((*label).to_owned(), output::s(&v[*k])))
    .collect();
    output::print_table(&rows, output::pairs(["FIELD", "VALUE"]));
}

async fn run_policy(cmd: PolicyCmd) -> anyhow::Result<()> {
    let print = |conn: &Conn, raw: &Value, rows: &[Value]| {
        output::print(
            conn.json,
            raw,
            rows,
            Columns::new()
                .col("NAME", |v: &Value| output::s(&v["name"]))
                .col("RIGHTS", |v| {
                    v["rights"]
                        .as_array()
                        .map(|r| {
                            r.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default()
                })
                .col("UPDATED", |v| output::ts(&v["updatedAt"])),
        )
    };
    match cmd {
        PolicyCmd::Create {
            name,
            rights,
            hub,
            at,
            conn,
        } => {
            let v = Client::new(&conn)?
                .api(
                    Method::PUT,
                    &format!("{}/{name}", rules_path(&at, &hub)),
                    Some(&json!({"rights": rights})),
                )
                .await?;
            print(&conn, &v, std::slice::from_ref(&v));
        }
        PolicyCmd::List { hub, at, conn } => {
            let v = Client::new(&conn)?
                .api(Method::GET, &rules_path(&at, &hub), None)
                .await?;
            print(&conn, &v, &list_of(&v));
        }
        PolicyCmd::Keys {
            name,
            hub,
            at,
            conn,
        } => {
            let v = Client::new(&conn)?
                .api(
                    Method::POST,
                    &format!("{}/{name}/listKeys", rules_path(&at, &hub)),
                    None,
                )
                .await?;
            print_keys(&conn, &v);
        }
        PolicyCmd::Regenerate {
            name,
            key,
            hub,
            at,
            conn,
        } => {
            let key_type = match key {
                Which::Primary => "PrimaryKey",
                Which::Secondary => "SecondaryKey",
            };
            let v = Client::new(&conn)?
                .api(
                    Method::POST,
                    &format!("{}/{name}/regenerateKeys", rules_path(&at, &hub)),
                    Some(&json!({"keyType": key_type})),
                )
                .await?;
            print_keys(&conn, &v);
        }
        PolicyCmd::Delete {
            name,
            hub,
            at,
            conn,
        } => {
            Client::new(&conn)?
                .api(
                    Method::DELETE,
                    &format!("{}/{name}", rules_path(&at, &hub)),
                    None,
                )
                .await?;
            if !conn.json {
                println!("Deleted policy {name}.");
            }
        }
    }
    Ok(())
}

/// The namespace's REST endpoint and a SAS token for `hub`: from the
/// connection string when given, else from the namespace's root key.
async fn data_plane(
    client: &Client,
    at: &At,
    hub: &str,
    auth: &SasAuth,
) -> anyhow::Result<(String, reqwest::Client, String)> {
    let (host, key_name, key) = match &auth.connection_string {
        Some(cs) => {
            let cs: ConnectionString = cs
                .parse()
                .map_err(|e| anyhow!("the connection string is not valid: {e}"))?;
            let host = cs.host.clone();
            match cs.credential {
                Credential::SharedAccessKey { key_name, key } => {
                    (host, key_name.as_str().to_owned(), key)
                }
                Credential::SharedAccessSignature(token) => {
                    let server = reqwest::Url::parse(client.addr())?;
                    let base = with_port(&host, &server);
                    return Ok((base.clone(), client.for_host(&base).await?, token));
                }
            }
        }
        None => {
            let keys = client
                .api(
                    Method::POST,
                    &format!("{}/authorizationRules/RootManageSharedAccessKey/listKeys", ns_path(at)),
                    None,
                )
                .await
                .context("fetching the namespace's root key (pass --connection-string to use a policy of your own)")?;
            let info = client.api(Method::GET, &ns_path(at), None).await?;
            let endpoint = info["serviceBusEndpoint"].as_str().unwrap_or_default();
            let host = endpoint
                .trim_start_matches("sb://")
                .trim_end_matches('/')
                .to_owned();
            (
                host,
                "RootManageSharedAccessKey".to_owned(),
                keys["primaryKey"]
                    .as_str()
                    .ok_or_else(|| anyhow!("the server sent no key"))?
                    .to_owned(),
            )
        }
    };
    let server = reqwest::Url::parse(client.addr())?;
    let base = with_port(&host, &server);
    let uri = format!("sb://{}/{hub}", host.split(':').next().unwrap_or(&host));
    let token = sas::sign(&uri, &key_name, &key, chrono::Utc::now().timestamp() + 3600);
    Ok((base.clone(), client.for_host(&base).await?, token))
}

/// `https://{host}:{the server's port}`, unless the host names its own port.
fn with_port(host: &str, server: &reqwest::Url) -> String {
    if host.contains(':') {
        format!("https://{host}")
    } else {
        format!(
            "https://{host}:{}",
            server.port_or_known_default().unwrap_or(443)
        )
    }
}

async fn rest_error(resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let detail = text
        .split("<Detail>")
        .nth(1)
        .and_then(|d| d.split("</Detail>").next())
        .unwrap_or(&text)
        .to_owned();
    let hint = match status.as_u16() {
        401 => " (check the policy's rights: sending needs Send, tailing needs Listen)",
        404 => " (check the namespace, hub and partition: `herald hub list`)",
        _ => "",
    };
    anyhow!("{status}: {detail}{hint}")
}

#[allow(clippy::too_many_arguments)]
async fn send(
    hub: String,
    bodies: Vec<String>,
    at: At,
    partition: Option<String>,
    partition_key: Option<String>,
    properties: Vec<String>,
    auth: SasAuth,
    conn: Conn,
) -> anyhow::Result<()> {
    let client = Client::new(&conn).or_else(|e| {
        if auth.connection_string.is_some() {
            Client::with_token(&conn, "")
        } else {
            Err(e)
        }
    })?;
    let (base, http, token) = data_plane(&client, &at, &hub, &auth).await?;
    let mut user = serde_json::Map::new();
    for p in &properties {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| anyhow!("--property takes NAME=VALUE, got '{p}'"))?;
        user.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    let mut events = Vec::new();
    for b in bodies {
        let text = if b == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
            s
        } else {
            b
        };
        let mut e = json!({"Body": text, "UserProperties": user});
        if let Some(k) = &partition_key {
            e["BrokerProperties"] = json!({"PartitionKey": k});
        }
        events.push(e);
    }
    let path = match &partition {
        Some(p) => format!("{base}/{hub}/partitions/{p}/messages"),
        None => format!("{base}/{hub}/messages"),
    };
    let resp = http
        .post(&path)
        .header("Authorization", &token)
        .header("Content-Type", herald_hubs::BATCH_CONTENT_TYPE)
        .body(Value::Array(events.clone()).to_string())
        .send()
        .await?;
    if !resp.status().is_success() {
        return Err(rest_error(resp).await);
    }
    if conn.json {
        output::json(&json!({"sent": events.len()}));
    } else {
        println!("Sent {} event(s) to {hub}.", events.len());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn tail(
    hub: String,
    at: At,
    from: String,
    group: String,
    partition: Option<u32>,
    count: Option<usize>,
    checkpoint: bool,
    auth: SasAuth,
    conn: Conn,
) -> anyhow::Result<()> {
    let client = Client::new(&conn).or_else(|e| {
        if auth.connection_string.is_some() {
            Client::with_token(&conn, "")
        } else {
            Err(e)
        }
    })?;
    let info = if auth.connection_string.is_none() {
        Some(
            client
                .api(
                    Method::GET,
                    &format!("{}/eventhubs/{hub}", ns_path(&at)),
                    None,
                )
                .await?,
        )
    } else {
        None
    };
    let (base, http, token) = data_plane(&client, &at, &hub, &auth).await?;
    let partitions: Vec<u32> = match (partition, &info) {
        (Some(p), _) => vec![p],
        (None, Some(i)) => (0..i["partitionCount"].as_u64().unwrap_or(1) as u32).collect(),
        (None, None) => {
            bail!("with --connection-string, name the partition to tail: --partition N")
        }
    };
    let start = |p: u32| -> anyhow::Result<Option<i64>> {
        Ok(match from.as_str() {
            "earliest" => Some(0),
            "latest" => {
                let parts = info
                    .as_ref()
                    .and_then(|i| i["partitions"].as_array().cloned())
                    .unwrap_or_default();
                parts
                    .iter()
                    .find(|x| {
                        x["partitionId"]
                            .as_str()
                            .and_then(|s| s.parse::<u32>().ok())
                            == Some(p)
                    })
                    .map(|x| x["lastEnqueuedSequenceNumber"].as_i64().unwrap_or(-1) + 1)
                    .or(Some(0))
            }
            "checkpoint" => None,
            other => Some(
                other
                    .strip_prefix("seq:")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| {
                        anyhow!("--from takes earliest, latest, checkpoint or seq:N, not '{other}'")
                    })?,
            ),
        })
    };
    let mut next: Vec<Option<i64>> = partitions
        .iter()
        .map(|p| start(*p))
        .collect::<anyhow::Result<_>>()?;
    let mut printed = 0usize;
    // One long poll per partition in turn; a short wait when several
    // partitions share the loop, so none starves.
    let wait = if partitions.len() == 1 { 20 } else { 1 };
    loop {
        for (i, p) in partitions.iter().enumerate() {
            let mut url = format!(
                "{base}/{hub}/consumergroups/{group}/partitions/{p}/messages?wait={wait}&max=500"
            );
            if let Some(n) = next[i] {
                url.push_str(&format!("&fromSequenceNumber={n}"));
            }
            let resp = http
                .get(&url)
                .header("Authorization", &token)
                .timeout(Duration::from_secs(90))
                .send()
                .await?;
            if !resp.status().is_success() {
                return Err(rest_error(resp).await);
            }
            let page: Value = resp.json().await?;
            let mut done = false;
            let mut last = None;
            for e in page["value"].as_array().cloned().unwrap_or_default() {
                if conn.json {
                    println!(
                        "{}",
                        serde_json::to_string(&json!({"partition": p, "event": e}))?
                    );
                } else {
                    println!("[{p}:{}] {}", e["sequenceNumber"], output::s(&e["body"]));
                }
                last = e["sequenceNumber"].as_i64();
                printed += 1;
                if count.is_some_and(|c| printed >= c) {
                    done = true;
                    break;
                }
            }
            // The checkpoint names the last event printed, so a later
            // `--from checkpoint` starts right after it.
            if checkpoint && let Some(seq) = last {
                let cp = format!("{base}/{hub}/consumergroups/{group}/checkpoints/{p}");
                let resp = http
                    .put(&cp)
                    .header("Authorization", &token)
                    .body(json!({"sequenceNumber": seq}).to_string())
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    return Err(rest_error(resp).await);
                }
            }
            if done {
                return Ok(());
            }
            let n = page["nextSequenceNumber"].as_i64();
            next[i] = n.or(next[i]);
        }
    }
}
