//! TLS to PostgreSQL in libpq's terms (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`), for
//! both kinds of connection the relay opens: the replication session (pgwire-replication's
//! own rustls support) and the ordinary ones (tokio-postgres through
//! `tokio-postgres-rustls`). One TLS stack, rustls with the aws-lc-rs provider, for
//! every PostgreSQL connection of the workspace (sqlx in the services uses the same):
//! rustls' default and the provider it maintains fully (its ring provider is deprecated:
//! no post-quantum key exchange). pgwire-replication installs ring as the process
//! default unless one is installed first: [`install_provider`] runs at start.
//!
//! | `sslmode` | encrypted | server certificate checked | host name checked |
//! |---|---|---|---|
//! | `disable` | never | - | - |
//! | `prefer` (default, as libpq) | if the server offers it | no | no |
//! | `require` | always | no (libpq: only when `sslrootcert` is given; here never) | no |
//! | `verify-ca` | always | against `sslrootcert` | no |
//! | `verify-full` | always | against `sslrootcert` | yes (SNI sent for host names) |
//!
//! Without `sslrootcert`, `verify-ca`/`verify-full` trust Mozilla's root set (webpki-roots,
//! what pgwire-replication does too), where libpq would read `~/.postgresql/root.crt`:
//! managed services whose CA is not public (Amazon RDS, Azure, Cloud SQL) need their CA
//! bundle named in `sslrootcert`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;

/// libpq's `sslmode` values the relay supports (`allow` is not: it is plaintext first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// The values, for error messages.
    pub const NAMES: [&'static str; 5] =
        ["disable", "prefer", "require", "verify-ca", "verify-full"];
}

/// One source's TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgTls {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The crypto provider of every rustls configuration the relay makes.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Makes aws-lc-rs the process-wide rustls provider (pgwire-replication builds its
/// configurations from the process default). Idempotent.
pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

impl PgTls {
    /// The replication connection's TLS settings. An IP address is checked against the
    /// certificate's IP names (pgwire-replication otherwise refuses `verify-full` to an IP).
    pub fn replication(&self, host: &str) -> pgwire_replication::TlsConfig {
        use pgwire_replication::config::SslMode as M;
        let mut c = pgwire_replication::TlsConfig {
            mode: match self.mode {
                SslMode::Disable => M::Disable,
                SslMode::Prefer => M::Prefer,
                SslMode::Require => M::Require,
                SslMode::VerifyCa => M::VerifyCa,
                SslMode::VerifyFull => M::VerifyFull,
            },
            ca_pem_path: self.root_cert.clone(),
            ..Default::default()
        };
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            c = c.with_client_cert(cert.clone(), key.clone());
        }
        if host.parse::<std::net::IpAddr>().is_ok() {
            c = c.with_sni_hostname(host);
        }
        c
    }

    /// tokio-postgres' own mode: whether to ask for TLS and whether to insist.
    pub fn tokio_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as M;
        match self.mode {
            SslMode::Disable => M::Disable,
            SslMode::Prefer => M::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => M::Require,
        }
    }

    /// The connector for ordinary connections, verifying as `sslmode` says.
    pub fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(
            self.client_config()?,
        ))
    }

    /// The rustls configuration for `sslmode`; also checks that the files can be read, so
    /// configuration errors show at start.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        let provider = provider();
        let roots = Arc::new(self.roots()?);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?;
        let verifier: Arc<dyn ServerCertVerifier> = match self.mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => {
                Arc::new(AcceptAny(provider.clone()))
            }
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| format!("tls: {e}"))?;
                if self.mode == SslMode::VerifyCa {
                    Arc::new(ChainOnly(inner))
                } else {
                    inner
                }
            }
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(read_certs(cert, "sslcert")?, read_key(key)?)
                .map_err(|e| format!("sslcert/sslkey: {e}")),
            (None, None) => Ok(builder.with_no_client_auth()),
            _ => Err("sslcert and sslkey go together: set both or neither".into()),
        }
    }

    fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                let (added, _) = roots.add_parsable_certificates(read_certs(path, "sslrootcert")?);
                if added == 0 {
                    return Err(format!(
                        "sslrootcert {}: no usable CA certificate in it",
                        path.display()
                    ));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        Ok(roots)
    }
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{key} {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key} {}: not PEM certificates ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{key} {}: no certificate in it", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        format!(
            "sslkey {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it ({e})",
            path.display()
        )
    })
}

/// `require` and `prefer`: encrypted, the certificate not checked (libpq's behaviour
/// without a root certificate). Signatures are still verified: the handshake is real.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not compared.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_insist_on_tls_and_prefer_does_not() {
        use tokio_postgres::config::SslMode as M;
        let t = |mode| PgTls {
            mode,
            ..PgTls::default()
        };
        assert_eq!(t(SslMode::Prefer).tokio_mode(), M::Prefer);
        assert_eq!(t(SslMode::Disable).tokio_mode(), M::Disable);
        for m in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            assert_eq!(t(m).tokio_mode(), M::Require, "{m:?}");
            assert!(t(m).replication("db").mode.requires_tls(), "{m:?}");
        }
        assert!(!t(SslMode::Prefer).replication("db").mode.requires_tls());
    }

    #[test]
    fn an_ip_address_is_checked_against_the_certificate_not_refused() {
        let tls = PgTls {
            mode: SslMode::VerifyFull,
            ..PgTls::default()
        };
        assert_eq!(
            tls.replication("127.0.0.1").sni_hostname.as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(tls.replication("db.example.com").sni_hostname, None);
    }

    #[test]
    fn unreadable_files_and_half_a_client_certificate_are_clear_errors() {
        let missing = PgTls {
            mode: SslMode::VerifyFull,
            root_cert: Some("/nonexistent/ca.pem".into()),
            ..PgTls::default()
        };
        let e = missing.client_config().unwrap_err();
        assert!(e.contains("sslrootcert /nonexistent/ca.pem"), "{e}");
        let half = PgTls {
            mode: SslMode::Require,
            cert: Some("/nonexistent/client.pem".into()),
            ..PgTls::default()
        };
        let e = half.client_config().unwrap_err();
        assert!(e.contains("sslcert and sslkey go together"), "{e}");
        // Without a root file the public roots are trusted: a configuration results.
        assert!(PgTls {
            mode: SslMode::VerifyFull,
            ..PgTls::default()
        }
        .client_config()
        .is_ok());
    }
}
