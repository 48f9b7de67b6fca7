//! Authentication: a shared key from a file, and a mutual HMAC-SHA256
//! challenge over fresh nonces.
//!
//! ```text
//! client -> Hello     { nonce: Nc }
//! server -> Challenge { nonce: Ns, proof: HMAC(key, "ckptfs-dr/1 server proof\0" | Nc | Ns) }
//! client -> Proof     { proof: HMAC(key, "ckptfs-dr/1 client proof\0" | Nc | Ns) }
//! server -> Welcome   { server: "ckptfs 0.1.0" }
//! ```
//!
//! Each side proves it knows the key over a nonce the other side just drew,
//! so a recorded exchange is worthless; the labels differ, so a server's
//! proof can never be replayed as a client's (or reflected back). Proofs
//! are compared in constant time. A side whose check fails sends an `Error`
//! of kind `auth` before closing, so both ends report "authentication
//! failed" rather than one of them seeing a bare disconnect.
//!
//! This authenticates the peers; it does not encrypt or sign the traffic
//! that follows (chunk hashes and crc32c catch damage, not a man in the
//! middle): run it on a trusted network or through a tunnel.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::error::DrError;
use super::frame::{read_message, write_message, Message};
use super::proto::{
    self, Challenge, ErrorKind, ErrorReply, Hello, Hex32, MsgType, Proof, Welcome, MAX_AUTH_MESSAGE,
};

/// A key file larger than this is not a key (a wrong path, most likely).
pub const MAX_KEY_FILE: u64 = 64 << 10;
/// Shorter keys work but are warned about.
const SHORT_KEY: usize = 16;

const CLIENT_LABEL: &[u8] = b"ckptfs-dr/1 client proof\0";
const SERVER_LABEL: &[u8] = b"ckptfs-dr/1 server proof\0";

/// Why a key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "key file {} is readable by group or others (mode {mode:04o}); \
         make it private with `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("key file {} is empty", path.display())]
    Empty { path: PathBuf },
    #[error("key file {} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("key file {} is over {MAX_KEY_FILE} bytes: not a key", path.display())]
    TooLarge { path: PathBuf },
}

/// The shared secret. Never printed.
#[derive(Clone)]
pub struct Key {
    bytes: Vec<u8>,
    path: PathBuf,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("path", &self.path)
            .field("bytes", &"<secret>")
            .finish()
    }
}

impl Key {
    /// Load the key from `path`: a private (`mode & 0o077 == 0`), non-empty
    /// regular file. Leading and trailing whitespace is not part of the key,
    /// so `openssl rand -hex 32 > key` and an editor's final newline agree.
    pub fn load(path: &Path) -> Result<Key, KeyError> {
        let read = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(read)?;
        // The mode of the file actually opened, not of whatever the path
        // names a moment later.
        let md = file.metadata().map_err(read)?;
        if !md.is_file() {
            return Err(KeyError::NotAFile {
                path: path.to_owned(),
            });
        }
        let mode = md.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
        let mut bytes = Vec::new();
        file.take(MAX_KEY_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        if bytes.len() as u64 > MAX_KEY_FILE {
            return Err(KeyError::TooLarge {
                path: path.to_owned(),
            });
        }
        let key = bytes.trim_ascii().to_vec();
        if key.is_empty() {
            return Err(KeyError::Empty {
                path: path.to_owned(),
            });
        }
        if key.len() < SHORT_KEY {
            tracing::warn!(
                path = %path.display(),
                bytes = key.len(),
                "the DR key is short; use at least 32 random bytes (openssl rand -hex 32)"
            );
        }
        Ok(Key {
            bytes: key,
            path: path.to_owned(),
        })
    }

    /// Where the key came from, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn proof(&self, label: &[u8], client: &Hex32, server: &Hex32) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.bytes)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(label);
        mac.update(&client.0);
        mac.update(&server.0);
        mac
    }

    fn prove(&self, label: &[u8], client: &Hex32, server: &Hex32) -> Hex32 {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.proof(label, client, server).finalize().into_bytes());
        Hex32(out)
    }

    /// Constant-time check of a peer's proof.
    fn check(&self, label: &[u8], client: &Hex32, server: &Hex32, proof: &Hex32) -> bool {
        self.proof(label, client, server)
            .verify_slice(&proof.0)
            .is_ok()
    }
}

fn nonce() -> Result<Hex32, DrError> {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).map_err(|e| DrError::Protocol {
        peer: "local".into(),
        message: format!("no randomness for a nonce: {e}"),
    })?;
    Ok(Hex32(n))
}

fn send(w: &mut dyn Write, peer: &str, kind: MsgType, body: Vec<u8>) -> Result<(), DrError> {
    write_message(w, peer, kind, &body)?;
    w.flush().map_err(|source| {
        DrError::Frame(super::frame::FrameError::Io {
            peer: peer.into(),
            source,
        })
    })
}

/// Best effort: tell the peer why we are hanging up.
pub(crate) fn send_error(w: &mut dyn Write, peer: &str, kind: ErrorKind, message: &str) {
    let _ = send(
        w,
        peer,
        MsgType::Error,
        proto::encode(&ErrorReply::new(kind, message)),
    );
}

/// Turn an `Error` message into the error it reports.
pub(crate) fn remote_error(peer: &str, m: &Message) -> DrError {
    match proto::decode::<ErrorReply>(m.kind, &m.payload) {
        Ok(e) if e.kind == ErrorKind::Auth => DrError::AuthFailed {
            peer: peer.into(),
            detail: e.message,
        },
        Ok(e) => DrError::Remote {
            peer: peer.into(),
            kind: e.kind,
            message: e.message,
        },
        Err(message) => DrError::Protocol {
            peer: peer.into(),
            message,
        },
    }
}

fn expect(peer: &str, m: &Message, want: MsgType) -> Result<(), DrError> {
    if m.kind == want {
        Ok(())
    } else if m.kind == MsgType::Error {
        Err(remote_error(peer, m))
    } else {
        Err(DrError::Protocol {
            peer: peer.into(),
            message: format!("expected a {want} message, got {}", m.kind),
        })
    }
}

fn body<T: serde::de::DeserializeOwned>(peer: &str, m: &Message) -> Result<T, DrError> {
    proto::decode(m.kind, &m.payload).map_err(|message| DrError::Protocol {
        peer: peer.into(),
        message,
    })
}

/// The client's half: prove we hold `key` to the server at `peer`, and
/// check that it does too. Returns the server's software name.
pub fn client_handshake(
    r: &mut dyn Read,
    w: &mut dyn Write,
    peer: &str,
    key: &Key,
) -> Result<String, DrError> {
    let ours = nonce()?;
    send(
        w,
        peer,
        MsgType::Hello,
        proto::encode(&Hello { nonce: ours }),
    )?;
    let m = read_message(r, peer, MAX_AUTH_MESSAGE)?;
    expect(peer, &m, MsgType::Challenge)?;
    let ch: Challenge = body(peer, &m)?;
    if !key.check(SERVER_LABEL, &ours, &ch.nonce, &ch.proof) {
        send_error(
            w,
            peer,
            ErrorKind::Auth,
            "authentication failed: the server's proof does not match the client's key",
        );
        return Err(DrError::AuthFailed {
            peer: peer.into(),
            detail: format!(
                "the server's proof does not match the key in {} (different keys?)",
                key.path.display()
            ),
        });
    }
    let proof = key.prove(CLIENT_LABEL, &ours, &ch.nonce);
    send(w, peer, MsgType::Proof, proto::encode(&Proof { proof }))?;
    let m = read_message(r, peer, MAX_AUTH_MESSAGE)?;
    expect(peer, &m, MsgType::Welcome)?;
    let welcome: Welcome = body(peer, &m)?;
    Ok(welcome.server)
}

/// The server's half: check that the client at `peer` holds `key`, and
/// prove that we do too.
pub fn server_handshake(
    r: &mut dyn Read,
    w: &mut dyn Write,
    peer: &str,
    key: &Key,
) -> Result<(), DrError> {
    let m = read_message(r, peer, MAX_AUTH_MESSAGE)?;
    if m.kind != MsgType::Hello {
        let message = format!("expected hello, got {}: authenticate first", m.kind);
        send_error(w, peer, ErrorKind::Invalid, &message);
        return Err(DrError::Protocol {
            peer: peer.into(),
            message,
        });
    }
    let hello: Hello = body(peer, &m).inspect_err(|e| {
        send_error(w, peer, ErrorKind::Invalid, &e.to_string());
    })?;
    let ours = nonce()?;
    let proof = key.prove(SERVER_LABEL, &hello.nonce, &ours);
    send(
        w,
        peer,
        MsgType::Challenge,
        proto::encode(&Challenge { nonce: ours, proof }),
    )?;
    let m = read_message(r, peer, MAX_AUTH_MESSAGE)?;
    expect(peer, &m, MsgType::Proof)?;
    let theirs: Proof = body(peer, &m)?;
    if !key.check(CLIENT_LABEL, &hello.nonce, &ours, &theirs.proof) {
        send_error(
            w,
            peer,
            ErrorKind::Auth,
            "authentication failed: the client's proof does not match the server's key",
        );
        return Err(DrError::AuthFailed {
            peer: peer.into(),
            detail: format!(
                "the client's proof does not match the key in {} (different keys?)",
                key.path.display()
            ),
        });
    }
    let welcome = Welcome {
        server: format!("ckptfs {}", env!("CARGO_PKG_VERSION")),
    };
    send(w, peer, MsgType::Welcome, proto::encode(&welcome))
}

#[cfg(test)]
pub(crate) fn test_key(bytes: &[u8]) -> Key {
    Key {
        bytes: bytes.to_vec(),
        path: PathBuf::from("<test key>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;

    fn key_file(dir: &Path, name: &str, content: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn key_file_rules() {
        let d = tempfile::tempdir_in("/var/tmp").unwrap();
        let ok = key_file(d.path(), "ok", b"  s3cret-s3cret-s3cret\n", 0o600);
        let k = Key::load(&ok).unwrap();
        assert_eq!(k.bytes, b"s3cret-s3cret-s3cret");
        assert!(!format!("{k:?}").contains("s3cret"));
        Key::load(&key_file(d.path(), "ro", b"k", 0o400)).unwrap();

        let open = key_file(d.path(), "open", b"secret", 0o644);
        let e = Key::load(&open).unwrap_err().to_string();
        assert!(
            e.contains(&*open.to_string_lossy()) && e.contains("0644"),
            "{e}"
        );
        let e = Key::load(&key_file(d.path(), "g", b"secret", 0o640)).unwrap_err();
        assert!(matches!(e, KeyError::TooOpen { mode: 0o640, .. }), "{e}");

        let e = Key::load(&key_file(d.path(), "empty", b" \n", 0o600)).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        let e = Key::load(&d.path().join("absent")).unwrap_err();
        assert!(e.to_string().contains("absent"), "{e}");
        let e = Key::load(d.path()).unwrap_err();
        assert!(matches!(e, KeyError::NotAFile { .. }), "{e}");
    }

    fn handshake(client: Key, server: Key) -> (Result<String, DrError>, Result<(), DrError>) {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let (mut r, mut w) = (&b, &b);
            server_handshake(&mut r, &mut w, "client", &server)
        });
        let (mut r, mut w) = (&a, &a);
        let c = client_handshake(&mut r, &mut w, "server", &client);
        drop(a);
        (c, t.join().unwrap())
    }

    #[test]
    fn same_key_authenticates_both_ways() {
        let (c, s) = handshake(test_key(b"k1"), test_key(b"k1"));
        assert!(c.unwrap().starts_with("ckptfs "));
        s.unwrap();
    }

    #[test]
    fn wrong_key_fails_on_both_sides() {
        let (c, s) = handshake(test_key(b"k1"), test_key(b"k2"));
        let c = c.unwrap_err();
        let s = s.unwrap_err();
        assert!(matches!(c, DrError::AuthFailed { .. }), "{c}");
        assert!(matches!(s, DrError::AuthFailed { .. }), "{s}");
        assert!(c.to_string().contains("authentication failed"), "{c}");
        assert!(s.to_string().contains("authentication failed"), "{s}");
    }

    #[test]
    fn proofs_are_domain_separated() {
        let k = test_key(b"k");
        let (a, b) = (Hex32([1; 32]), Hex32([2; 32]));
        let server = k.prove(SERVER_LABEL, &a, &b);
        assert!(!k.check(CLIENT_LABEL, &a, &b, &server));
        assert!(k.check(SERVER_LABEL, &a, &b, &server));
        assert!(!k.check(SERVER_LABEL, &b, &a, &server));
    }
}
