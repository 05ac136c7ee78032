//! `herald status` (an overview of a server) and `herald login` (store how
//! to reach one).

use crate::client::{Client, Conn, Login};
use crate::output::{self, Columns};
use anyhow::{Context, bail};
use clap::Args;
use reqwest::Method;
use serde_json::Value;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    conn: Conn,
}

pub(crate) async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.conn)?;
    let s = c.api(Method::GET, "/api/v1/status", None).await?;
    if args.conn.json {
        output::json(&s);
        return Ok(());
    }
    let list = |v: &Value| -> String {
        let items: Vec<String> = v
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(output::s)
            .collect();
        if items.is_empty() {
            "-".into()
        } else {
            items.join(", ")
        }
    };
    println!("Herald {} at {}", output::s(&s["version"]), c.addr());
    output::print_table(
        &[
            ("Storage".into(), output::s(&s["storage"])),
            ("Job sandbox".into(), output::s(&s["sandbox"])),
            ("Vaults".into(), list(&s["vaults"])),
            (
                "Topics".into(),
                s["topics"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|t| {
                                format!("{} ({})", output::s(&t["name"]), output::s(&t["kind"]))
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| "-".into()),
            ),
            ("Runbooks".into(), output::s(&s["runbooks"])),
            ("Webhooks".into(), output::s(&s["webhooks"])),
            (
                "Remote workers".into(),
                s["remoteWorkers"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|w| {
                                format!("{} ({})", output::s(&w["id"]), output::s(&w["group"]))
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| "-".into()),
            ),
        ],
        output::pairs(["SERVER", ""]),
    );
    let subs = s["subscriptions"].as_array().cloned().unwrap_or_default();
    if !subs.is_empty() {
        println!("\nEvent subscriptions");
        output::print_table(
            &subs,
            Columns::new()
                .col("TOPIC", |x: &Value| output::s(&x["topic"]))
                .col("SUBSCRIPTION", |x| output::s(&x["name"]))
                .col("STATE", |x| output::s(&x["provisioningState"]))
                .col("BACKLOG", |x| output::s(&x["backlog"]))
                .col("DELIVERED", |x| output::s(&x["delivered"]))
                .col("DEAD-LETTERED", |x| output::s(&x["deadLettered"])),
        );
    }
    let hubs = s["hubs"].as_array().cloned().unwrap_or_default();
    if !hubs.is_empty() {
        println!("\nEvent hubs");
        output::print_table(
            &hubs,
            Columns::new()
                .col("NAMESPACE", |x: &Value| output::s(&x["namespace"]))
                .col("HUB", |x| output::s(&x["name"]))
                .col("PARTITIONS", |x| output::s(&x["partitions"]))
                .col("EVENTS IN", |x| output::s(&x["incomingEvents"]))
                .col("EVENTS OUT", |x| output::s(&x["outgoingEvents"]))
                .col("CONSUMER LAG", |x| {
                    x["consumerGroups"]
                        .as_array()
                        .map(|g| {
                            g.iter()
                                .map(|g| {
                                    format!("{} {}", output::s(&g["name"]), output::s(&g["lag"]))
                                })
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default()
                }),
        );
    }
    let jobs = s["jobs"].as_object().cloned().unwrap_or_default();
    println!("\nJobs by status");
    if jobs.is_empty() {
        println!("  none yet");
    } else {
        let rows: Vec<(String, String)> = jobs
            .iter()
            .map(|(k, v)| (k.clone(), output::s(v)))
            .collect();
        output::print_table(&rows, output::pairs(["STATUS", "JOBS"]));
    }
    Ok(())
}

#[derive(Args)]
pub(crate) struct LoginArgs {
    /// Server address, e.g. https://herald.example:8443
    #[arg(long, env = "HERALD_ADDR", default_value = "https://127.0.0.1:8443")]
    addr: String,
    /// CA certificate to trust (kept by path)
    #[arg(long, env = "HERALD_CACERT")]
    ca_cert: Option<PathBuf>,
    /// Read the token from stdin instead of HERALD_TOKEN or a prompt
    #[arg(long)]
    token_stdin: bool,
}

pub(crate) async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let token = match std::env::var("HERALD_TOKEN") {
        Ok(t) if !args.token_stdin => t,
        _ => {
            use std::io::IsTerminal;
            if !args.token_stdin && std::io::stdin().is_terminal() {
                // Read from the terminal without echo: the admin token must
                // not end up on screen, in scrollback or a screen recording.
                rpassword::prompt_password(
                    "admin token (printed by `herald serve` at first start): ",
                )?
                .trim()
                .to_owned()
            } else {
                let mut s = String::new();
                std::io::stdin().read_line(&mut s)?;
                s.trim().to_owned()
            }
        }
    };
    if token.is_empty() {
        bail!("no token given");
    }
    let ca_cert = match &args.ca_cert {
        Some(p) => {
            Some(std::fs::canonicalize(p).with_context(|| format!("cannot find {}", p.display()))?)
        }
        None => std::fs::canonicalize("herald-data/tls/ca.pem").ok(),
    };
    let login = Login {
        addr: args.addr.trim_end_matches('/').to_owned(),
        token,
        ca_cert,
    };
    // Check before storing, so a typo never becomes the default.
    let conn = Conn {
        addr: Some(login.addr.clone()),
        ca_cert: login.ca_cert.clone(),
        json: false,
    };
    let probe = Client::with_token(&conn, &login.token)?;
    let s = probe
        .api(Method::GET, "/api/v1/status", None)
        .await
        .context("the server refused the login; check the address, CA and token")?;
    let path = login.save()?;
    println!(
        "Logged in to Herald {} at {} (storage {}). Saved to {} (mode 0600).",
        output::s(&s["version"]),
        login.addr,
        output::s(&s["storage"]),
        path.display()
    );
    Ok(())
}
