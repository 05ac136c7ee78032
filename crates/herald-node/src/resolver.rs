//! The vault as the push engine's resolver of secret delivery headers.

use herald_vault::VaultService;

/// Resolves secret delivery headers from the vault at send time.
pub(crate) struct VaultResolver(pub(crate) VaultService);

impl herald_delivery::SecretResolver for VaultResolver {
    fn resolve<'a>(
        &'a self,
        vault: &'a str,
        name: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<String>> + Send + 'a>>
    {
        Box::pin(async move {
            let v = self
                .0
                .vault(vault)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let name = herald_core::SecretName::parse(name)?;
            let (_, _, value) = self
                .0
                .get_secret(&v, &name, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(value)
        })
    }
}

/// Dead letters into Herald's own blob containers.
pub(crate) struct BlobDeadLetters(pub(crate) herald_blob::service::BlobService);

impl herald_delivery::DeadLetterBlobs for BlobDeadLetters {
    fn put<'a>(
        &'a self,
        account: &'a str,
        container: &'a str,
        name: &'a str,
        body: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<bool>> + Send + 'a>>
    {
        use herald_blob::service::{BlobError, BlobHeaders, Conditions, NewBlob};
        Box::pin(async move {
            match self.0.signing_keys(account).await {
                Ok(None) => return Ok(false),
                Ok(Some(_)) => {}
                Err(e) => return Err(anyhow::anyhow!("{e}")),
            }
            let stream: herald_blob::service::BodyStream =
                Box::pin(futures_util::stream::once(async move {
                    Ok(bytes::Bytes::from(body))
                }));
            let headers = BlobHeaders {
                content_type: Some("application/json".into()),
                ..BlobHeaders::default()
            };
            self.0
                .put_blob(
                    account,
                    container,
                    name,
                    stream,
                    NewBlob {
                        headers: &headers,
                        metadata: &[],
                        conditions: &Conditions::default(),
                    },
                )
                .await
                .map_err(|e: BlobError| anyhow::anyhow!("{e}"))?;
            Ok(true)
        })
    }
}
