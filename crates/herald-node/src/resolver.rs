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
