//! The encryption key ring's flags, shared by `run` (which seals) and `tail` (which
//! opens): a file, or the ring itself as text for an environment variable. Neither
//! the text nor a key is ever shown (`Debug`, errors, `--help`).

use clap::Args;

use crate::wire::seal::Keyring;

/// `--encryption-keys-file` / `--encryption-keys` (at most one of them).
#[derive(Debug, Clone, Default, Args)]
pub struct KeyRingArgs {
    /// A file holding the encryption key ring: one `<id>:<64 hex digits>` a line,
    /// oldest first; the newest encrypts, every one decrypts.
    #[arg(long = "encryption-keys-file", env = "WALCAST_ENCRYPTION_KEYS_FILE")]
    pub encryption_keys_file: Option<std::path::PathBuf>,
    /// The key ring itself (same form; lines separated by newlines or `;`), for an
    /// environment variable: never on the command line, where `ps` shows it.
    #[arg(
        long = "encryption-keys",
        env = "WALCAST_ENCRYPTION_KEYS",
        hide_env_values = true
    )]
    pub encryption_keys: Option<SecretText>,
}

impl KeyRingArgs {
    /// The key ring, `None` when neither flag is given. An error names the line,
    /// never a key.
    pub fn keys(&self) -> Result<Option<Keyring>, String> {
        let ring = match (&self.encryption_keys_file, &self.encryption_keys) {
            (Some(_), Some(_)) => return Err(
                "give the encryption keys once: --encryption-keys-file or WALCAST_ENCRYPTION_KEYS, not both".into(),
            ),
            (Some(path), None) => Keyring::from_file(path),
            (None, Some(text)) => Keyring::parse(&text.0.replace(';', "\n")),
            (None, None) => return Ok(None),
        };
        ring.map(Some).map_err(|e| e.to_string())
    }
}

/// A secret given as text (the encryption key ring): never shown by `Debug`.
#[derive(Clone)]
pub struct SecretText(pub String);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for SecretText {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretText(s.to_string()))
    }
}
