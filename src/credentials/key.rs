//! The instance key: 32 random bytes kept in `secrets.key_file`, used for keyed
//! app-password lookups and web cookies. Every node of a cluster shares it.

use std::io::Write;
use std::path::Path;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::secret::Secret;

/// The key, and HMAC-SHA256 already keyed with it: the two key blocks (inner and
/// outer pad) are hashed once, not on every login (two of the five SHA-256
/// blocks of a lookup). The keyed state is as secret as the key.
#[derive(Clone)]
pub struct InstanceKey {
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for InstanceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstanceKey(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or write the key file {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("the key file {0} does not hold 64 hex digits")]
    Malformed(String),
}

impl InstanceKey {
    /// Reads the key file, or creates it (mode 0600) with a fresh key if missing.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let io = |error| KeyError::Io {
            path: path.display().to_string(),
            error,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim())
                    .ok()
                    .filter(|b| b.len() == 32)
                    .ok_or_else(|| KeyError::Malformed(path.display().to_string()))?;
                Ok(Self::keyed(Secret::new(bytes)))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(io)?;
                }
                let mut bytes = vec![0u8; 32];
                rand::rng().fill_bytes(&mut bytes);
                // Written whole to a file of our own, then linked into place:
                // the link fails if another process got there first, and no
                // process ever reads a key file that is still being written.
                let tmp =
                    path.with_extension(format!("tmp-{}", hex::encode(rand::random::<[u8; 8]>())));
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let written = options.open(&tmp).and_then(|mut file| {
                    file.write_all(hex::encode(&bytes).as_bytes())?;
                    file.sync_all()
                });
                let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => Ok(Self::keyed(Secret::new(bytes))),
                    // Another process created it first: use theirs.
                    Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                        Self::load_or_create(path)
                    }
                    Err(err) => Err(io(err)),
                }
            }
            Err(err) => Err(io(err)),
        }
    }

    /// A key for tests and the demo.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self::keyed(Secret::new(bytes.to_vec()))
    }

    fn keyed(key: Secret<Vec<u8>>) -> Self {
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(key.expose())
            .expect("HMAC accepts keys of any length");
        Self { keyed }
    }

    /// HMAC-SHA256 over the parts, separated so that ("ab","c") != ("a","bc").
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_starting_at_once_all_read_one_whole_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let keys: Vec<_> = (0..16)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || InstanceKey::load_or_create(&path))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap().expect("every start reads a whole key"))
            .collect();
        let first = keys[0].mac(&[b"x"]);
        assert!(keys.iter().all(|k| k.mac(&[b"x"]) == first));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn created_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/postern.key");
        let a = InstanceKey::load_or_create(&path).unwrap();
        let b = InstanceKey::load_or_create(&path).unwrap();
        assert_eq!(a.mac(&[b"x"]), b.mac(&[b"x"]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_damaged_key_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "not hex").unwrap();
        assert!(matches!(
            InstanceKey::load_or_create(&path),
            Err(KeyError::Malformed(_))
        ));
    }

    /// Stored lookups were made with this HMAC: it must not change, or every
    /// existing app password stops logging in (value from Python's `hmac`).
    #[test]
    fn mac_is_hmac_sha256_over_length_prefixed_parts() {
        let k = InstanceKey::from_bytes([7; 32]);
        assert_eq!(
            hex::encode(k.mac(&[b"alice@example.test", b"abcd-efgh"])),
            "c0cfc666ab69e51aa32cd706f34afce2005dcd1d8af8a873a96c233a7dd2b048"
        );
        // The keyed state is copied per call, never consumed.
        assert_eq!(k.mac(&[b"x"]), k.clone().mac(&[b"x"]));
    }

    #[test]
    fn parts_are_length_separated() {
        let k = InstanceKey::from_bytes([7; 32]);
        assert_ne!(k.mac(&[b"ab", b"c"]), k.mac(&[b"a", b"bc"]));
    }
}
