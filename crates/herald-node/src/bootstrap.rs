//! Start-up facts kept in storage: the master-key check and the bootstrap
//! admin token.

use anyhow::Context;
use herald_core::seal::MasterKey;
use herald_server::auth::hash_token;
use herald_storage::TokenRecord;

const KEY_CHECK: &str = "master_key_check";

pub(crate) async fn put_admin(
    storage: &dyn herald_storage::Storage,
    token: &str,
    name: &str,
) -> anyhow::Result<()> {
    storage
        .put_token(
            &hash_token(token),
            &TokenRecord {
                id: format!("tok_{}", uuid::Uuid::now_v7().simple()),
                name: name.into(),
                role: "admin".into(),
                created: chrono::Utc::now().timestamp(),
            },
        )
        .await?;
    Ok(())
}

/// Refuses to start with a master key that cannot open this data dir's
/// secrets, instead of failing later on every read.
pub(crate) async fn check_master_key(
    storage: &dyn herald_storage::Storage,
    master: &MasterKey,
) -> anyhow::Result<()> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let sealed = STANDARD.encode(master.seal_direct(b"herald", KEY_CHECK.as_bytes()));
    let stored = storage.init_setting(KEY_CHECK, &sealed).await?;
    let raw = STANDARD
        .decode(stored)
        .context("corrupt master key check")?;
    master.open_direct(&raw, KEY_CHECK.as_bytes()).map_err(|_| {
        anyhow::anyhow!(
            "the master key does not match this data dir: set HERALD_MASTER_KEY (or restore master.key) to the key it was created with"
        )
    })?;
    Ok(())
}
