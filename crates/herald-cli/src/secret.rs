//! `herald secret ...`: the Key Vault data plane from the shell.

use crate::client::{Client, Conn};
use crate::output::{self, Columns};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::io::Read;

#[derive(Args, Clone)]
pub(crate) struct Target {
    /// Vault holding the secret
    #[arg(long, env = "HERALD_VAULT", default_value = "default", global = true)]
    vault: String,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args, Clone, Default)]
pub(crate) struct Meta {
    /// Content type, e.g. text/plain
    #[arg(long)]
    content_type: Option<String>,
    /// Tag as KEY=VALUE (repeatable)
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,
    /// Expiry: RFC 3339, unix seconds, or relative like +30d
    #[arg(long)]
    expires: Option<String>,
    /// Not-before: RFC 3339, unix seconds, or relative like +1h
    #[arg(long)]
    not_before: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum SecretCmd {
    /// Set a secret (creates a new version)
    Set {
        name: String,
        /// The value; "-" reads stdin, "@PATH" reads a file; omitted, it is
        /// prompted for without echo (or read from stdin when piped). Values
        /// on the command line show up in `ps` and shell history.
        value: Option<String>,
        #[command(flatten)]
        meta: Meta,
        /// Create the version disabled
        #[arg(long)]
        disabled: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Print a secret's value (latest version unless --version)
    Get {
        name: String,
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Show a secret's attributes without its value
    Show {
        name: String,
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// List secrets (latest version of each)
    List {
        /// List soft-deleted secrets instead
        #[arg(long)]
        deleted: bool,
        #[command(flatten)]
        target: Target,
    },
    /// List a secret's versions
    Versions {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Update attributes, tags or content type of a version
    Update {
        name: String,
        #[arg(long)]
        version: Option<String>,
        /// Enable or disable the version
        #[arg(long)]
        enabled: Option<bool>,
        #[command(flatten)]
        meta: Meta,
        #[command(flatten)]
        target: Target,
    },
    /// Soft-delete a secret (all versions); recover or purge it later
    Delete {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Recover a soft-deleted secret
    Recover {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Permanently remove a soft-deleted secret
    Purge {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

fn body_meta(
    meta: &Meta,
    body: &mut Map<String, Value>,
    enabled: Option<bool>,
) -> anyhow::Result<()> {
    if let Some(ct) = &meta.content_type {
        body.insert("contentType".into(), json!(ct));
    }
    if !meta.tags.is_empty() {
        let mut tags = Map::new();
        for t in &meta.tags {
            let (k, v) = t
                .split_once('=')
                .with_context(|| format!("bad --tag '{t}': use KEY=VALUE"))?;
            tags.insert(k.into(), json!(v));
        }
        body.insert("tags".into(), Value::Object(tags));
    }
    let mut attrs = Map::new();
    if let Some(e) = &meta.expires {
        attrs.insert("exp".into(), json!(output::parse_time(e)?));
    }
    if let Some(n) = &meta.not_before {
        attrs.insert("nbf".into(), json!(output::parse_time(n)?));
    }
    if let Some(e) = enabled {
        attrs.insert("enabled".into(), json!(e));
    }
    if !attrs.is_empty() {
        body.insert("attributes".into(), Value::Object(attrs));
    }
    Ok(())
}

fn version_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .and_then(|id| id.rsplit('/').next())
        .unwrap_or("-")
        .to_owned()
}

fn name_of(v: &Value) -> String {
    let id = v["id"].as_str().unwrap_or_default();
    let mut parts = id
        .split('/')
        .skip_while(|p| *p != "secrets" && *p != "deletedsecrets")
        .skip(1);
    parts.next().unwrap_or("-").to_owned()
}

fn show(conn: &Conn, v: &Value) {
    output::fields(conn.json, v, ["FIELD", "VALUE"], || {
        let a = &v["attributes"];
        let mut rows = vec![
            ("id".into(), output::s(&v["id"])),
            ("enabled".into(), output::s(&a["enabled"])),
            ("content type".into(), output::s(&v["contentType"])),
            ("not before".into(), output::ts(&a["nbf"])),
            ("expires".into(), output::ts(&a["exp"])),
            ("created".into(), output::ts(&a["created"])),
            ("updated".into(), output::ts(&a["updated"])),
            ("recovery level".into(), output::s(&a["recoveryLevel"])),
            ("tags".into(), output::s(&v["tags"])),
        ];
        if v.get("recoveryId").is_some() {
            rows.push(("recovery id".into(), output::s(&v["recoveryId"])));
            rows.push(("deleted".into(), output::ts(&v["deletedDate"])));
            rows.push((
                "scheduled purge".into(),
                output::ts(&v["scheduledPurgeDate"]),
            ));
        }
        rows
    });
}

/// Follows nextLink until the listing ends.
async fn list_all(vc: &crate::client::VaultClient, path: &str) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut page = vc.call(Method::GET, path, None).await?;
    loop {
        items.extend(page["value"].as_array().cloned().unwrap_or_default());
        let Some(next) = page["nextLink"].as_str().filter(|s| !s.is_empty()) else {
            return Ok(items);
        };
        let url = reqwest::Url::parse(next)?;
        let query: Vec<String> = url
            .query_pairs()
            .filter(|(k, _)| k != "api-version")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        page = vc
            .call(
                Method::GET,
                &format!("{}?{}", url.path(), query.join("&")),
                None,
            )
            .await?;
    }
}

/// A secret value from argv, stdin (`-`), a file (`@PATH`) or, when none
/// is given, a prompt that does not echo.
fn secret_value(arg: Option<&str>) -> anyhow::Result<String> {
    use std::io::IsTerminal;
    match arg {
        Some("-") => read_stdin(),
        Some(a) => match a.strip_prefix('@') {
            // Kept byte for byte: PEM files and the like end in a newline
            // that belongs to them.
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read the secret value from {path}: {e}")),
            None => Ok(a.to_owned()),
        },
        None if std::io::stdin().is_terminal() => Ok(rpassword::prompt_password("secret value: ")?),
        None => read_stdin(),
    }
}

/// All of stdin, less trailing newlines (`echo VALUE |` adds one).
fn read_stdin() -> anyhow::Result<String> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s)?;
    Ok(s.trim_end_matches(['\n', '\r']).to_owned())
}

pub(crate) async fn run(cmd: SecretCmd) -> anyhow::Result<()> {
    match cmd {
        SecretCmd::Set {
            name,
            value,
            meta,
            disabled,
            target,
        } => {
            let value = secret_value(value.as_deref())?;
            let mut body = Map::new();
            body.insert("value".into(), json!(value));
            body_meta(&meta, &mut body, disabled.then_some(false))?;
            let vc = Client::new(&target.conn)?.vault(&target.vault).await?;
            let mut v = vc
                .call(
                    Method::PUT,
                    &format!("/secrets/{name}"),
                    Some(&Value::Object(body)),
                )
                .await?;
            if let Some(o) = v.as_object_mut() {
                o.remove("value");
            }
            if target.conn.json {
                output::json(&v);
            } else {
                println!(
                    "Set {name} version {} in vault {}.",
                    version_of(&v),
                    target.vault
                );
            }
        }
        SecretCmd::Get {
            name,
            version,
            target,
        } => {
            let vc = Client::new(&target.conn)?.vault(&target.vault).await?;
            let v = vc
                .call(
                    Method::GET,
                    &format!("/secrets/{name}/{}", version.unwrap_or_default()),
                    None,
                )
                .await?;
            if target.conn.json {
                output::json(&v);
            } else {
                println!("{}", v["value"].as_str().unwrap_or_default());
            }
        }
        SecretCmd::Show {
            name,
            version,
            target,
        } => {
            let vc = Client::new(&target.conn)?.vault(&target.vault).await?;
            let mut v = vc
                .call(
                    Method::GET,
                    &format!("/secrets/{name}/{}", version.unwrap_or_default()),
                    None,
                )
                .await?;
            if let Some(o) = v.as_object_mut() {
                o.remove("value");
            }
            show(&target.conn, &v);
        }
        SecretCmd::List { deleted, target } => {
            let vc = Client::new(&target.conn)?.vault(&target.vault).await?;
            let path = if deleted {
                "/deletedsecrets?maxresults=25"
            } else {
                "/secrets?maxresults=25"
            };
            let items = list_all(&vc, path).await?;
            let columns = if deleted {
                Columns::new()
                    .col("NAME", name_of)
                    .col("DELETED", |i: &Value| output::ts(&i["deletedDate"]))
                    .col("SCHEDULED PURGE", |i| output::ts(&i["scheduledPurgeDate"]))
            } else {
                Columns::new()
                    .col("NAME", name_of)
                    .col("ENABLED", |i: &Value| {
                        output::s(&i["attributes"]["enabled"])
                    })
                    .col("EXPIRES", |i| output::ts(&i["attributes"]["exp"]))
                    .col("UPDATED", |i| output::ts(&i["attributes"]["updated"]))
                    .col("CONTENT TYPE", |i| output::s(&i["contentType"]))
            };
            output::print(target.conn.json, &items, &items, columns);
        }
        SecretCmd::Versions { name, target } => {
            let vc = Client::new(&target.conn)?.vault(&target.vault).await?;
            let items = list_all(&vc, &format!("/secrets/{name}/versions?maxresults=25")).await?;
            output::print(
                target.conn.json,
                &items,
                &items,
                Columns::new()
                    .col("VERSION", version_of)
                    .col("ENABLED", |i: &Value| {
                        output::s(&i["attributes"]["enabled"])
                    })
                    .col("CREATED", |i| output::ts(&i["attributes"]["created"]))
                    .col("EXPIRES", |i| output::ts(&i["attributes"]["exp"])),
            );
        }
        SecretCmd::Update {
            name,
            version,
            enabled,
            meta,
            target,
        } => {
            let mut body = Map::new();
            body_meta(&meta, &mut body, enabled)?;
            if body.is_empty() {
                bail!(
                    "nothing to update: pass --enabled, --expires, --not-before, --content-type or --tag"
                );
            }
            let vc = Client::new(&target.conn)?.vault(&target.vault).await?;
            let v = vc
                .call(
                    Method::PATCH,
                    &format!("/secrets/{name}/{}", version.unwrap_or_default()),
                    Some(&Value::Object(body)),
                )
                .await?;
            show(&target.conn, &v);
        }
        SecretCmd::Delete { name, target } => {
            let vc = Client::new(&target.conn)?.vault(&target.vault).await?;
            let v = vc
                .call(Method::DELETE, &format!("/secrets/{name}"), None)
                .await?;
            if target.conn.json {
                output::json(&v);
            } else {
                println!(
                    "Deleted {name}. It can be recovered until {} with: herald secret recover {name} --vault {}",
                    output::ts(&v["scheduledPurgeDate"]),
                    target.vault
                );
            }
        }
        SecretCmd::Recover { name, target } => {
            let vc = Client::new(&target.conn)?.vault(&target.vault).await?;
            let v = vc
                .call(
                    Method::POST,
                    &format!("/deletedsecrets/{name}/recover"),
                    None,
                )
                .await?;
            if target.conn.json {
                output::json(&v);
            } else {
                println!("Recovered {name}.");
            }
        }
        SecretCmd::Purge { name, target } => {
            let vc = Client::new(&target.conn)?.vault(&target.vault).await?;
            vc.call(Method::DELETE, &format!("/deletedsecrets/{name}"), None)
                .await?;
            if !target.conn.json {
                println!("Purged {name}; it cannot be recovered.");
            }
        }
    }
    Ok(())
}
