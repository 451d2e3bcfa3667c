//! TLS with rustls: ALPN `h2` and `http/1.1`, and a certificate that is
//! reloaded from disk when its files change or on SIGHUP, without touching
//! open connections (each handshake asks the resolver for the current one).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub use tokio_rustls::TlsAcceptor;

/// How often the certificate files' modification times are checked.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Serves the current certificate to every handshake.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ReloadingCert {
    /// Loads the certificate chain and key, refusing to start on an error.
    pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<Self>> {
        let key = load_certified_key(cert_path, key_path)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: ArcSwap::from_pointee(key),
        }))
    }

    /// Reads the files again; on an error keeps serving the old certificate.
    pub fn reload(&self) -> bool {
        match load_certified_key(&self.cert_path, &self.key_path) {
            Ok(key) => {
                self.current.store(Arc::new(key));
                tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"),
                                "TLS certificate reload failed; keeping the previous one");
                false
            }
        }
    }

    fn modified(&self) -> Option<(SystemTime, SystemTime)> {
        let cert = std::fs::metadata(&self.cert_path).and_then(|m| m.modified()).ok()?;
        let key = std::fs::metadata(&self.key_path).and_then(|m| m.modified()).ok()?;
        Some((cert, key))
    }

    /// Reloads on SIGHUP and whenever either file's modification time
    /// changes, for as long as the returned task runs.
    pub async fn watch(self: Arc<Self>) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler; reloading on file changes only");
                None
            }
        };
        let mut last = self.modified();
        let mut tick = tokio::time::interval(RELOAD_CHECK_INTERVAL);
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = hup => {
                    self.reload();
                    last = self.modified();
                }
                _ = tick.tick() => {
                    let now = self.modified();
                    if now.is_some() && now != last {
                        self.reload();
                        last = now;
                    }
                }
            }
        }
    }
}

fn load_certified_key(cert_path: &Path, key_path: &Path) -> anyhow::Result<CertifiedKey> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("TLS_CERT_PATH: cannot read {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!("TLS_CERT_PATH: {} is not a PEM certificate chain", cert_path.display())
        })?;
    if certs.is_empty() {
        anyhow::bail!("TLS_CERT_PATH: {} holds no certificate", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_path).with_context(|| {
        format!("TLS_KEY_PATH: {} holds no PEM private key", key_path.display())
    })?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .context("TLS_KEY_PATH: unsupported private key type")?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().context("TLS_CERT_PATH and TLS_KEY_PATH do not belong together")?;
    Ok(certified)
}

/// A TLS acceptor offering h2 and http/1.1, with the certificate from
/// `resolver`.
pub fn acceptor(resolver: Arc<ReloadingCert>) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
