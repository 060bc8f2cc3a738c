//! Sealed row values: compression (zstd) and end-to-end encryption (AES-256-GCM) of an
//! envelope's `value` and `before`, as `docs/envelope.md` ("Compressed and encrypted
//! values") and `docs/encryption.md` describe. The key, op, sequence and the other
//! fields stay clear; a sealed row travels as MessagePack `bin`.
//!
//! The [`Keyring`] holds the keys (newest last: it encrypts; every key decrypts), read
//! from a file or an environment variable; key material is never printed (`Debug`
//! shows the ids only). Both the publisher and the client use this module; `rows.rs`
//! seals and opens an envelope's rows (whole, or column by column).

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

/// The `compression` field's value for zstd frames.
pub const ZSTD: &str = "zstd";
/// Bytes of an AES-256-GCM nonce (random per envelope field).
pub const NONCE_LEN: usize = 12;
/// Bytes of the authentication tag after the ciphertext.
pub const TAG_LEN: usize = 16;
/// The most a compressed row may inflate to (a guard against decompression bombs).
pub const MAX_INFLATED: usize = 256 * 1024 * 1024;
/// zstd's level for rows: fast, and most of the ratio for repetitive rows.
const ZSTD_LEVEL: i32 = 3;

/// Which row of an envelope a sealed value is (part of the associated data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Value,
    Before,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Value => "value",
            Field::Before => "before",
        }
    }
}

/// Why a sealed row could not be opened, or a key ring not read. No variant carries
/// key material.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the envelope of {key} is encrypted under key id {key_id:?} and this consumer has no encryption keys (give it the key ring: --encryption-keys-file or WALCAST_ENCRYPTION_KEYS)")]
    NoKeys { key: String, key_id: String },
    #[error("the envelope of {key} is encrypted under key id {key_id:?}, which is not in this consumer's key ring (it has: {have})")]
    UnknownKey {
        key: String,
        key_id: String,
        have: String,
    },
    #[error("the {field} of {key} does not authenticate under key id {key_id:?}: the key material for that id is wrong, or the envelope was altered")]
    Authentication {
        key: String,
        key_id: String,
        field: &'static str,
    },
    #[error("the {field} of {key} is sealed but is not MessagePack bin")]
    NotBinary { key: String, field: &'static str },
    #[error("the {field} of {key} is compressed with {compression:?}, which this consumer does not know")]
    UnknownCompression {
        key: String,
        field: &'static str,
        compression: String,
    },
    #[error("the {field} of {key} does not decompress: {why}")]
    Decompress {
        key: String,
        field: &'static str,
        why: String,
    },
    #[error("encryption keys line {line}: {why}")]
    KeyRing { line: usize, why: String },
    #[error("encryption keys: {0}")]
    KeyRingRead(String),
}

/// One AES-256 key and its id.
#[derive(Clone)]
pub struct SealKey {
    id: String,
    cipher: Aes256Gcm,
}

impl SealKey {
    /// A key from its id and 32 bytes of key material.
    pub fn new(id: &str, material: &[u8; 32]) -> SealKey {
        SealKey {
            id: id.to_string(),
            cipher: Aes256Gcm::new(material.into()),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealKey({:?}, <redacted>)", self.id)
    }
}

/// The encryption keys, oldest first: the newest encrypts, every one decrypts.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    keys: Vec<SealKey>,
}

impl Keyring {
    /// A ring of these keys, oldest first.
    pub fn new(keys: Vec<SealKey>) -> Keyring {
        Keyring { keys }
    }

    /// Parse the key ring text: one key a line, `<id>:<64 hex digits>` (32 bytes),
    /// oldest first; blank lines and `#` comments are skipped. Ids are
    /// `[A-Za-z0-9_.-]`, unique. Errors name the line, never its material.
    pub fn parse(text: &str) -> Result<Keyring, SealError> {
        let mut keys: Vec<SealKey> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| SealError::KeyRing {
                line: n + 1,
                why: why.to_string(),
            };
            let (id, hex) = line
                .split_once(':')
                .ok_or_else(|| bad("not <id>:<64 hex digits>"))?;
            let id_ok = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
            if id.is_empty() || id.len() > 64 || !id.chars().all(id_ok) {
                return Err(bad("the id must be 1 to 64 of [A-Za-z0-9_.-]"));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(bad(&format!("key id {id:?} appears twice")));
            }
            let material = parse_hex32(hex.trim())
                .ok_or_else(|| bad(&format!("key {id:?}: not 64 hex digits (32 bytes)")))?;
            keys.push(SealKey::new(id, &material));
        }
        if keys.is_empty() {
            return Err(SealError::KeyRingRead("no key in the key ring".into()));
        }
        Ok(Keyring { keys })
    }

    /// Read the key ring from a file (see [`Keyring::parse`]).
    pub fn from_file(path: &std::path::Path) -> Result<Keyring, SealError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SealError::KeyRingRead(format!("reading {}: {e}", path.display())))?;
        Keyring::parse(&text)
    }

    /// The key new envelopes are sealed with.
    pub fn newest(&self) -> Option<&SealKey> {
        self.keys.last()
    }

    /// The key with this id.
    pub fn get(&self, id: &str) -> Option<&SealKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// The ids, oldest first.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// The associated data a sealed field is bound to: its key id, the envelope's key,
/// op and sequence, and which field it is, so a ciphertext moved to another key,
/// sequence, op, field or key id does not authenticate. Layout: `walcast-seal-v1`,
/// then each of key id, key, op, field as a 0 byte and the UTF-8 text, then a 0 byte
/// and the sequence as 8 bytes big-endian. `field` is `value` or `before` for a whole
/// row, `value.<column>` or `before.<column>` for one sealed column.
pub fn associated_data(key_id: &str, key: &str, op: &str, field: &str, sequence: u64) -> Vec<u8> {
    let mut ad = Vec::with_capacity(48 + key_id.len() + key.len() + field.len());
    ad.extend_from_slice(b"walcast-seal-v1");
    for part in [key_id, key, op, field] {
        ad.push(0);
        ad.extend_from_slice(part.as_bytes());
    }
    ad.push(0);
    ad.extend_from_slice(&sequence.to_be_bytes());
    ad
}

/// `plain` as one zstd frame.
pub fn compress(plain: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(plain, ZSTD_LEVEL).expect("zstd compresses any bytes in memory")
}

/// A zstd frame inflated (at most [`MAX_INFLATED`] bytes).
pub fn decompress(frame: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut decoder = zstd::stream::read::Decoder::new(frame).map_err(|e| e.to_string())?;
    let mut limited = std::io::Read::take(&mut decoder, MAX_INFLATED as u64 + 1);
    std::io::Read::read_to_end(&mut limited, &mut out).map_err(|e| e.to_string())?;
    if out.len() > MAX_INFLATED {
        return Err(format!("inflates to more than {MAX_INFLATED} bytes"));
    }
    Ok(out)
}

/// `plain` sealed under `key` with a fresh random nonce: nonce ‖ ciphertext ‖ tag.
pub fn seal(key: &SealKey, ad: &[u8], plain: &[u8]) -> Vec<u8> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    seal_with_nonce(key, &nonce.into(), ad, plain)
}

/// [`seal`] with a given nonce: for the documented test vectors only (a nonce must
/// never be used twice with one key).
#[doc(hidden)]
pub fn seal_with_nonce(key: &SealKey, nonce: &[u8; NONCE_LEN], ad: &[u8], plain: &[u8]) -> Vec<u8> {
    let sealed = key
        .cipher
        .encrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: plain,
                aad: ad,
            },
        )
        .expect("AES-GCM seals any message below 64 GiB");
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Open what [`seal`] made; `None` when it does not authenticate (wrong key, altered
/// bytes, other associated data).
pub fn open(key: &SealKey, ad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    key.cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad: ad })
        .ok()
}

mod rows;
pub use rows::{open_row, seal_row, ColumnSealedRow, RowOf, Sealing};

#[cfg(test)]
mod tests;
