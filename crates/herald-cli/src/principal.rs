//! `herald principal ...`: applications that get tokens with a client
//! secret (what `az ad sp create-for-rbac` and `az ad app credential` do).

use crate::client::{Client, Conn};
use crate::output::{self, Columns};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Subcommand)]
pub(crate) enum PrincipalCmd {
    /// Create a principal and its first client secret (shown once)
    Create {
        /// Display name, e.g. rotation-runbook
        display_name: String,
        /// Days until the first secret expires
        #[arg(long, default_value_t = 365)]
        secret_days: i64,
        /// Create no secret (add one later with `principal secret add`)
        #[arg(long)]
        no_secret: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List principals
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one principal by appId
    Show {
        app_id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a principal, its secrets and its access policies
    Delete {
        app_id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// A principal's client secrets: add (value shown once), list, remove
    #[command(subcommand)]
    Secret(SecretCmd),
}

#[derive(Subcommand)]
pub(crate) enum SecretCmd {
    /// Add a client secret; several may be valid at once, for rotation
    Add {
        app_id: String,
        /// A label for the secret
        #[arg(long, default_value = "")]
        display_name: String,
        /// Days until it expires
        #[arg(long, default_value_t = 365)]
        days: i64,
        #[command(flatten)]
        conn: Conn,
    },
    /// List a principal's client secrets (never their values)
    List {
        app_id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a client secret by keyId: it issues no more tokens
    Remove {
        app_id: String,
        key_id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

fn print_principals(conn: &Conn, raw: &Value, list: &[Value]) {
    output::print(
        conn.json,
        raw,
        list,
        Columns::new()
            .col("APP ID", |v: &Value| output::s(&v["appId"]))
            .col("DISPLAY NAME", |v| output::s(&v["displayName"]))
            .col("OBJECT ID", |v| output::s(&v["id"]))
            .col("SECRETS", |v| {
                v["passwordCredentials"]
                    .as_array()
                    .map_or(0, Vec::len)
                    .to_string()
            })
            .col("BUILT-IN", |v| output::s(&v["builtin"])),
    );
}

fn print_secrets(conn: &Conn, raw: &Value, list: &[Value]) {
    output::print(
        conn.json,
        raw,
        list,
        Columns::new()
            .col("KEY ID", |v: &Value| output::s(&v["keyId"]))
            .col("DISPLAY NAME", |v| output::s(&v["displayName"]))
            .col("HINT", |v| output::s(&v["hint"]))
            .col("EXPIRES", |v| output::s(&v["endDateTime"])),
    );
}

async fn add_secret(c: &Client, app_id: &str, name: &str, days: i64) -> anyhow::Result<Value> {
    c.api(
        Method::POST,
        &format!("/api/v1/principals/{app_id}/secrets"),
        Some(&json!({"displayName": name, "lifetimeInDays": days})),
    )
    .await
}

pub(crate) async fn run(cmd: PrincipalCmd) -> anyhow::Result<()> {
    match cmd {
        PrincipalCmd::Create {
            display_name,
            secret_days,
            no_secret,
            conn,
        } => {
            let c = Client::new(&conn)?;
            let p = c
                .api(
                    Method::POST,
                    "/api/v1/principals",
                    Some(&json!({"displayName": display_name})),
                )
                .await?;
            let app_id = output::s(&p["appId"]);
            let secret = if no_secret {
                None
            } else {
                Some(add_secret(&c, &app_id, "created with the principal", secret_days).await?)
            };
            // The shape `az ad sp create-for-rbac` prints.
            let out = json!({
                "appId": app_id,
                "displayName": p["displayName"],
                "objectId": p["id"],
                "password": secret.as_ref().map(|s| s["secretText"].clone()),
                "tenant": p["tenantId"],
            });
            output::fields(conn.json, &out, ["FIELD", "VALUE"], || {
                let mut rows = vec![
                    ("appId".into(), app_id.clone()),
                    ("displayName".into(), output::s(&out["displayName"])),
                    ("objectId".into(), output::s(&out["objectId"])),
                    ("tenant".into(), output::s(&out["tenant"])),
                ];
                if secret.is_some() {
                    rows.push(("password".into(), output::s(&out["password"])));
                }
                rows
            });
            if !conn.json && secret.is_some() {
                eprintln!(
                    "The password is shown only now; store it (for example in a vault) before you close this terminal."
                );
            }
        }
        PrincipalCmd::List { conn } => {
            let v = Client::new(&conn)?
                .api(Method::GET, "/api/v1/principals", None)
                .await?;
            let list = v["value"].as_array().cloned().unwrap_or_default();
            print_principals(&conn, &v, &list);
        }
        PrincipalCmd::Show { app_id, conn } => {
            let v = Client::new(&conn)?
                .api(Method::GET, &format!("/api/v1/principals/{app_id}"), None)
                .await?;
            print_principals(&conn, &v, std::slice::from_ref(&v));
        }
        PrincipalCmd::Delete { app_id, conn } => {
            Client::new(&conn)?
                .api(
                    Method::DELETE,
                    &format!("/api/v1/principals/{app_id}"),
                    None,
                )
                .await?;
            if !conn.json {
                println!("Deleted principal {app_id}.");
            }
        }
        PrincipalCmd::Secret(SecretCmd::Add {
            app_id,
            display_name,
            days,
            conn,
        }) => {
            let s = add_secret(&Client::new(&conn)?, &app_id, &display_name, days).await?;
            output::fields(conn.json, &s, ["FIELD", "VALUE"], || {
                ["keyId", "displayName", "secretText", "endDateTime"]
                    .iter()
                    .map(|k| ((*k).to_owned(), output::s(&s[*k])))
                    .collect()
            });
            if !conn.json {
                eprintln!("The secretText is shown only now.");
            }
        }
        PrincipalCmd::Secret(SecretCmd::List { app_id, conn }) => {
            let v = Client::new(&conn)?
                .api(
                    Method::GET,
                    &format!("/api/v1/principals/{app_id}/secrets"),
                    None,
                )
                .await?;
            let list = v["value"].as_array().cloned().unwrap_or_default();
            print_secrets(&conn, &v, &list);
        }
        PrincipalCmd::Secret(SecretCmd::Remove {
            app_id,
            key_id,
            conn,
        }) => {
            Client::new(&conn)?
                .api(
                    Method::DELETE,
                    &format!("/api/v1/principals/{app_id}/secrets/{key_id}"),
                    None,
                )
                .await?;
            if !conn.json {
                println!("Removed client secret {key_id} of {app_id}.");
            }
        }
    }
    Ok(())
}
