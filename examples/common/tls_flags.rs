//! `--tls-cert` and `--tls-key` for the example servers: HTTPS (or TLS
//! echo) when both are given, and the `curl` / `openssl s_client` line
//! that talks to the server, printed when it starts.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use muxloop::stream::ServeOptions;

/// The TLS flags of a server example.
#[derive(clap::Args)]
pub struct TlsFlags {
    /// Serve TLS with this certificate chain (PEM; with --tls-key).
    /// `cargo run --example make_cert` makes one for localhost.
    #[arg(long, requires = "tls_key", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM; with --tls-cert).
    #[arg(long, requires = "tls_cert", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
}

impl TlsFlags {
    /// Puts the server configuration of the flags, offering the ALPN
    /// protocols `alpn`, into `options`; `Ok(false)` when no TLS was asked.
    pub fn configure(&self, options: &mut ServeOptions, alpn: &[&[u8]]) -> io::Result<bool> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(false);
        };
        #[cfg(feature = "tls")]
        {
            options.tls = Some(muxloop::stream::tls::server_config(cert, key, alpn)?);
            Ok(true)
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = (options, alpn);
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "--tls-cert {} --tls-key {}: this build has no TLS; \
                     build the example with `--features tls`",
                    cert.display(),
                    key.display()
                ),
            ))
        }
    }

    /// The command that talks to a server on `addr` with these flags:
    /// `curl` for HTTP (`http` true), `openssl s_client` otherwise. The
    /// certificate is trusted as its own CA and named `localhost`.
    pub fn client_line(&self, addr: SocketAddr, http: bool) -> Option<String> {
        let cert = self.tls_cert.as_ref()?;
        let port = addr.port();
        // A server on the wildcard address is reached on loopback.
        let ip = match addr {
            SocketAddr::V4(a) if a.ip().is_unspecified() => "127.0.0.1".to_string(),
            SocketAddr::V6(a) if a.ip().is_unspecified() => "[::1]".to_string(),
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        Some(if http {
            format!(
                "curl --cacert {} --resolve localhost:{port}:{ip} https://localhost:{port}/",
                cert.display()
            )
        } else {
            format!(
                "openssl s_client -connect {ip}:{port} -servername localhost -CAfile {} \
                 -verify_return_error -quiet",
                cert.display()
            )
        })
    }
}
