//! `herald storage account ...`: storage accounts for the Azure Storage SDKs
//! (what `az storage account create|list|show|keys` do).

use crate::client::{Client, Conn};
use crate::output::{self, Columns};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Subcommand)]
pub(crate) enum StorageCmd {
    /// Storage accounts: create, list, show, keys, regenerate, delete
    #[command(subcommand)]
    Account(AccountCmd),
}

#[derive(Subcommand)]
pub(crate) enum AccountCmd {
    /// Create a storage account (3-24 lowercase letters and digits) and print its connection string
    Create {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List storage accounts
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one storage account
    Show {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print the account keys and the connection string (key1)
    Keys {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Replace key1 or key2 with a new key; clients signing with the old one stop working
    Regenerate {
        name: String,
        /// key1 or key2
        #[arg(long, default_value = "key1")]
        key: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a storage account with all its containers and blobs
    Delete {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

fn print_accounts(conn: &Conn, raw: &Value, list: &[Value]) {
    output::print(
        conn.json,
        raw,
        list,
        Columns::new()
            .col("NAME", |v: &Value| output::s(&v["name"]))
            .col("BLOB ENDPOINT", |v| {
                output::s(&v["properties"]["primaryEndpoints"]["blob"])
            })
            .col("CREATED", |v| output::s(&v["properties"]["creationTime"])),
    );
}

fn print_keys(conn: &Conn, k: &Value) {
    output::fields(conn.json, k, ["FIELD", "VALUE"], || {
        let mut rows: Vec<(String, String)> = k["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| (output::s(&e["keyName"]), output::s(&e["value"])))
            .collect();
        rows.push(("connectionString".into(), output::s(&k["connectionString"])));
        rows
    });
}

pub(crate) async fn run(cmd: StorageCmd) -> anyhow::Result<()> {
    let StorageCmd::Account(cmd) = cmd;
    match cmd {
        AccountCmd::Create { name, conn } => {
            let c = Client::new(&conn)?;
            c.api(
                Method::POST,
                "/api/v1/storage/accounts",
                Some(&json!({"name": name})),
            )
            .await?;
            let k = c
                .api(
                    Method::POST,
                    &format!("/api/v1/storage/accounts/{name}/listKeys"),
                    None,
                )
                .await?;
            print_keys(&conn, &k);
            if !conn.json {
                eprintln!(
                    "Keep the connection string in a vault: herald secret set {name}-connection --value '<connectionString>'"
                );
            }
        }
        AccountCmd::List { conn } => {
            let v = Client::new(&conn)?
                .api(Method::GET, "/api/v1/storage/accounts", None)
                .await?;
            let list = v["value"].as_array().cloned().unwrap_or_default();
            print_accounts(&conn, &v, &list);
        }
        AccountCmd::Show { name, conn } => {
            let v = Client::new(&conn)?
                .api(
                    Method::GET,
                    &format!("/api/v1/storage/accounts/{name}"),
                    None,
                )
                .await?;
            print_accounts(&conn, &v, std::slice::from_ref(&v));
        }
        AccountCmd::Keys { name, conn } => {
            let k = Client::new(&conn)?
                .api(
                    Method::POST,
                    &format!("/api/v1/storage/accounts/{name}/listKeys"),
                    None,
                )
                .await?;
            print_keys(&conn, &k);
        }
        AccountCmd::Regenerate { name, key, conn } => {
            let k = Client::new(&conn)?
                .api(
                    Method::POST,
                    &format!("/api/v1/storage/accounts/{name}/regenerateKey"),
                    Some(&json!({"keyName": key})),
                )
                .await?;
            print_keys(&conn, &k);
        }
        AccountCmd::Delete { name, conn } => {
            Client::new(&conn)?
                .api(
                    Method::DELETE,
                    &format!("/api/v1/storage/accounts/{name}"),
                    None,
                )
                .await?;
            if !conn.json {
                println!("Deleted storage account {name}.");
            }
        }
    }
    Ok(())
}
