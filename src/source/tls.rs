//! TLS to PostgreSQL with rustls, as libpq's `sslmode` defines it, for the replication
//! connection (SSLRequest, then a TLS handshake on the same socket) and for the
//! ordinary `tokio-postgres` connections.
//!
//! | sslmode | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` | when the server offers it | not checked (checked as in `verify-ca` when `sslrootcert` is given) |
//! | `require` | always | not checked (as `verify-ca` when `sslrootcert` is given) |
//! | `verify-ca` | always | signed by `sslrootcert` |
//! | `verify-full` | always | signed by `sslrootcert` and issued for the host name |
//!
//! `sslrootcert=system` uses the operating system's trusted roots. `sslcert` and
//! `sslkey` present a client certificate (PEM files).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::SourceError;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// TLS is mandatory: a server that refuses it is an error.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

/// TLS settings of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn tls_error(what: impl std::fmt::Display) -> SourceError {
    SourceError::Config(format!("PostgreSQL TLS: {what}"))
}

impl TlsSettings {
    /// Settings that cannot work, found before connecting.
    pub fn check(&self) -> Result<(), SourceError> {
        if matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull) && self.root_cert.is_none()
        {
            return Err(SourceError::Config(format!(
                "invalid PostgreSQL URL: sslmode={} needs sslrootcert (the CA's PEM file, or sslrootcert=system)",
                if self.mode == SslMode::VerifyCa { "verify-ca" } else { "verify-full" }
            )));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(SourceError::Config(
                "invalid PostgreSQL URL: sslcert and sslkey go together".into(),
            ));
        }
        Ok(())
    }

    /// The rustls configuration, `None` when TLS is disabled.
    pub fn client_config(&self) -> Result<Option<Arc<ClientConfig>>, SourceError> {
        if self.mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = self.verifier(&provider)?;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| tls_error(format!("sslcert {}: {e}", cert.display())))?;
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| tls_error(format!("sslkey {}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| tls_error(format!("client certificate: {e}")))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Some(Arc::new(config)))
    }

    fn verifier(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<dyn ServerCertVerifier>, SourceError> {
        let Some(root) = &self.root_cert else {
            return Ok(Arc::new(Verifier {
                provider: provider.clone(),
                webpki: None,
                check_name: false,
            }));
        };
        let mut roots = RootCertStore::empty();
        if root.as_os_str() == "system" {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        } else {
            let certs = CertificateDer::pem_file_iter(root)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| tls_error(format!("sslrootcert {}: {e}", root.display())))?;
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| tls_error(format!("sslrootcert {}: {e}", root.display())))?;
            }
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(tls_error)?;
        Ok(Arc::new(Verifier {
            provider: provider.clone(),
            webpki: Some(webpki),
            check_name: self.mode == SslMode::VerifyFull,
        }))
    }
}

/// The server certificate check of an sslmode: nothing (`require`/`prefer` without a
/// root certificate), the chain to the root (`verify-ca`), or the chain and the host
/// name (`verify-full`). Handshake signatures are always verified.
#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The `tls-server-end-point` channel binding data of a server certificate (RFC 5929):
/// its hash with SHA-256 (the hash of the certificate's signature for SHA-256 signed
/// certificates, the usual kind; SHA-384/512-signed ones are not bound).
pub fn server_end_point(cert: &CertificateDer<'_>) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(cert.as_ref()).to_vec()
}
