//! `herald runbook|webhook|job|asset ...`: Automation from the shell.

use crate::client::{Client, Conn};
use crate::output::{self, Columns};
use anyhow::{Context, bail};
use clap::Subcommand;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::time::Duration;

const BASE: &str = "/api/v1/automation";

#[derive(Subcommand)]
pub(crate) enum RunbookCmd {
    /// Create a runbook from a script file (the draft); --publish freezes it
    Create {
        name: String,
        /// bash, sh, python3, pwsh or node
        #[arg(long = "type", value_name = "TYPE")]
        kind: String,
        /// Script file, or - for stdin
        #[arg(long)]
        file: String,
        /// Declared parameter: NAME[:TYPE][:mandatory][:secure][=DEFAULT] (repeatable)
        #[arg(long = "param", value_name = "SPEC")]
        params: Vec<String>,
        /// Vault permission for its jobs: VAULT:ACTION[,ACTION] e.g. payments:get,set (repeatable)
        #[arg(long = "allow", value_name = "VAULT:ACTIONS")]
        allow: Vec<String>,
        /// An Automation asset its jobs may read, by name, or * for all (repeatable)
        #[arg(long = "asset", value_name = "NAME")]
        assets: Vec<String>,
        /// Job timeout in seconds [default: 3600]
        #[arg(long)]
        timeout: Option<u64>,
        /// At most this many jobs of the runbook run at once
        #[arg(long)]
        max_concurrent: Option<i64>,
        #[arg(long)]
        description: Option<String>,
        /// Publish right away
        #[arg(long)]
        publish: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List runbooks
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a runbook and its webhooks
    Show {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print the draft, or a published version's content
    Content {
        name: String,
        /// draft, published, or a version number
        #[arg(long, default_value = "draft")]
        version: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Replace the draft with a script file, or - for stdin
    Edit {
        name: String,
        #[arg(long)]
        file: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Freeze the draft as the next published version
    Publish {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Start a job directly with parameters NAME=VALUE
    Start {
        name: String,
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Worker group to run on [default: the built-in pool]
        #[arg(long)]
        run_on: Option<String>,
        /// Wait for the job and print its output
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a runbook and its webhooks (its jobs are kept)
    Delete {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub(crate) enum WebhookCmd {
    /// Create a webhook; its URL is printed once and cannot be shown again
    Create {
        name: String,
        #[arg(long)]
        runbook: String,
        /// Parameter value NAME=VALUE (repeatable); callers can never override these
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Expiry: RFC 3339, unix seconds or +365d [default: one year]
        #[arg(long)]
        expires: Option<String>,
        /// Worker group its jobs run on
        #[arg(long)]
        run_on: Option<String>,
        /// Create it disabled
        #[arg(long)]
        disabled: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List webhooks (never their URLs)
    List {
        #[arg(long)]
        runbook: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a webhook (its URL is never shown again)
    Show {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Enable, disable, extend or re-parameterise a live webhook
    Update {
        name: String,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
        #[arg(long)]
        expires: Option<String>,
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a webhook; its URL stops working at once
    Delete {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub(crate) enum JobCmd {
    /// Inside a runbook job: print its input, or one field of it by dotted path.
    /// String fields that hold JSON (WebhookData.RequestBody) are parsed on the
    /// way, e.g. `herald job input WebhookData.RequestBody.0.eventType`
    Input { path: Option<String> },
    /// List jobs, newest first
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        runbook: Option<String>,
        #[arg(long, default_value_t = 50)]
        top: i64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a job with its status history
    Show {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print the job's output; --follow streams every record live
    Output {
        id: String,
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print the job's stream records (Output, Error, Warning, ...)
    Streams {
        id: String,
        #[arg(long)]
        stream: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop a job
    Stop {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Resume a Suspended job from the beginning
    Resume {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Wait for a job to finish; exits non-zero unless it Completed
    Wait {
        id: String,
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub(crate) enum AssetCmd {
    /// Inside a runbook job: print an asset's value (credentials as JSON)
    Get {
        name: String,
        /// For credentials: print only this field (username or password)
        #[arg(long)]
        field: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Create or replace a variable
    SetVariable {
        name: String,
        value: String,
        /// Store it sealed; it is then never shown by the API
        #[arg(long)]
        encrypted: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Create or replace a credential; the password is read from HERALD_ASSET_PASSWORD or stdin
    SetCredential {
        name: String,
        #[arg(long)]
        username: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List variables and credentials (never secret values)
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a variable or credential
    Delete {
        name: String,
        /// variable or credential
        #[arg(long, default_value = "variable")]
        kind: String,
        #[command(flatten)]
        conn: Conn,
    },
}

fn read_file(path: &str) -> anyhow::Result<String> {
    if path == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        return Ok(s);
    }
    std::fs::read_to_string(PathBuf::from(path)).with_context(|| format!("cannot read {path}"))
}

/// `NAME[:TYPE][:mandatory][:secure][=DEFAULT]`
fn param_decl(spec: &str) -> anyhow::Result<Value> {
    let (head, default) = match spec.split_once('=') {
        Some((h, d)) => (h, Some(d)),
        None => (spec, None),
    };
    let mut parts = head.split(':');
    let name = parts.next().unwrap_or_default();
    if name.is_empty() {
        bail!("bad --param '{spec}': use NAME[:TYPE][:mandatory][:secure][=DEFAULT]");
    }
    let mut decl = json!({ "name": name, "type": "string" });
    for p in parts {
        match p {
            "mandatory" => decl["isMandatory"] = json!(true),
            "secure" => decl["secure"] = json!(true),
            "" => {}
            ty => decl["type"] = json!(ty),
        }
    }
    if let Some(d) = default {
        decl["defaultValue"] = json!(d);
    }
    Ok(decl)
}

fn param_values(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    pairs
        .iter()
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .with_context(|| format!("bad --param '{p}': use NAME=VALUE"))?;
            // JSON values (numbers, objects) pass through; anything else is a string.
            let v = serde_json::from_str::<Value>(v)
                .ok()
                .filter(|v| !v.is_string())
                .unwrap_or_else(|| Value::String(v.to_owned()));
            Ok((k.to_owned(), v))
        })
        .collect()
}

fn permissions(allow: &[String]) -> anyhow::Result<Value> {
    allow
        .iter()
        .map(|a| {
            let (vault, actions) = a.split_once(':').with_context(|| {
                format!("bad --allow '{a}': use VAULT:ACTION[,ACTION], e.g. payments:get,set")
            })?;
            Ok(json!({ "vault": vault, "actions": actions.split(',').collect::<Vec<_>>() }))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map(Value::Array)
}

fn iso_from_cli(raw: &str) -> anyhow::Result<String> {
    let secs = output::parse_time(raw)?;
    Ok(chrono::DateTime::from_timestamp(secs, 0)
        .context("time out of range")?
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn short_time(v: &Value) -> String {
    v.as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub(crate) async fn run_runbook(cmd: RunbookCmd) -> anyhow::Result<()> {
    match cmd {
        RunbookCmd::Create {
            name,
            kind,
            file,
            params,
            allow,
            assets,
            timeout,
            max_concurrent,
            description,
            publish,
            conn,
        } => {
            let c = Client::new(&conn)?;
            let mut body = json!({
                "runbookType": kind,
                "content": read_file(&file)?,
                "parameters": params.iter().map(|p| param_decl(p)).collect::<anyhow::Result<Vec<_>>>()?,
                "permissions": permissions(&allow)?,
                "assets": assets,
                "publish": publish,
            });
            if let Some(t) = timeout {
                body["timeoutSeconds"] = json!(t);
            }
            if let Some(m) = max_concurrent {
                body["maxConcurrentJobs"] = json!(m);
            }
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            let rb = c
                .api(
                    Method::PUT,
                    &format!("{BASE}/runbooks/{}", enc(&name)),
                    Some(&body),
                )
                .await?;
            if conn.json {
                output::json(&rb);
            } else {
                let state = output::s(&rb["properties"]["state"]);
                println!("Runbook {name} saved ({state}).");
                if !publish {
                    println!(
                        "Publish it before webhooks can start it: herald runbook publish {name}"
                    );
                }
            }
        }
        RunbookCmd::List { conn } => {
            let c = Client::new(&conn)?;
            let list = c
                .api(Method::GET, &format!("{BASE}/runbooks"), None)
                .await?;
            let runbooks = list["value"].as_array().cloned().unwrap_or_default();
            output::print(
                conn.json,
                &list,
                &runbooks,
                Columns::new()
                    .col("NAME", |r: &Value| output::s(&r["name"]))
                    .col("TYPE", |r| output::s(&r["properties"]["runbookType"]))
                    .col("STATE", |r| output::s(&r["properties"]["state"]))
                    .col("VERSION", |r| {
                        output::s(&r["properties"]["publishedVersion"])
                    })
                    .col("TIMEOUT", |r| {
                        format!("{} s", output::s(&r["properties"]["timeoutSeconds"]))
                    })
                    .col("MODIFIED", |r| {
                        short_time(&r["properties"]["lastModifiedTime"])
                    }),
            );
        }
        RunbookCmd::Show { name, conn } => {
            let c = Client::new(&conn)?;
            let rb = c
                .api(
                    Method::GET,
                    &format!("{BASE}/runbooks/{}", enc(&name)),
                    None,
                )
                .await?;
            let hooks = c
                .api(
                    Method::GET,
                    &format!("{BASE}/webhooks?runbook={}", enc(&name)),
                    None,
                )
                .await?;
            let raw = json!({ "runbook": rb, "webhooks": hooks["value"] });
            output::fields(conn.json, &raw, ["FIELD", "VALUE"], || {
                let p = &rb["properties"];
                vec![
                    ("Name".into(), output::s(&rb["name"])),
                    ("Type".into(), output::s(&p["runbookType"])),
                    ("State".into(), output::s(&p["state"])),
                    (
                        "Published version".into(),
                        output::s(&p["publishedVersion"]),
                    ),
                    ("Parameters".into(), p["parameters"].to_string()),
                    ("Permissions".into(), p["permissions"].to_string()),
                    (
                        "Timeout".into(),
                        format!("{} s", output::s(&p["timeoutSeconds"])),
                    ),
                    (
                        "Max concurrent jobs".into(),
                        output::s(&p["maxConcurrentJobs"]),
                    ),
                    (
                        "Webhooks".into(),
                        hooks["value"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|w| output::s(&w["name"]))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            })
                            .unwrap_or_default(),
                    ),
                ]
            });
        }
        RunbookCmd::Content {
            name,
            version,
            conn,
        } => {
            let c = Client::new(&conn)?;
            let text = c
                .get_text(&format!(
                    "{BASE}/runbooks/{}/content?version={}",
                    enc(&name),
                    enc(&version)
                ))
                .await?;
            print!("{text}");
        }
        RunbookCmd::Edit { name, file, conn } => {
            let c = Client::new(&conn)?;
            c.put_text(
                &format!("{BASE}/runbooks/{}/content", enc(&name)),
                read_file(&file)?,
            )
            .await?;
            println!("Draft of {name} replaced. Publish it with: herald runbook publish {name}");
        }
        RunbookCmd::Publish { name, conn } => {
            let c = Client::new(&conn)?;
            let rb = c
                .api(
                    Method::POST,
                    &format!("{BASE}/runbooks/{}/publish", enc(&name)),
                    None,
                )
                .await?;
            if conn.json {
                output::json(&rb);
                return Ok(());
            }
            println!(
                "Runbook {name} published as version {}.",
                output::s(&rb["properties"]["publishedVersion"])
            );
        }
        RunbookCmd::Start {
            name,
            params,
            run_on,
            wait,
            conn,
        } => {
            let c = Client::new(&conn)?;
            let body = json!({ "parameters": param_values(&params)?, "runOn": run_on });
            let job = c
                .api(
                    Method::POST,
                    &format!("{BASE}/runbooks/{}/start", enc(&name)),
                    Some(&body),
                )
                .await?;
            let id = output::s(&job["name"]);
            if !wait {
                if conn.json {
                    output::json(&job);
                    return Ok(());
                }
                println!("Job {id} queued. Follow it with: herald job output {id} --follow");
                return Ok(());
            }
            wait_job(&c, &id, 3600, conn.json).await?;
        }
        RunbookCmd::Delete { name, conn } => {
            let c = Client::new(&conn)?;
            c.api(
                Method::DELETE,
                &format!("{BASE}/runbooks/{}", enc(&name)),
                None,
            )
            .await?;
            println!("Runbook {name} and its webhooks deleted.");
        }
    }
    Ok(())
}

pub(crate) async fn run_webhook(cmd: WebhookCmd) -> anyhow::Result<()> {
    match cmd {
        WebhookCmd::Create {
            name,
            runbook,
            params,
            expires,
            run_on,
            disabled,
            conn,
        } => {
            let c = Client::new(&conn)?;
            let mut props = json!({
                "runbook": { "name": runbook },
                "parameters": param_values(&params)?,
                "isEnabled": !disabled,
            });
            if let Some(e) = expires {
                props["expiryTime"] = json!(iso_from_cli(&e)?);
            }
            if let Some(r) = run_on {
                props["runOn"] = json!(r);
            }
            let wh = c
                .api(
                    Method::PUT,
                    &format!("{BASE}/webhooks/{}", enc(&name)),
                    Some(&json!({ "name": name, "properties": props })),
                )
                .await?;
            if conn.json {
                output::json(&wh);
                return Ok(());
            }
            let uri = output::s(&wh["properties"]["uri"]);
            println!("Webhook {name} created for runbook {runbook}.");
            println!("Expires: {}", short_time(&wh["properties"]["expiryTime"]));
            println!();
            println!("URL (shown only now; store it like a password):");
            println!("  {uri}");
            println!();
            println!("Try it:");
            println!("  curl -X POST '{uri}' -H 'Content-Type: application/json' -d '{{}}'");
        }
        WebhookCmd::List { runbook, conn } => {
            let c = Client::new(&conn)?;
            let path = match &runbook {
                Some(r) => format!("{BASE}/webhooks?runbook={}", enc(r)),
                None => format!("{BASE}/webhooks"),
            };
            let list = c.api(Method::GET, &path, None).await?;
            let hooks = list["value"].as_array().cloned().unwrap_or_default();
            output::print(
                conn.json,
                &list,
                &hooks,
                Columns::new()
                    .col("NAME", |w: &Value| output::s(&w["name"]))
                    .col("RUNBOOK", |w| {
                        output::s(&w["properties"]["runbook"]["name"])
                    })
                    .col("ENABLED", |w| {
                        if w["properties"]["isEnabled"] == json!(true) {
                            "yes".into()
                        } else {
                            "no".into()
                        }
                    })
                    .col("EXPIRES", |w| short_time(&w["properties"]["expiryTime"]))
                    .col("LAST INVOKED", |w| {
                        short_time(&w["properties"]["lastInvokedTime"])
                    })
                    .col("RUN ON", |w| output::s(&w["properties"]["runOn"])),
            );
        }
        WebhookCmd::Show { name, conn } => {
            let c = Client::new(&conn)?;
            let wh = c
                .api(
                    Method::GET,
                    &format!("{BASE}/webhooks/{}", enc(&name)),
                    None,
                )
                .await?;
            output::fields(conn.json, &wh, ["FIELD", "VALUE"], || {
                let p = &wh["properties"];
                vec![
                    ("Name".into(), output::s(&wh["name"])),
                    ("Runbook".into(), output::s(&p["runbook"]["name"])),
                    ("Enabled".into(), output::s(&p["isEnabled"])),
                    ("Expires".into(), short_time(&p["expiryTime"])),
                    ("Last invoked".into(), short_time(&p["lastInvokedTime"])),
                    ("Parameters".into(), p["parameters"].to_string()),
                    ("Run on".into(), output::s(&p["runOn"])),
                    ("URL".into(), "(shown only at creation)".into()),
                ]
            });
        }
        WebhookCmd::Update {
            name,
            enable,
            disable,
            expires,
            params,
            conn,
        } => {
            let c = Client::new(&conn)?;
            let mut props = Map::new();
            if enable {
                props.insert("isEnabled".into(), json!(true));
            }
            if disable {
                props.insert("isEnabled".into(), json!(false));
            }
            if let Some(e) = expires {
                props.insert("expiryTime".into(), json!(iso_from_cli(&e)?));
            }
            if !params.is_empty() {
                props.insert("parameters".into(), Value::Object(param_values(&params)?));
            }
            if props.is_empty() {
                bail!("nothing to change: use --enable, --disable, --expires or --param");
            }
            let wh = c
                .api(
                    Method::PATCH,
                    &format!("{BASE}/webhooks/{}", enc(&name)),
                    Some(&json!({ "properties": props })),
                )
                .await?;
            if conn.json {
                output::json(&wh);
                return Ok(());
            }
            println!("Webhook {name} updated.");
        }
        WebhookCmd::Delete { name, conn } => {
            let c = Client::new(&conn)?;
            c.api(
                Method::DELETE,
                &format!("{BASE}/webhooks/{}", enc(&name)),
                None,
            )
            .await?;
            println!("Webhook {name} deleted; its URL no longer works.");
        }
    }
    Ok(())
}

fn duration(start: &Value, end: &Value) -> String {
    let parse = |v: &Value| {
        v.as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    match (parse(start), parse(end)) {
        (Some(s), Some(e)) => format!("{} ms", (e - s).num_milliseconds()),
        (Some(_), None) => "running".into(),
        _ => "-".into(),
    }
}

/// Walks a dotted path through JSON, parsing JSON-in-string values on the way.
pub(crate) fn json_path(root: &Value, path: &str) -> Option<Value> {
    let mut cur = root.clone();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        if let Value::String(s) = &cur
            && let Ok(parsed) = serde_json::from_str::<Value>(s)
        {
            cur = parsed;
        }
        cur = match &cur {
            Value::Object(m) => m
                .get(part)
                .or_else(|| {
                    m.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(part))
                        .map(|(_, v)| v)
                })?
                .clone(),
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?.clone(),
            _ => return None,
        };
    }
    Some(cur)
}

pub(crate) async fn run_job(cmd: JobCmd) -> anyhow::Result<()> {
    match cmd {
        JobCmd::Input { path } => {
            let file = std::env::var("HERALD_JOB_INPUT").context(
                "HERALD_JOB_INPUT is not set: `herald job input` runs inside a runbook job",
            )?;
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {file}"))?;
            let root: Value = serde_json::from_str(&text).context("the job input is not JSON")?;
            let v = match &path {
                Some(p) => json_path(&root, p)
                    .with_context(|| format!("the job input has no field '{p}'"))?,
                None => root,
            };
            match v {
                Value::String(s) => println!("{s}"),
                other => println!("{other}"),
            }
        }
        JobCmd::List {
            status,
            runbook,
            top,
            conn,
        } => {
            let c = Client::new(&conn)?;
            let mut path = format!("{BASE}/jobs?top={top}");
            if let Some(s) = status {
                path.push_str(&format!("&status={}", enc(&s)));
            }
            if let Some(r) = runbook {
                path.push_str(&format!("&runbook={}", enc(&r)));
            }
            let list = c.api(Method::GET, &path, None).await?;
            let jobs = list["value"].as_array().cloned().unwrap_or_default();
            output::print(
                conn.json,
                &list,
                &jobs,
                Columns::new()
                    .col("JOB", |j: &Value| output::s(&j["name"]))
                    .col("RUNBOOK", |j| {
                        output::s(&j["properties"]["runbook"]["name"])
                    })
                    .col("STATUS", |j| output::s(&j["properties"]["status"]))
                    .col("STARTED BY", |j| output::s(&j["properties"]["startedBy"]))
                    .col("CREATED", |j| short_time(&j["properties"]["creationTime"]))
                    .col("DURATION", |j| {
                        duration(&j["properties"]["startTime"], &j["properties"]["endTime"])
                    }),
            );
        }
        JobCmd::Show { id, conn } => {
            let c = Client::new(&conn)?;
            let job = c
                .api(Method::GET, &format!("{BASE}/jobs/{}", enc(&id)), None)
                .await?;
            output::fields(conn.json, &job, ["FIELD", "VALUE"], || {
                let p = &job["properties"];
                let mut rows = vec![
                    ("Job".into(), output::s(&job["name"])),
                    (
                        "Runbook".into(),
                        format!(
                            "{} (v{})",
                            output::s(&p["runbook"]["name"]),
                            output::s(&p["runbookVersion"])
                        ),
                    ),
                    ("Status".into(), output::s(&p["status"])),
                    ("Details".into(), output::s(&p["statusDetails"])),
                    ("Started by".into(), output::s(&p["startedBy"])),
                    ("Sandbox".into(), output::s(&p["sandbox"])),
                    ("Exit code".into(), output::s(&p["exitCode"])),
                    ("Exception".into(), output::s(&p["exception"])),
                    ("Parameters".into(), p["parameters"].to_string()),
                ];
                for h in p["history"].as_array().cloned().unwrap_or_default() {
                    rows.push((
                        format!("  {}", output::s(&h["status"])),
                        format!(
                            "{} {}",
                            output::s(&h["time"]),
                            output::s(&h["details"]).replace('-', "")
                        ),
                    ));
                }
                rows
            });
        }
        JobCmd::Output { id, follow, conn } => {
            let c = Client::new(&conn)?;
            if !follow {
                print!(
                    "{}",
                    c.get_text(&format!("{BASE}/jobs/{}/output", enc(&id)))
                        .await?
                );
                return Ok(());
            }
            follow_job(&c, &id, conn.json).await?;
        }
        JobCmd::Streams { id, stream, conn } => {
            let c = Client::new(&conn)?;
            let mut path = format!("{BASE}/jobs/{}/streams", enc(&id));
            if let Some(s) = stream {
                path.push_str(&format!("?streamType={}", enc(&s)));
            }
            let list = c.api(Method::GET, &path, None).await?;
            let records = list["value"].as_array().cloned().unwrap_or_default();
            output::print(
                conn.json,
                &list,
                &records,
                Columns::new()
                    .col("TIME", |r: &Value| short_time(&r["time"]))
                    .col("STREAM", |r| output::s(&r["streamType"]))
                    .col("TEXT", |r| output::s(&r["streamText"])),
            );
        }
        JobCmd::Stop { id, conn } => {
            let c = Client::new(&conn)?;
            let job = c
                .api(
                    Method::POST,
                    &format!("{BASE}/jobs/{}/stop", enc(&id)),
                    None,
                )
                .await?;
            if conn.json {
                output::json(&job);
                return Ok(());
            }
            println!("Job {id}: {}", output::s(&job["properties"]["status"]));
        }
        JobCmd::Resume { id, conn } => {
            let c = Client::new(&conn)?;
            let job = c
                .api(
                    Method::POST,
                    &format!("{BASE}/jobs/{}/resume", enc(&id)),
                    None,
                )
                .await?;
            println!("Job {id}: {}", output::s(&job["properties"]["status"]));
        }
        JobCmd::Wait { id, timeout, conn } => {
            let c = Client::new(&conn)?;
            wait_job(&c, &id, timeout, conn.json).await?;
        }
    }
    Ok(())
}

const FINAL: [&str; 4] = ["Completed", "Failed", "Stopped", "Suspended"];

/// Polls with a spinner until the job is final; non-zero unless Completed.
async fn wait_job(c: &Client, id: &str, timeout: u64, json_out: bool) -> anyhow::Result<()> {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} job {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(100));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let job = loop {
        let job = c
            .api(Method::GET, &format!("{BASE}/jobs/{}", enc(id)), None)
            .await?;
        let status = output::s(&job["properties"]["status"]);
        pb.set_message(format!("{id}: {status}"));
        if FINAL.contains(&status.as_str()) {
            break job;
        }
        if tokio::time::Instant::now() > deadline {
            pb.finish_and_clear();
            bail!(
                "job {id} is still {status} after {timeout} s; check it with: herald job show {id}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    pb.finish_and_clear();
    let status = output::s(&job["properties"]["status"]);
    if json_out {
        output::json(&job);
    } else {
        print!(
            "{}",
            c.get_text(&format!("{BASE}/jobs/{}/output", enc(id)))
                .await?
        );
        eprintln!("job {id}: {status}");
    }
    if status != "Completed" {
        bail!(
            "job {id} ended {status}: {} (details: herald job show {id})",
            output::s(&job["properties"]["statusDetails"])
        );
    }
    Ok(())
}

/// Tails the job over server-sent events until its final status.
async fn follow_job(c: &Client, id: &str, json_out: bool) -> anyhow::Result<()> {
    let mut last: Option<String> = None;
    loop {
        let path = match &last {
            Some(seq) => format!("{BASE}/jobs/{}/streams?after={seq}", enc(id)),
            None => format!("{BASE}/jobs/{}/streams", enc(id)),
        };
        let resp = c.get_stream(&path, "text/event-stream").await?;
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        let mut ended = None;
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(pos) = buf.find("\n\n") {
                let frame = buf[..pos].to_owned();
                buf.drain(..pos + 2);
                let (mut ev, mut data, mut fid) = (String::new(), String::new(), None);
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    } else if let Some(v) = line.strip_prefix("id:") {
                        fid = Some(v.trim().to_owned());
                    }
                }
                if let Some(f) = fid {
                    last = Some(f);
                }
                let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                if ev == "status" {
                    ended = Some(v);
                    continue;
                }
                if ev.is_empty() {
                    continue;
                }
                if json_out {
                    println!("{data}");
                } else if ev == "Output" {
                    println!("{}", output::s(&v["streamText"]));
                } else {
                    eprintln!("[{ev}] {}", output::s(&v["streamText"]));
                }
            }
        }
        if let Some(job) = ended {
            let status = output::s(&job["properties"]["status"]);
            eprintln!("job {id}: {status}");
            if status != "Completed" {
                bail!(
                    "job {id} ended {status}: {}",
                    output::s(&job["properties"]["statusDetails"])
                );
            }
            return Ok(());
        }
        // The connection dropped mid-job: resume after the last record seen.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(crate) async fn run_asset(cmd: AssetCmd) -> anyhow::Result<()> {
    match cmd {
        AssetCmd::Get { name, field, conn } => {
            let c = Client::new(&conn)?;
            let v = c
                .api(
                    Method::GET,
                    &format!("{BASE}/job/assets/{}", enc(&name)),
                    None,
                )
                .await
                .context(
                    "assets are read from inside a runbook job (HERALD_TOKEN is the job's token)",
                )?;
            match (field.as_deref(), conn.json) {
                (Some(f), _) => println!("{}", output::s(&v[f])),
                (None, true) => output::json(&v),
                (None, false) if v.get("password").is_some() => output::json(&v),
                (None, false) => println!("{}", output::s(&v["value"])),
            }
        }
        AssetCmd::SetVariable {
            name,
            value,
            encrypted,
            conn,
        } => {
            let c = Client::new(&conn)?;
            c.api(
                Method::PUT,
                &format!("{BASE}/variables/{}", enc(&name)),
                Some(&json!({ "value": value, "isEncrypted": encrypted })),
            )
            .await?;
            println!(
                "Variable {name} saved{}.",
                if encrypted { " (encrypted)" } else { "" }
            );
        }
        AssetCmd::SetCredential {
            name,
            username,
            conn,
        } => {
            let c = Client::new(&conn)?;
            let password = match std::env::var("HERALD_ASSET_PASSWORD") {
                Ok(p) => p,
                Err(_) => {
                    eprintln!("password (end with Enter):");
                    let mut s = String::new();
                    std::io::stdin().read_line(&mut s)?;
                    s.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            c.api(
                Method::PUT,
                &format!("{BASE}/credentials/{}", enc(&name)),
                Some(&json!({ "userName": username, "password": password })),
            )
            .await?;
            println!("Credential {name} saved (sealed).");
        }
        AssetCmd::List { conn } => {
            let c = Client::new(&conn)?;
            let vars = c
                .api(Method::GET, &format!("{BASE}/variables"), None)
                .await?;
            let creds = c
                .api(Method::GET, &format!("{BASE}/credentials"), None)
                .await?;
            let raw = json!({ "variables": vars["value"], "credentials": creds["value"] });
            let mut rows = Vec::new();
            for v in vars["value"].as_array().cloned().unwrap_or_default() {
                let p = &v["properties"];
                let shown = if p["isEncrypted"] == json!(true) {
                    "(encrypted)".into()
                } else {
                    output::s(&p["value"])
                };
                rows.push([output::s(&v["name"]), "variable".into(), shown]);
            }
            for v in creds["value"].as_array().cloned().unwrap_or_default() {
                rows.push([
                    output::s(&v["name"]),
                    "credential".into(),
                    format!("user {}", output::s(&v["properties"]["userName"])),
                ]);
            }
            output::print(
                conn.json,
                &raw,
                &rows,
                Columns::new()
                    .col("NAME", |r: &[String; 3]| r[0].clone())
                    .col("KIND", |r| r[1].clone())
                    .col("VALUE", |r| r[2].clone()),
            );
        }
        AssetCmd::Delete { name, kind, conn } => {
            let c = Client::new(&conn)?;
            let coll = match kind.as_str() {
                "variable" => "variables",
                "credential" => "credentials",
                _ => bail!("--kind must be variable or credential"),
            };
            c.api(
                Method::DELETE,
                &format!("{BASE}/{coll}/{}", enc(&name)),
                None,
            )
            .await?;
            println!("{kind} {name} deleted.");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::json_path;
    use serde_json::json;

    #[test]
    fn json_paths_parse_json_in_strings() {
        let input = json!({"WebhookData": {"RequestBody": "[{\"eventType\":\"X\",\"data\":{\"ObjectName\":\"db\"}}]"}});
        assert_eq!(
            json_path(&input, "WebhookData.RequestBody.0.eventType"),
            Some(json!("X"))
        );
        assert_eq!(
            json_path(&input, "webhookdata.requestbody.0.data.ObjectName"),
            Some(json!("db"))
        );
        assert_eq!(json_path(&input, "WebhookData.RequestBody.5"), None);
        assert_eq!(json_path(&input, "nope"), None);
    }
}
