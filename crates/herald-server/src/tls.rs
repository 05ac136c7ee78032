//! TLS material: a local CA and a leaf certificate, generated on first start
//! and kept in the data dir, so clients trust one stable file (`tls/ca.pem`).

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `localhost`, and each parent domain with its wildcard (vaults and hub
/// namespaces are addressed by host).
fn sans(bases: &[&str]) -> Vec<String> {
    let mut out = vec!["localhost".to_owned()];
    for base in bases {
        out.push((*base).to_owned());
        out.push(format!("*.{base}"));
    }
    out
}

/// Ensures `dir/tls` holds a CA and a leaf covering each of `bases` (the
/// vault and hub namespace parent domains); reissues the leaf (same CA)
/// when they changed so clients keep trusting `ca.pem`.
pub fn ensure_generated(data_dir: &Path, bases: &[&str]) -> anyhow::Result<TlsFiles> {
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    let ca_key_path = dir.join("ca.key");
    let sans_path = dir.join("server.sans");
    let wanted = sans(bases).join("\n");

    // The leaf only needs the CA's name and key to chain to the stored
    // ca.pem, so the CA certificate is re-derived from fixed params and the key.
    let ca_key = if files.ca.exists() && ca_key_path.exists() {
        KeyPair::from_pem(&std::fs::read_to_string(&ca_key_path)?).context("reading tls/ca.key")?
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params(3650)?.self_signed(&key)?;
        let _ = std::fs::remove_file(&ca_key_path);
        herald_core::seal::write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
        std::fs::write(&files.ca, cert.pem())?;
        let _ = std::fs::remove_file(&files.cert);
        key
    };
    let ca_params = ca_params(3650)?;

    let current = std::fs::read_to_string(&sans_path).unwrap_or_default();
    if !files.cert.exists() || !files.key.exists() || current != wanted {
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let mut leaf = CertificateParams::new(sans(bases))?;
        leaf.subject_alt_names.extend([
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ]);
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut leaf, 825);
        let key = KeyPair::generate()?;
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;
        let _ = std::fs::remove_file(&files.key);
        herald_core::seal::write_private(&files.key, key.serialize_pem().as_bytes())?;
        std::fs::write(
            &files.cert,
            format!("{}{}", cert.pem(), std::fs::read_to_string(&files.ca)?),
        )?;
        std::fs::write(&sans_path, &wanted)?;
        tracing::info!(ca = %files.ca.display(), bases = %bases.join(", "), "issued TLS certificate for localhost and the vault and hub domains");
    }
    Ok(files)
}

fn ca_params(days: i64) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "Herald local CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, days);
    Ok(params)
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    use chrono::Datelike;
    let at = |d: chrono::DateTime<chrono::Utc>| {
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    };
    let now = chrono::Utc::now();
    params.not_before = at(now - chrono::Duration::days(1));
    params.not_after = at(now + chrono::Duration::days(days));
}

pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let mut cfg = Arc::unwrap_or_clone(bare_server_config(cert, key)?);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The same certificate without ALPN, for listeners other than HTTPS (AMQP).
pub fn bare_server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert)
            .with_context(|| format!("opening TLS certificate {}", cert.display()))?,
    ))
    .collect::<Result<_, _>>()?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("opening TLS key {}", key.display()))?,
    ))?
    .context("no private key found in the TLS key file")?;
    let cfg =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    Ok(Arc::new(cfg))
}
