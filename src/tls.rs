//! HTTPS and WSS for the phonebook, with rustls.
//!
//! Browsers give a page its camera and microphone only in a secure context, which off
//! `localhost` means HTTPS: a browser callee or two-way audio on a LAN needs it. So a
//! phonebook that listens beyond loopback serves HTTPS by default, with the certificate
//! and key from the config, or else a self-signed certificate made on first start and
//! kept (its SHA-256 fingerprint is printed, so people can check what their browser shows).
//!
//! The device trusts the public CAs for a remote phonebook, or exactly one pinned
//! certificate (`device.phonebook_cert`): that is how it reaches a self-signed phonebook,
//! and how it reaches its own embedded one.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::Deserialize;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info};

/// When the phonebook speaks HTTPS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// HTTPS unless the phonebook listens on loopback only.
    #[default]
    Auto,
    /// Always HTTPS.
    On,
    /// Never (behind a reverse proxy that does TLS, say).
    Off,
}

/// `[tls]`: the phonebook's certificate.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// When to serve HTTPS.
    pub mode: TlsMode,
    /// Certificate chain (PEM); with `key`. Unset: a self-signed one is made and kept.
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of `cert`.
    pub key: Option<PathBuf>,
    /// Where the self-signed certificate is kept (default: `$STATE_DIRECTORY`, else
    /// `$XDG_STATE_HOME/peercam`, else `~/.local/state/peercam`).
    pub dir: Option<PathBuf>,
}

/// A phonebook's TLS set-up, ready to serve.
#[derive(Clone)]
pub struct ServerTls {
    /// Accepts TLS on a TCP stream.
    pub acceptor: TlsAcceptor,
    /// The certificate served (first of the chain), for a device that pins it.
    pub certificate: CertificateDer<'static>,
    /// SHA-256 of that certificate, as browsers show it (`AB:CD:…`).
    pub fingerprint: String,
    /// Whether the certificate was made here rather than configured.
    pub self_signed: bool,
    /// Where the certificate is, for people who want to pin or install it.
    pub cert_path: PathBuf,
}

/// Why TLS could not be set up; each names the file or setting.
#[derive(Debug, Error)]
pub enum TlsError {
    /// Only one of `tls.cert` and `tls.key` is set.
    #[error("tls.cert and tls.key go together: set both, or neither for a self-signed certificate")]
    HalfConfigured,
    /// rustls has no protocol version the ring provider supports (a build problem).
    #[error("no TLS versions: {0}")]
    NoVersions(rustls::Error),
    /// The key is not the certificate's.
    #[error("the TLS certificate and key do not go together: {0}")]
    Mismatch(rustls::Error),
    /// The certificate file could not be read.
    #[error("cannot read the certificate {}: {error}", path.display())]
    ReadCertificate {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        error: rustls::pki_types::pem::Error,
    },
    /// The certificate file is not PEM.
    #[error("{} is not a PEM certificate: {error}", path.display())]
    NotPem {
        /// The file.
        path: PathBuf,
        /// What parsing it said.
        error: rustls::pki_types::pem::Error,
    },
    /// A PEM file without a certificate in it.
    #[error("{} holds no certificate", .0.display())]
    NoCertificate(PathBuf),
    /// The key file could not be read or holds no private key.
    #[error("cannot read a PEM private key from {}: {error}", path.display())]
    ReadKey {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        error: rustls::pki_types::pem::Error,
    },
    /// The directory for the self-signed certificate could not be made.
    #[error("cannot create {} for the certificate: {error}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// What mkdir said.
        error: std::io::Error,
    },
    /// rcgen could not make the certificate.
    #[error("cannot make a self-signed certificate: {0}")]
    SelfSign(rcgen::Error),
    /// The certificate or key could not be written.
    #[error("cannot write {}: {error}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What writing said.
        error: std::io::Error,
    },
}

impl TlsSettings {
    /// Whether a phonebook listening on `listen` serves HTTPS.
    pub fn enabled_for(&self, listen: SocketAddr) -> bool {
        match self.mode {
            TlsMode::On => true,
            TlsMode::Off => false,
            TlsMode::Auto => !listen.ip().is_loopback(),
        }
    }

    /// The TLS set-up for a phonebook on `listen`, or `None` when it serves plain HTTP.
    pub fn server(&self, listen: SocketAddr) -> Result<Option<ServerTls>, TlsError> {
        if !self.enabled_for(listen) {
            return Ok(None);
        }
        let (chain, key, self_signed, cert_path) = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => (read_chain(cert)?, read_key(key)?, false, cert.clone()),
            (None, None) => {
                let dir = self.dir.clone().unwrap_or_else(default_dir);
                let (chain, key, path) = self_signed_in(&dir, listen)?;
                (chain, key, true, path)
            }
            _ => return Err(TlsError::HalfConfigured),
        };
        let certificate = chain[0].clone();
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::NoVersions)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(TlsError::Mismatch)?;
        let mut config = config;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            fingerprint: fingerprint(&certificate),
            certificate,
            self_signed,
            cert_path,
        }))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|error| TlsError::ReadCertificate {
            path: path.to_owned(),
            error,
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::NotPem {
            path: path.to_owned(),
            error,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| TlsError::ReadKey {
        path: path.to_owned(),
        error,
    })
}

/// Where state is kept when the config does not say.
fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may list several, separated by ':'.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_owned();
        if !first.is_empty() {
            return PathBuf::from(first);
        }
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("peercam");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/state/peercam"),
        None => PathBuf::from("/var/lib/peercam"),
    }
}

/// The kept self-signed certificate in `dir`, made now if there is none.
fn self_signed_in(
    dir: &Path,
    listen: SocketAddr,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        PathBuf,
    ),
    TlsError,
> {
    let cert_path = dir.join("phonebook-cert.pem");
    let key_path = dir.join("phonebook-key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((read_chain(&cert_path)?, read_key(&key_path)?, cert_path));
    }
    std::fs::create_dir_all(dir).map_err(|error| TlsError::CreateDir {
        dir: dir.to_owned(),
        error,
    })?;
    let names = certificate_names(listen);
    let made = rcgen::generate_simple_self_signed(names.clone()).map_err(TlsError::SelfSign)?;
    write_private(&key_path, made.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, made.cert.pem()).map_err(|error| TlsError::Write {
        path: cert_path.clone(),
        error,
    })?;
    info!(path = %cert_path.display(), names = ?names, "made a self-signed certificate for the phonebook");
    Ok((read_chain(&cert_path)?, read_key(&key_path)?, cert_path))
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(contents))
        .map_err(|error| TlsError::Write {
            path: path.to_owned(),
            error,
        })
}

/// The names and addresses a browser may use to reach this machine.
fn certificate_names(listen: SocketAddr) -> Vec<String> {
    let host = crate::host::host_name();
    let mut names = vec![
        host.clone(),
        format!("{host}.local"),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let mut addresses: Vec<IpAddr> = Vec::new();
    if listen.ip().is_unspecified() {
        if let Ok(interfaces) = nix::ifaddrs::getifaddrs() {
            for interface in interfaces {
                let Some(address) = interface.address else {
                    continue;
                };
                if let Some(v4) = address.as_sockaddr_in() {
                    addresses.push(IpAddr::V4(v4.ip()));
                } else if let Some(v6) = address.as_sockaddr_in6() {
                    // Link-local addresses need a zone, which certificates cannot hold.
                    if v6.ip().segments()[0] & 0xffc0 != 0xfe80 {
                        addresses.push(IpAddr::V6(v6.ip()));
                    }
                }
            }
        }
    } else {
        addresses.push(listen.ip());
    }
    for address in addresses {
        let text = address.to_string();
        if !names.contains(&text) {
            names.push(text);
        }
    }
    names
}

/// The SHA-256 fingerprint of `cert`, as browsers show it.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// How many TLS handshakes may be in progress at once.
const MAX_HANDSHAKES: usize = 64;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP listener that hands out streams after their TLS handshake, for `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener`, shaking hands with `acceptor` off the accept loop so a slow
    /// client holds up nobody.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = tx.closed() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(pair) => {
                        // Signalling is small messages: Nagle would hold one back until
                        // the peer's delayed ACK (~40 ms).
                        let _ = pair.0.set_nodelay(true);
                        pair
                    }
                    Err(err) => {
                        // Out of file descriptors, say: pause rather than spin.
                        debug!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(err)) => debug!(%peer, %err, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(pair) => pair,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The TLS set-up of a client (the device) reaching a phonebook: the public CAs, or
/// exactly the certificate `pinned` when given.
pub fn client_config(
    pinned: Option<CertificateDer<'static>>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::NoVersions)?;
    let config = match pinned {
        Some(certificate) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                certificate,
                provider: provider(),
            }))
            .with_no_client_auth(),
        None => {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

/// Reads the certificate a device pins (the first of a PEM file).
pub fn read_pinned(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    Ok(read_chain(path)?.remove(0))
}

/// Trusts one certificate, by its exact bytes, under any name: a self-signed phonebook
/// has no CA to check it against and may be reached by any of its addresses.
#[derive(Debug)]
struct Pinned {
    certificate: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.certificate.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the phonebook's certificate ({}) is not the pinned one ({})",
                fingerprint(end_entity),
                fingerprint(&self.certificate)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_plain_on_loopback_only() {
        let auto = TlsSettings::default();
        assert!(!auto.enabled_for("127.0.0.1:8080".parse().unwrap()));
        assert!(!auto.enabled_for("[::1]:8080".parse().unwrap()));
        assert!(auto.enabled_for("0.0.0.0:8080".parse().unwrap()));
        assert!(auto.enabled_for("192.168.1.2:8080".parse().unwrap()));
        let off = TlsSettings {
            mode: TlsMode::Off,
            ..Default::default()
        };
        assert!(!off.enabled_for("0.0.0.0:8080".parse().unwrap()));
    }

    #[test]
    fn a_self_signed_certificate_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let settings = TlsSettings {
            mode: TlsMode::On,
            dir: Some(dir.path().to_owned()),
            ..Default::default()
        };
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let first = settings.server(listen).unwrap().unwrap();
        let second = settings.server(listen).unwrap().unwrap();
        assert!(first.self_signed);
        assert_eq!(first.fingerprint, second.fingerprint);
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        let key = dir.path().join("phonebook-key.pem");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn half_a_configuration_is_refused() {
        let settings = TlsSettings {
            mode: TlsMode::On,
            cert: Some("/nonexistent.pem".into()),
            ..Default::default()
        };
        let err = settings
            .server("127.0.0.1:0".parse().unwrap())
            .err()
            .unwrap();
        assert!(matches!(err, TlsError::HalfConfigured), "{err}");
        assert!(err.to_string().contains("go together"), "{err}");
    }

    #[test]
    fn unreadable_files_are_named() {
        let settings = TlsSettings {
            mode: TlsMode::On,
            cert: Some("/nonexistent-peercam.pem".into()),
            key: Some("/nonexistent-peercam-key.pem".into()),
            ..Default::default()
        };
        let err = settings
            .server("127.0.0.1:0".parse().unwrap())
            .err()
            .unwrap();
        assert!(matches!(err, TlsError::ReadCertificate { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("cannot read the certificate /nonexistent-peercam.pem: "),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no PEM here\n").unwrap();
        let err = read_pinned(&empty).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate(_)), "{err}");
        assert_eq!(
            err.to_string(),
            format!("{} holds no certificate", empty.display())
        );
    }
}
