//! A peer's identity: a long-lived X25519 key pair, proved on every connection to the
//! server (the Noise `XNpsk0` handshake in [`crate::secure`] carries the public key and
//! proves the private one), and the fingerprint people see.
//!
//! The key pair is created on first use and kept in a small text file, mode 0600, in
//! the user's config directory (`$XDG_CONFIG_HOME/punchline/identity`, else
//! `$HOME/.config/punchline/identity`). A file that exists but cannot be read or
//! parsed is an error, never silently replaced: replacing it would hand the peer's
//! claims on the server (ports, domains, service names) to nobody.

use std::{
    fmt,
    fs::{self, OpenOptions},
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

/// The file name of the identity inside the config directory.
pub const IDENTITY_FILE: &str = "identity";

/// The public half of an identity: what the server records as the owner of a claim.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The key from bytes, if there are exactly 32.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(PublicKey(b.try_into().ok()?))
    }

    /// The fingerprint shown to people.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

/// A short, printable digest of a public key: `pl1` and 32 hex digits (128 bits of
/// SHA-256), grouped by 4 for reading aloud. Safe to show anyone: it names a peer but
/// lets nobody act as it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    /// The fingerprint of `key`.
    pub fn of(key: &PublicKey) -> Self {
        let mut h = Sha256::new();
        h.update(b"punchline identity v1\0");
        h.update(key.0);
        let d = h.finalize();
        let mut f = [0u8; 16];
        f.copy_from_slice(&d[..16]);
        Fingerprint(f)
    }

    /// The first 8 hex digits, for log lines.
    pub fn short(&self) -> String {
        format!(
            "pl1:{:02x}{:02x}{:02x}{:02x}",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("pl1")?;
        for chunk in self.0.chunks(2) {
            write!(f, ":{:02x}{:02x}", chunk[0], chunk[1])?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A key pair. The private half prints as MASKED.
#[derive(Clone)]
pub struct Identity {
    private: [u8; 32],
    public: PublicKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public)
            .field("private", &"MASKED")
            .finish()
    }
}

/// Why an identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No config directory is known (neither `XDG_CONFIG_HOME` nor `HOME` is set).
    #[error(
        "no place for the identity file: set HOME or XDG_CONFIG_HOME, or give --identity FILE"
    )]
    NoConfigDir,
    /// The file exists but cannot be read.
    #[error("cannot read the identity file {path}: {err} (fix its permissions or give another with --identity; it is not replaced, since the server knows this peer by it)")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        err: io::Error,
    },
    /// The file exists but is not an identity.
    #[error("the identity file {path} is corrupt: {why} (restore it from a backup, or move it away to make a new identity; claims held by the old one stay its own)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The file could not be created.
    #[error("cannot create the identity file {path}: {err}")]
    Create {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        err: io::Error,
    },
}

impl Identity {
    /// A new random key pair.
    pub fn generate() -> Self {
        Self::from_private(rand::random())
    }

    /// The key pair of a private key.
    pub fn from_private(private: [u8; 32]) -> Self {
        let secret = x25519_dalek::StaticSecret::from(private);
        let public = x25519_dalek::PublicKey::from(&secret);
        Identity {
            private: secret.to_bytes(),
            public: PublicKey(public.to_bytes()),
        }
    }

    /// The private key, for the Noise handshake.
    pub fn private(&self) -> &[u8; 32] {
        &self.private
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The public key's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.public.fingerprint()
    }

    /// Where the identity lives by default: `$XDG_CONFIG_HOME/punchline/identity`,
    /// else `$HOME/.config/punchline/identity`.
    pub fn default_path() -> Result<PathBuf, IdentityError> {
        let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let base = match non_empty("XDG_CONFIG_HOME") {
            Some(x) => PathBuf::from(x),
            None => {
                PathBuf::from(non_empty("HOME").ok_or(IdentityError::NoConfigDir)?).join(".config")
            }
        };
        Ok(base.join("punchline").join(IDENTITY_FILE))
    }

    /// Loads the identity at `path`, creating it (and its directory, mode 0700) if
    /// the file does not exist. Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), IdentityError> {
        match fs::read(path) {
            Ok(bytes) => Ok((Self::parse(path, &bytes)?, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let id = Self::generate();
                id.create(path)?;
                Ok((id, true))
            }
            Err(err) => Err(IdentityError::Read {
                path: path.to_owned(),
                err,
            }),
        }
    }

    /// Loads the identity at `path`; a missing file is an error.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let bytes = fs::read(path).map_err(|err| IdentityError::Read {
            path: path.to_owned(),
            err,
        })?;
        Self::parse(path, &bytes)
    }

    fn parse(path: &Path, bytes: &[u8]) -> Result<Self, IdentityError> {
        let corrupt = |why: &str| IdentityError::Corrupt {
            path: path.to_owned(),
            why: why.to_string(),
        };
        let text = std::str::from_utf8(bytes).map_err(|_| corrupt("not text"))?;
        let mut private = None;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(corrupt("a line is not `key = value`"));
            };
            match key.trim() {
                "private-key" if private.is_none() => {
                    private = Some(
                        parse_hex32(value.trim())
                            .ok_or_else(|| corrupt("private-key is not 64 hexadecimal digits"))?,
                    )
                }
                "private-key" => return Err(corrupt("private-key given twice")),
                // Written for people; recomputed from the private key.
                "public-key" | "fingerprint" => {}
                other => return Err(corrupt(&format!("unknown key {other:?}"))),
            }
        }
        let private = private.ok_or_else(|| corrupt("no private-key line"))?;
        let id = Self::from_private(private);
        // A public key in the file must belong to the private one.
        for line in text.lines().map(str::trim) {
            if let Some(("public-key", v)) = line.split_once('=').map(|(k, v)| (k.trim(), v.trim()))
            {
                if parse_hex32(v) != Some(id.public.0) {
                    return Err(corrupt("public-key does not match private-key"));
                }
            }
        }
        Ok(id)
    }

    fn create(&self, path: &Path) -> Result<(), IdentityError> {
        let err = |err| IdentityError::Create {
            path: path.to_owned(),
            err,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                fs::create_dir_all(dir).map_err(err)?;
                let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
            }
        }
        // create_new: never overwrite a file that appeared meanwhile.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        let text = format!(
            "# punchline peer identity: keep this file secret. The rendezvous server knows\n\
             # this peer, and what it claims, by this key.\n\
             fingerprint = {}\n\
             public-key = {}\n\
             private-key = {}\n",
            self.fingerprint(),
            hex(&self.public.0),
            hex(&self.private),
        );
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "punchline-id-{}-{name}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        d.join("sub").join(IDENTITY_FILE)
    }

    #[test]
    fn created_once_with_mode_0600_then_loaded() {
        let p = tmp("create");
        let (a, created) = Identity::load_or_create(&p).expect("create");
        assert!(created);
        let mode = fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, created) = Identity::load_or_create(&p).expect("load");
        assert!(!created);
        assert_eq!(a.public(), b.public());
        assert_eq!(a.private(), b.private());
        let _ = fs::remove_dir_all(p.parent().and_then(Path::parent).expect("dir"));
    }

    #[test]
    fn corrupt_files_are_errors_and_left_alone() {
        let p = tmp("corrupt");
        fs::create_dir_all(p.parent().expect("dir")).expect("mkdir");
        for bad in [
            &b"private-key = 1234"[..],
            b"\xff\xfe",
            b"# nothing\n",
            b"colour = blue\n",
        ] {
            fs::write(&p, bad).expect("write");
            let e = Identity::load_or_create(&p).expect_err("corrupt");
            assert!(matches!(e, IdentityError::Corrupt { .. }), "{e}");
            assert!(e.to_string().contains("corrupt"), "{e}");
            assert_eq!(fs::read(&p).expect("read"), bad, "file was changed");
        }
        // A public key that does not belong to the private one.
        let id = Identity::generate();
        let other = Identity::generate();
        fs::write(
            &p,
            format!(
                "public-key = {}\nprivate-key = {}\n",
                hex(&other.public.0),
                hex(id.private())
            ),
        )
        .expect("write");
        assert!(Identity::load(&p).is_err());
        let _ = fs::remove_dir_all(p.parent().and_then(Path::parent).expect("dir"));
    }

    #[test]
    fn fingerprints_print_and_differ() {
        let a = Identity::generate();
        let b = Identity::generate();
        assert_ne!(a.fingerprint(), b.fingerprint());
        let s = a.fingerprint().to_string();
        assert!(s.starts_with("pl1:") && s.len() == 3 + 8 * 5, "{s}");
        assert!(!format!("{a:?}").contains(&hex(a.private())));
        assert_eq!(
            Identity::from_private(*a.private()).public(),
            a.public(),
            "public key derives from the private one"
        );
    }
}
