//! The authentication exchange of the startup phase: each `Authentication*` request of
//! the server answered — trust, cleartext password, MD5, and SASL with SCRAM-SHA-256
//! (SCRAM-SHA-256-PLUS, channel binding to the server certificate, over TLS when the
//! server offers it). The password is only ever written to the socket.

use bytes::{Buf, Bytes};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;

use super::conn::ReplicationConnection;
use super::error::{io_err, proto};
use super::params::ConnectParams;
use super::SourceError;

/// `AuthenticationOk`.
const AUTH_OK: i32 = 0;
/// `AuthenticationCleartextPassword`.
const AUTH_CLEARTEXT: i32 = 3;
/// `AuthenticationMD5Password`, with a 4-byte salt.
const AUTH_MD5: i32 = 5;
/// `AuthenticationSASL`, with the mechanisms the server offers.
const AUTH_SASL: i32 = 10;
/// `AuthenticationSASLContinue`, with the server's challenge.
const AUTH_SASL_CONTINUE: i32 = 11;
/// `AuthenticationSASLFinal`, with the server's proof.
const AUTH_SASL_FINAL: i32 = 12;

/// The password of the connection string, or the error that none was given.
fn password_of(p: &ConnectParams) -> Result<Vec<u8>, SourceError> {
    p.password.clone().ok_or_else(|| {
        SourceError::Auth(format!(
            "the server asks a password for user {:?} and the URL gives none",
            p.user
        ))
    })
}

/// The error for an authentication method walcast does not speak.
fn unsupported_method(code: i32) -> SourceError {
    SourceError::Auth(format!(
        "unsupported authentication method (code {code}); use trust, password, md5 or scram-sha-256"
    ))
}

impl ReplicationConnection {
    /// One authentication request of the server, answered. `scram` carries the SASL
    /// exchange from one request to the next.
    pub(super) async fn authenticate(
        &mut self,
        p: &ConnectParams,
        body: Bytes,
        scram: &mut Option<ScramSha256>,
    ) -> Result<(), SourceError> {
        let mut b = body;
        if b.len() < 4 {
            return Err(proto("short authentication message"));
        }
        match b.get_i32() {
            AUTH_OK => Ok(()),
            AUTH_CLEARTEXT => self.send_password(&password_of(p)?).await,
            AUTH_MD5 => self.send_md5_password(p, &b).await,
            AUTH_SASL => {
                *scram = Some(self.sasl_start(&b, &password_of(p)?).await?);
                Ok(())
            }
            AUTH_SASL_CONTINUE => self.sasl_continue(scram.as_mut(), &b).await,
            AUTH_SASL_FINAL => sasl_final(scram.as_mut(), &b),
            other => Err(unsupported_method(other)),
        }
    }

    /// A `PasswordMessage`: the cleartext password, or the MD5 hash.
    async fn send_password(&mut self, password: &[u8]) -> Result<(), SourceError> {
        frontend::password_message(password, &mut self.wbuf)
            .map_err(io_err("encoding the password"))?;
        self.flush().await
    }

    /// MD5: `md5(md5(password + user) + salt)`.
    async fn send_md5_password(
        &mut self,
        p: &ConnectParams,
        salt: &[u8],
    ) -> Result<(), SourceError> {
        if salt.len() < 4 {
            return Err(proto("short MD5 salt"));
        }
        let salt = [salt[0], salt[1], salt[2], salt[3]];
        let hash = md5_hash(p.user.as_bytes(), &password_of(p)?, salt);
        self.send_password(hash.as_bytes()).await
    }

    /// SASL: choose the mechanism and send the first message. Over TLS with a
    /// certificate, SCRAM-SHA-256-PLUS (channel binding) when the server offers it.
    async fn sasl_start(
        &mut self,
        mechanisms: &[u8],
        password: &[u8],
    ) -> Result<ScramSha256, SourceError> {
        let (mechanism, binding) = self.choose_mechanism(mechanisms)?;
        tracing::debug!(mechanism, "authenticating");
        let s = ScramSha256::new(password, binding);
        frontend::sasl_initial_response(mechanism, s.message(), &mut self.wbuf)
            .map_err(io_err("encoding SASL"))?;
        self.flush().await?;
        Ok(s)
    }

    /// The SCRAM mechanism and channel binding, from the mechanisms the server
    /// offers (NUL-separated) and what TLS gave this connection.
    fn choose_mechanism(
        &self,
        mechanisms: &[u8],
    ) -> Result<(&'static str, ChannelBinding), SourceError> {
        let mechs: Vec<&[u8]> = mechanisms
            .split(|&c| c == 0)
            .filter(|m| !m.is_empty())
            .collect();
        let plus = mechs.contains(&&b"SCRAM-SHA-256-PLUS"[..]);
        let bound = self
            .channel_binding
            .as_ref()
            .filter(|h| !h.is_empty() && plus);
        if !mechs.contains(&&b"SCRAM-SHA-256"[..]) && bound.is_none() {
            return Err(SourceError::Auth(format!(
                "server offers SASL mechanisms {:?}, walcast speaks SCRAM-SHA-256",
                mechs
                    .iter()
                    .map(|m| String::from_utf8_lossy(m))
                    .collect::<Vec<_>>()
            )));
        }
        Ok(match (bound, &self.channel_binding) {
            (Some(hash), _) => (
                "SCRAM-SHA-256-PLUS",
                ChannelBinding::tls_server_end_point(hash.clone()),
            ),
            (None, Some(_)) => ("SCRAM-SHA-256", ChannelBinding::unrequested()),
            (None, None) => ("SCRAM-SHA-256", ChannelBinding::unsupported()),
        })
    }

    /// SASL continue: the server's challenge taken in, the client proof sent.
    async fn sasl_continue(
        &mut self,
        scram: Option<&mut ScramSha256>,
        challenge: &[u8],
    ) -> Result<(), SourceError> {
        let s = scram.ok_or_else(|| proto("SASL continue before start"))?;
        s.update(challenge)
            .map_err(|e| SourceError::Auth(format!("SCRAM: {e}")))?;
        frontend::sasl_response(s.message(), &mut self.wbuf).map_err(io_err("encoding SASL"))?;
        self.flush().await
    }
}

/// SASL final: the server's proof checked (a server that does not know the password
/// is not trusted).
fn sasl_final(scram: Option<&mut ScramSha256>, proof: &[u8]) -> Result<(), SourceError> {
    let s = scram.ok_or_else(|| proto("SASL final before start"))?;
    s.finish(proof)
        .map_err(|e| SourceError::Auth(format!("SCRAM server proof: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn connection(channel_binding: Option<Vec<u8>>) -> ReplicationConnection {
        let mut c = ReplicationConnection::from_io(tokio::io::empty(), tokio::io::sink());
        c.channel_binding = channel_binding;
        c
    }

    fn mechanism(c: &ReplicationConnection, offer: &[u8]) -> Result<&'static str, String> {
        c.choose_mechanism(offer)
            .map(|(m, _)| m)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_mechanism_follows_the_offer_and_the_tls_binding() {
        let both = b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0";
        assert_eq!(mechanism(&connection(None), both), Ok("SCRAM-SHA-256"));
        let tls = connection(Some(vec![7; 32]));
        assert_eq!(mechanism(&tls, both), Ok("SCRAM-SHA-256-PLUS"));
        assert_eq!(
            mechanism(&tls, b"SCRAM-SHA-256-PLUS\0\0"),
            Ok("SCRAM-SHA-256-PLUS")
        );
        let no_hash = connection(Some(Vec::new()));
        assert_eq!(mechanism(&no_hash, both), Ok("SCRAM-SHA-256"));
        assert!(mechanism(&connection(None), b"SCRAM-SHA-256-PLUS\0\0").is_err());
        let e = mechanism(&connection(None), b"OTHER\0\0").unwrap_err();
        assert!(e.contains("OTHER") && e.contains("SCRAM-SHA-256"), "{e}");
    }

    #[tokio::test]
    async fn md5_sends_the_salted_hash_and_needs_a_password() {
        let (writer, mut server) = tokio::io::duplex(1024);
        let mut c = ReplicationConnection::from_io(tokio::io::empty(), writer);
        let mut p = ConnectParams::from_url("host=h user=u password=pw dbname=d").unwrap();
        let request = Bytes::from_static(&[0, 0, 0, 5, 1, 2, 3, 4]);
        c.authenticate(&p, request.clone(), &mut None)
            .await
            .unwrap();
        let mut sent = vec![0; 64];
        let n = server.read(&mut sent).await.unwrap();
        let hash = md5_hash(b"u", b"pw", [1, 2, 3, 4]);
        assert_eq!(sent[0], b'p');
        assert_eq!(&sent[5..n - 1], hash.as_bytes());
        p.password = None;
        let e = c.authenticate(&p, request, &mut None).await.unwrap_err();
        assert!(e.to_string().contains("gives none"), "{e}");
        let short = Bytes::from_static(&[0, 0, 0, 5, 1]);
        assert!(c.authenticate(&p, short, &mut None).await.is_err());
        let unknown = Bytes::from_static(&[0, 0, 0, 7]);
        let e = c.authenticate(&p, unknown, &mut None).await.unwrap_err();
        assert!(e.to_string().contains("code 7"), "{e}");
    }
}
