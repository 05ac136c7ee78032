//! The identity store, written once for both engines. Every write is one
//! statement or a short transaction whose rows no other writer races for
//! (a principal's id is chosen by its creator), so nothing differs between
//! the engines.

pub(crate) const PRINCIPAL_COLS: &str = "app_id, object_id, display_name, builtin, created";
pub(crate) const SECRET_COLS: &str = "app_id, key_id, display_name, hint, hash, created, expires";

/// Implements [`IdentityStore`](crate::IdentityStore) for an engine.
macro_rules! identity_store {
    ($S:ty) => {
        mod identity_store {
            use super::*;
            use crate::Result;
            use crate::engine::{BoxFuture, Engine};
            use crate::identity::store::{PRINCIPAL_COLS, SECRET_COLS};
            use crate::identity::*;

            #[async_trait::async_trait]
            impl IdentityStore for $S {
                async fn create_principal(&self, p: &PrincipalRecord) -> Result<bool> {
                    let p = p.clone();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "INSERT INTO principals (app_id, object_id, display_name, \
                                 builtin, created) VALUES ($1, $2, $3, $4, $5) \
                                 ON CONFLICT DO NOTHING",
                            )
                            .bind(&p.app_id)
                            .bind(&p.object_id)
                            .bind(&p.display_name)
                            .bind(p.builtin)
                            .bind(p.created)
                            .execute(&mut *tx)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn principal(&self, app_id: &str) -> Result<Option<PrincipalRecord>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {PRINCIPAL_COLS} FROM principals WHERE app_id = $1"
                    ))
                    .bind(app_id)
                    .fetch_optional(self.reader())
                    .await?)
                }

                async fn list_principals(&self) -> Result<Vec<PrincipalRecord>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {PRINCIPAL_COLS} FROM principals ORDER BY display_name, app_id"
                    ))
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn delete_principal(&self, app_id: &str) -> Result<bool> {
                    let app_id = app_id.to_owned();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            // Explicit rather than by cascade: access policies
                            // name the principal by object id, not by key.
                            sqlx::query("DELETE FROM vault_access_policies WHERE app_id = $1")
                                .bind(&app_id)
                                .execute(&mut *tx)
                                .await?;
                            sqlx::query("DELETE FROM principal_secrets WHERE app_id = $1")
                                .bind(&app_id)
                                .execute(&mut *tx)
                                .await?;
                            let done = sqlx::query("DELETE FROM principals WHERE app_id = $1")
                                .bind(&app_id)
                                .execute(&mut *tx)
                                .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn add_client_secret(&self, s: &ClientSecretRecord) -> Result<bool> {
                    let s = s.clone();
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "INSERT INTO principal_secrets (app_id, key_id, display_name, \
                                 hint, hash, created, expires) \
                                 SELECT app_id, $2, $3, $4, $5, $6, $7 FROM principals \
                                 WHERE app_id = $1",
                            )
                            .bind(&s.app_id)
                            .bind(&s.key_id)
                            .bind(&s.display_name)
                            .bind(&s.hint)
                            .bind(&s.hash)
                            .bind(s.created)
                            .bind(s.expires)
                            .execute(&mut *tx)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }

                async fn client_secrets(&self, app_id: &str) -> Result<Vec<ClientSecretRecord>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {SECRET_COLS} FROM principal_secrets WHERE app_id = $1 \
                         ORDER BY created, key_id"
                    ))
                    .bind(app_id)
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn remove_client_secret(&self, app_id: &str, key_id: &str) -> Result<bool> {
                    let (app_id, key_id) = (app_id.to_owned(), key_id.to_owned());
                    self.write(move |tx| -> BoxFuture<'_, Result<_>> {
                        Box::pin(async move {
                            let done = sqlx::query(
                                "DELETE FROM principal_secrets WHERE app_id = $1 AND key_id = $2",
                            )
                            .bind(&app_id)
                            .bind(&key_id)
                            .execute(&mut *tx)
                            .await?;
                            Ok(done.rows_affected() == 1)
                        })
                    })
                    .await
                }
            }
        }
    };
}

pub(crate) use identity_store;
