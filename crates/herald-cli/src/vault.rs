//! `herald vault ...`

use crate::client::{Client, Conn};
use crate::output::{self, Columns};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Subcommand)]
pub(crate) enum VaultCmd {
    /// Create a vault, served at NAME.<vault base>
    Create {
        name: String,
        /// Soft-delete retention in days (7-90)
        #[arg(long, default_value_t = 90)]
        retention_days: i64,
        /// Turn on purge protection (cannot be turned off)
        #[arg(long)]
        purge_protection: bool,
        /// Seconds before `exp` that SecretNearExpiry fires [default: 30 days]
        #[arg(long)]
        near_expiry_window: Option<i64>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List vaults
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one vault
    Show {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a vault and everything in it
    Delete {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

fn print_vaults(conn: &Conn, v: &Value, list: &[Value]) {
    output::print(
        conn.json,
        v,
        list,
        Columns::new()
            .col("NAME", |v: &Value| output::s(&v["name"]))
            .col("URI", |v| output::s(&v["vaultUri"]))
            .col("RETENTION (DAYS)", |v| {
                output::s(&v["softDeleteRetentionInDays"])
            })
            .col("PURGE PROTECTION", |v| {
                output::s(&v["enablePurgeProtection"])
            })
            .col("RECOVERY LEVEL", |v| output::s(&v["recoveryLevel"])),
    );
}

pub(crate) async fn run(cmd: VaultCmd) -> anyhow::Result<()> {
    match cmd {
        VaultCmd::Create {
            name,
            retention_days,
            purge_protection,
            near_expiry_window,
            conn,
        } => {
            let mut body = json!({
                "name": name,
                "softDeleteRetentionInDays": retention_days,
                "enablePurgeProtection": purge_protection,
            });
            if let Some(w) = near_expiry_window {
                body["nearExpiryWindowInSeconds"] = json!(w);
            }
            let v = Client::new(&conn)?
                .api(Method::POST, "/api/v1/vaults", Some(&body))
                .await?;
            print_vaults(&conn, &v, std::slice::from_ref(&v));
        }
        VaultCmd::List { conn } => {
            let v = Client::new(&conn)?
                .api(Method::GET, "/api/v1/vaults", None)
                .await?;
            let list = v["value"].as_array().cloned().unwrap_or_default();
            print_vaults(&conn, &v, &list);
        }
        VaultCmd::Show { name, conn } => {
            let v = Client::new(&conn)?
                .api(Method::GET, &format!("/api/v1/vaults/{name}"), None)
                .await?;
            print_vaults(&conn, &v, std::slice::from_ref(&v));
        }
        VaultCmd::Delete { name, conn } => {
            Client::new(&conn)?
                .api(Method::DELETE, &format!("/api/v1/vaults/{name}"), None)
                .await?;
            if !conn.json {
                println!("Deleted vault {name}.");
            }
        }
    }
    Ok(())
}
