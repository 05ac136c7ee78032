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
    /// Give a principal exactly these secret permissions on the vault
    /// (az keyvault set-policy)
    SetPolicy {
        name: String,
        /// The principal's appId (or --object-id)
        #[arg(long, required_unless_present = "object_id")]
        spn: Option<String>,
        /// The principal's object id
        #[arg(long, conflicts_with = "spn")]
        object_id: Option<String>,
        /// get, list, set, delete, recover, backup, restore, purge or all
        #[arg(long, num_args = 1.., required = true)]
        secret_permissions: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a principal's access policy from the vault (az keyvault delete-policy)
    DeletePolicy {
        name: String,
        #[arg(long, required_unless_present = "object_id")]
        spn: Option<String>,
        #[arg(long, conflicts_with = "spn")]
        object_id: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List the vault's access policies
    Policies {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

fn print_policies(conn: &Conn, raw: &Value, list: &[Value]) {
    output::print(
        conn.json,
        raw,
        list,
        Columns::new()
            .col("APP ID", |v: &Value| output::s(&v["applicationId"]))
            .col("OBJECT ID", |v| output::s(&v["objectId"]))
            .col("SECRET PERMISSIONS", |v| {
                v["permissions"]["secrets"]
                    .as_array()
                    .map(|a| a.iter().map(output::s).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default()
            }),
    );
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
        VaultCmd::SetPolicy {
            name,
            spn,
            object_id,
            secret_permissions,
            conn,
        } => {
            let who = spn.or(object_id).unwrap_or_default();
            let perms: Vec<String> = secret_permissions
                .iter()
                .flat_map(|p| p.split([',', ' ']))
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
            let v = Client::new(&conn)?
                .api(
                    Method::PUT,
                    &format!("/api/v1/vaults/{name}/accessPolicies/{who}"),
                    Some(&json!({"permissions": {"secrets": perms}})),
                )
                .await?;
            print_policies(&conn, &v, std::slice::from_ref(&v));
        }
        VaultCmd::DeletePolicy {
            name,
            spn,
            object_id,
            conn,
        } => {
            let who = spn.or(object_id).unwrap_or_default();
            Client::new(&conn)?
                .api(
                    Method::DELETE,
                    &format!("/api/v1/vaults/{name}/accessPolicies/{who}"),
                    None,
                )
                .await?;
            if !conn.json {
                println!("Removed the access policy of {who} from vault {name}.");
            }
        }
        VaultCmd::Policies { name, conn } => {
            let v = Client::new(&conn)?
                .api(
                    Method::GET,
                    &format!("/api/v1/vaults/{name}/accessPolicies"),
                    None,
                )
                .await?;
            let list = v["value"].as_array().cloned().unwrap_or_default();
            print_policies(&conn, &v, &list);
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
