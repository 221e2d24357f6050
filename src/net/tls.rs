//! TLS on both sides: the certificate postern presents (loaded from PEM, or a
//! self-signed pair generated at first start) and the verifying connector for
//! upstream servers. rustls on the `ring` provider only.
//!
//! Each mail protocol's acceptor announces that protocol's ALPN id (RFC 7301):
//! a client offering ALPN without a match is refused with the
//! `no_application_protocol` alert (RFC 7301 §3.2), so a TLS connection meant
//! for another service (HTTP/2, say) cannot be pointed at a mail port. Clients
//! offering no ALPN at all, as most mail clients do, are unaffected.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::policy::Protocol;

/// The ALPN id a mail port accepts. `imap` and `pop3` are registered with IANA
/// (reference RFC 2595); submission has no registered id, so `smtp` is used.
pub fn alpn_id(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Imap => b"imap",
        Protocol::Pop3 => b"pop3",
        Protocol::Smtp => b"smtp",
    }
}

/// One server configuration per protocol (they differ only in ALPN).
type PerProtocol = [Arc<rustls::ServerConfig>; 3];

fn index(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Imap => 0,
        Protocol::Pop3 => 1,
        Protocol::Smtp => 2,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Pem { path: String, message: String },
    #[error("cannot write {path}: {error}")]
    Write { path: String, error: std::io::Error },
    #[error("TLS configuration: {0}")]
    Rustls(rustls::Error),
    #[error("certificate generation: {0}")]
    Generate(rcgen::Error),
    #[error("{0} names no certificate")]
    Empty(String),
    #[error("invalid upstream TLS name {0:?}")]
    ServerName(String),
}

// Causes are kept as data, not as `source`: their text is already in the
// message, and a printed chain would repeat it.
impl From<rustls::Error> for TlsError {
    fn from(err: rustls::Error) -> Self {
        Self::Rustls(err)
    }
}

impl From<rcgen::Error> for TlsError {
    fn from(err: rcgen::Error) -> Self {
        Self::Generate(err)
    }
}

/// Installs the `ring` provider as the process default (once; later calls no-op).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Generates a self-signed pair for `localhost`/127.0.0.1/::1 if neither file
/// exists. Returns whether it did (the caller warns).
///
/// Several processes may start at once on the same paths (nodes sharing a
/// folder): each file is written under a temporary name, then linked into
/// place, which fails when the name exists. The process that links the key
/// first writes the pair; the others wait for its certificate and use it, so
/// no process fails and no pair is ever mixed from two.
pub fn ensure_certificate(cert: &Path, key: &Path) -> Result<bool, TlsError> {
    if cert.exists() || key.exists() {
        return Ok(false);
    }
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let generated = rcgen::generate_simple_self_signed(names)?;
    let key_tmp = write_temporary(key, &generated.signing_key.serialize_pem(), true)?;
    let cert_tmp = match write_temporary(cert, &generated.cert.pem(), false) {
        Ok(path) => path,
        Err(err) => {
            let _ = std::fs::remove_file(&key_tmp);
            return Err(err);
        }
    };
    let remove_temporaries = || {
        let _ = std::fs::remove_file(&key_tmp);
        let _ = std::fs::remove_file(&cert_tmp);
    };
    match std::fs::hard_link(&key_tmp, key) {
        Ok(()) => {
            let linked = std::fs::hard_link(&cert_tmp, cert);
            remove_temporaries();
            linked.map_err(|error| TlsError::Write {
                path: cert.display().to_string(),
                error,
            })?;
            Ok(true)
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            // Another process claimed the key first: use its pair.
            remove_temporaries();
            wait_for_certificate(cert)?;
            Ok(false)
        }
        Err(error) => {
            remove_temporaries();
            Err(TlsError::Write {
                path: key.display().to_string(),
                error,
            })
        }
    }
}

/// How long a process that lost the race waits for the winner's certificate.
const CERTIFICATE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits (bounded) until another process has linked its certificate into place.
fn wait_for_certificate(cert: &Path) -> Result<(), TlsError> {
    let deadline = std::time::Instant::now() + CERTIFICATE_WAIT;
    while !cert.exists() {
        if std::time::Instant::now() > deadline {
            return Err(TlsError::Write {
                path: cert.display().to_string(),
                error: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "another process generated the key but no certificate appeared",
                ),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// Writes `text` to a new file next to `path` and returns its name.
fn write_temporary(path: &Path, text: &str, private: bool) -> Result<std::path::PathBuf, TlsError> {
    let write = |error| TlsError::Write {
        path: path.display().to_string(),
        error,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(write)?;
    }
    let mut name = path.as_os_str().to_owned();
    name.push(format!(
        ".tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let temporary = std::path::PathBuf::from(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    use std::io::Write;
    options
        .open(&temporary)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(write)?;
    Ok(temporary)
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |e: rustls::pki_types::pem::Error| TlsError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if chain.is_empty() {
        return Err(TlsError::Empty(path.display().to_string()));
    }
    Ok(chain)
}

fn server_configs(cert: &Path, key: &Path) -> Result<PerProtocol, TlsError> {
    let chain = load_chain(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Protocol::ALL.map(|protocol| {
        let mut config = config.clone();
        config.alpn_protocols = vec![alpn_id(protocol).to_vec()];
        Arc::new(config)
    }))
}

/// The server side, reloadable in place (SIGHUP) without touching live sessions:
/// each handshake takes the configuration current at that moment.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<RwLock<PerProtocol>>,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl ServerTls {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            config: Arc::new(RwLock::new(server_configs(cert, key)?)),
            cert: cert.to_owned(),
            key: key.to_owned(),
        })
    }

    /// Re-reads the certificate and key; on error the old pair stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = server_configs(&self.cert, &self.key)?;
        if let Ok(mut current) = self.config.write() {
            *current = fresh;
        }
        Ok(())
    }

    /// The acceptor for `protocol`'s ports (its ALPN id).
    pub fn acceptor(&self, protocol: Protocol) -> TlsAcceptor {
        let config = match self.config.read() {
            Ok(configs) => configs[index(protocol)].clone(),
            Err(poisoned) => poisoned.into_inner()[index(protocol)].clone(),
        };
        TlsAcceptor::from(config)
    }
}

/// Verifying connector for upstream TLS: the CA file if given, else system roots.
pub fn upstream_connector(ca_file: &str) -> Result<TlsConnector, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    if ca_file.is_empty() {
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
    } else {
        for cert in load_chain(Path::new(ca_file))? {
            roots.add(cert)?;
        }
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The name to verify an upstream certificate against.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_loads_and_is_not_overwritten() {
        install_provider();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c/p.crt"), dir.path().join("c/p.key"));
        assert!(ensure_certificate(&cert, &key).unwrap());
        let before = std::fs::read(&cert).unwrap();
        assert!(!ensure_certificate(&cert, &key).unwrap());
        assert_eq!(std::fs::read(&cert).unwrap(), before);
        let tls = ServerTls::load(&cert, &key).unwrap();
        tls.reload().unwrap();
        assert!(upstream_connector(cert.to_str().unwrap()).is_ok());
    }

    #[test]
    fn processes_starting_at_once_share_one_generated_pair() {
        install_provider();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("p.crt"), dir.path().join("p.key"));
        let barrier = std::sync::Barrier::new(8);
        let generated: Vec<bool> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        ensure_certificate(&cert, &key).unwrap()
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        // Exactly one writes the pair; the others use it (none fails).
        assert_eq!(generated.iter().filter(|g| **g).count(), 1, "{generated:?}");
        // rustls refuses a key that does not match the certificate.
        ServerTls::load(&cert, &key).unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    }

    #[test]
    fn a_missing_key_is_a_clear_error() {
        install_provider();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("p.crt"), dir.path().join("p.key"));
        ensure_certificate(&cert, &key).unwrap();
        std::fs::remove_file(&key).unwrap();
        let err = ServerTls::load(&cert, &key).err().unwrap().to_string();
        assert!(err.contains("p.key"), "{err}");
    }
}
