//! TLS over the stream layer's connections, on rustls (feature `tls`).
//!
//! A [`TlsStream`] is a [`StreamSocket`] that encrypts what a transport
//! writes and decrypts what it reads: the same [`Protocol`] runs over TCP
//! or TLS unchanged. [`ServeOptions::tls`] serves a listener over TLS,
//! [`connect_tls`] is the client side, and [`Transport::start_tls`]
//! upgrades a connection that is up (STARTTLS). What the transport counts
//! for flow control is plaintext: the bytes the protocol wrote and the
//! session has not taken yet.
//!
//! The handshake runs before [`Protocol::connection_made`]: a protocol
//! sees only connections whose handshake is done, with the negotiated
//! parameters on [`Transport::tls`]. A handshake that fails ends the
//! connection: a client's protocol hears of it in
//! [`Protocol::connection_failed`] (a certificate error names the reason),
//! a server logs it (`debug`) and counts nothing.
//!
//! [`Protocol`]: super::Protocol
//! [`Protocol::connection_made`]: super::Protocol::connection_made
//! [`Protocol::connection_failed`]: super::Protocol::connection_failed
//! [`ServeOptions::tls`]: super::ServeOptions::tls
//! [`Transport::start_tls`]: super::Transport::start_tls
//! [`Transport::tls`]: super::Transport::tls

use std::any::Any;
use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The rustls this module is built on, for its configuration types.
pub use rustls;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::client::{self, Endpoint};
use super::connection::{self, ConnId};
use super::{Addr, Protocol, StreamSocket};
use crate::EventLoop;

/// A TLS session over a connected socket: rustls' state machine, fed from
/// and flushed to the socket without blocking.
///
/// Made by the server and client functions of this module; make one
/// yourself to run TLS over a socket of your own and give it to
/// [`attach`](super::attach). A transport over one reaches it through
/// [`Transport::tls`](super::Transport::tls).
pub struct TlsStream {
    inner: Box<dyn StreamSocket>,
    tls: rustls::Connection,
    /// Bytes to send before the session's first record: what a
    /// transport had buffered as plaintext when `start_tls` began.
    plain: Vec<u8>,
    /// `shutdown_write` was asked: the socket's FIN follows the
    /// `close_notify` once that is sent.
    shutting: bool,
    shut: bool,
    /// Decrypted bytes the session holds (rustls' count, less what was
    /// read since).
    held: usize,
    /// The socket's EOF or the peer's `close_notify` came: the reader
    /// says which once what it holds is read.
    ended: bool,
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("handshaking", &self.tls.is_handshaking())
            .field("protocol_version", &self.tls.protocol_version())
            .field("alpn_protocol", &self.alpn_protocol())
            .finish()
    }
}

/// `Read` and `Write` for rustls over a `StreamSocket`.
struct Wire<'a>(&'a mut dyn StreamSocket);

impl Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }
}

impl Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.send_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A rustls error as an `io::Error` that says where it happened.
fn tls_error(during: &str, e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS {during}: {e}"))
}

fn would_block() -> io::Error {
    io::ErrorKind::WouldBlock.into()
}

impl TlsStream {
    /// A session `tls` (a `rustls::ServerConnection` or
    /// `ClientConnection`, fresh) over the connected, non-blocking
    /// `socket`.
    pub fn new(socket: impl StreamSocket, tls: impl Into<rustls::Connection>) -> TlsStream {
        TlsStream::over(Box::new(socket), tls.into())
    }

    pub(super) fn over(inner: Box<dyn StreamSocket>, tls: rustls::Connection) -> TlsStream {
        TlsStream {
            inner,
            tls,
            plain: Vec::new(),
            shutting: false,
            shut: false,
            held: 0,
            ended: false,
        }
    }

    /// Gives rustls what a connection read past its plaintext (the start
    /// of the peer's handshake, for `start_tls`); the decrypted bytes it
    /// holds.
    pub(super) fn feed(tls: &mut rustls::Connection, mut received: &[u8]) -> io::Result<usize> {
        let mut held = 0;
        while !received.is_empty() {
            tls.read_tls(&mut received)?;
            held = tls
                .process_new_packets()
                .map_err(|e| tls_error("handshake", e))?
                .plaintext_bytes_to_read();
        }
        Ok(held)
    }

    /// Plaintext to send before the session's records (what a transport
    /// had buffered when its upgrade began), and the count `feed` gave.
    pub(super) fn upgrading(&mut self, plain: Vec<u8>, held: usize) {
        self.plain = plain;
        self.held = held;
    }

    /// The rustls session: everything it negotiated.
    pub fn connection(&self) -> &rustls::Connection {
        &self.tls
    }

    /// The socket under the session.
    pub fn get_ref(&self) -> &dyn StreamSocket {
        &*self.inner
    }

    /// The protocol ALPN agreed on (`b"h2"`, `b"http/1.1"`), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.tls.alpn_protocol()
    }

    /// The name the client asked for (SNI): on a server's connections.
    pub fn server_name(&self) -> Option<&str> {
        match &self.tls {
            rustls::Connection::Server(s) => s.server_name(),
            rustls::Connection::Client(_) => None,
        }
    }

    /// The peer's certificate chain, its own first: a server's on a
    /// client, a client's on a server that asks for one.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.tls.peer_certificates()
    }

    /// TLS 1.2 or 1.3, once the handshake is done.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.tls.protocol_version()
    }

    /// The cipher suite agreed on, once the handshake is done.
    pub fn cipher_suite(&self) -> Option<rustls::SupportedCipherSuite> {
        self.tls.negotiated_cipher_suite()
    }

    /// Processes the records read; on an error, sends the alert rustls
    /// queued (as far as the socket takes it).
    fn process(&mut self, during: &str) -> io::Result<rustls::IoState> {
        match self.tls.process_new_packets() {
            Ok(state) => Ok(state),
            Err(e) => {
                let _ = self.tls.write_tls(&mut Wire(&mut *self.inner));
                Err(tls_error(during, e))
            }
        }
    }

    /// Sends what the session holds, until it is sent or the socket is
    /// full (`WouldBlock`).
    fn send_held(&mut self) -> io::Result<()> {
        while !self.plain.is_empty() {
            match self.inner.send(&self.plain)? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => drop(self.plain.drain(..n)),
            }
        }
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut Wire(&mut *self.inner))? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        if self.shutting && !self.shut {
            self.shut = true;
            self.inner.shutdown_write()?;
        }
        Ok(())
    }

    /// `send_held`, with a full socket not an error.
    fn try_send_held(&mut self) -> io::Result<()> {
        match self.send_held() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            res => res,
        }
    }
}

impl AsFd for TlsStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl StreamSocket for TlsStream {
    /// Plaintext: what the session holds decrypted, else what one read of
    /// the socket brings (records that carry none — a ticket, a key
    /// update — read on). `Ok(0)` is the peer's `close_notify`; a socket
    /// EOF without one is an `UnexpectedEof` error (truncation).
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.held > 0 || self.ended {
                match self.tls.reader().read(buf) {
                    Ok(n) => {
                        self.held = self.held.saturating_sub(n);
                        return Ok(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.held = 0,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "TLS: the peer closed the connection without close_notify (truncated)",
                        ));
                    }
                    Err(e) => return Err(e),
                }
            }
            let n = self.tls.read_tls(&mut Wire(&mut *self.inner))?;
            let state = self.process("record")?;
            self.held = state.plaintext_bytes_to_read();
            self.ended |= n == 0 || state.peer_has_closed();
            // A key update may want an answer.
            self.try_send_held()?;
        }
    }

    /// Plaintext into records: while the session still holds records of
    /// an earlier write, `WouldBlock` (so that the transport's buffer
    /// holds the rest, and flow control counts it).
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.tls.is_handshaking() || self.shutting {
            return Err(would_block());
        }
        self.send_held()?;
        let n = self.tls.writer().write_vectored(bufs)?;
        self.try_send_held()?;
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(would_block());
        }
        Ok(n)
    }

    /// Sends `close_notify`, then shuts the socket's writing side once
    /// that is sent.
    fn shutdown_write(&mut self) -> io::Result<()> {
        if !self.shutting {
            self.shutting = true;
            self.tls.send_close_notify();
        }
        self.try_send_held()
    }

    fn end_session(&mut self) -> io::Result<()> {
        if !self.shutting {
            self.shutting = true;
            // The close itself ends the socket: no FIN first.
            self.shut = true;
            self.tls.send_close_notify();
        }
        self.try_send_held()
    }

    fn peer_addr(&self) -> io::Result<Addr> {
        self.inner.peer_addr()
    }

    fn local_addr(&self) -> io::Result<Addr> {
        self.inner.local_addr()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn holds_output(&self) -> bool {
        !self.plain.is_empty() || self.tls.wants_write() || (self.shutting && !self.shut)
    }

    fn holds_input(&self) -> bool {
        // Only plaintext counts: records that are not whole yet need
        // more bytes, which the socket's readiness announces.
        self.held > 0 || self.ended
    }

    fn flush_output(&mut self) -> io::Result<()> {
        self.send_held()
    }

    fn handshake(&mut self) -> io::Result<bool> {
        loop {
            self.send_held()?;
            if !self.tls.is_handshaking() {
                return Ok(true);
            }
            match self.tls.read_tls(&mut Wire(&mut *self.inner)) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "TLS handshake: the peer closed the connection",
                    ));
                }
                Ok(_) => {
                    // The last flight may carry application data too.
                    self.held = self.process("handshake")?.plaintext_bytes_to_read();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Connects to `to` as [`connect`](super::connect) does, then runs a TLS
/// handshake with `config` for `server_name` (checked against the
/// server's certificate, and sent as SNI), and runs the connection with
/// `protocol` once both are done. A connect or a handshake that fails —
/// refused, timed out (`timeout` covers both), a certificate that does
/// not verify (`InvalidData`, "invalid peer certificate: …") — reaches
/// [`Protocol::connection_failed`], and nothing else is called.
///
/// # Errors
///
/// As [`connect`](super::connect); `InvalidInput` if `server_name` is not
/// a DNS name or an IP address.
///
/// [`Protocol::connection_failed`]: super::Protocol::connection_failed
pub fn connect_tls<S: 'static>(
    lp: &mut EventLoop<S>,
    to: impl Into<Endpoint>,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
    timeout: Option<Duration>,
    protocol: impl Protocol<S>,
) -> io::Result<ConnId<S>> {
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TLS server name {server_name:?}: {e}"),
        )
    })?;
    let session = rustls::ClientConnection::new(config, name)
        .map_err(|e| io::Error::other(format!("TLS session: {e}")))?;
    let id = client::start_with(lp, &to.into(), Box::new(protocol), |sock| {
        sock.into_tls(session)
    })?;
    if let Some(timeout) = timeout {
        connection::handshake_deadline(lp, id, timeout);
    }
    Ok(id)
}

/// An error about the file `path`.
fn file_error(path: &Path, kind: io::ErrorKind, what: impl fmt::Display) -> io::Error {
    io::Error::new(kind, format!("{}: {what}", path.display()))
}

fn pem_error(path: &Path, what: &str, e: pem::Error) -> io::Error {
    match e {
        pem::Error::Io(e) => file_error(path, e.kind(), e),
        pem::Error::NoItemsFound => file_error(
            path,
            io::ErrorKind::InvalidData,
            format_args!("no {what} in PEM format found"),
        ),
        e => file_error(
            path,
            io::ErrorKind::InvalidData,
            format_args!("not a PEM {what} file ({e})"),
        ),
    }
}

/// The certificates of a PEM file (a chain: the server's own first).
///
/// # Errors
///
/// Naming the file: it cannot be read (`NotFound`, ...), or holds no
/// PEM certificate, or a broken one (`InvalidData`).
pub fn load_certs(path: impl AsRef<Path>) -> io::Result<Vec<CertificateDer<'static>>> {
    let path = path.as_ref();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, "certificate", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "certificate", e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "certificate", pem::Error::NoItemsFound));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
///
/// Naming the file: it cannot be read, or holds no PEM private key.
pub fn load_key(path: impl AsRef<Path>) -> io::Result<PrivateKeyDer<'static>> {
    let path = path.as_ref();
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, "private key", e))
}

/// A server configuration from a PEM certificate chain and its private
/// key, TLS 1.2 and 1.3 on the ring provider, no client certificates,
/// ALPN `alpn` (e.g. `&[b"http/1.1"]`; empty: none).
///
/// # Errors
///
/// As [`load_certs`] and [`load_key`]; `InvalidInput` naming both files
/// if the key is not the certificate's.
///
/// # Examples
///
/// ```no_run
/// use muxloop::stream::{self, ServeOptions};
/// # fn main() -> std::io::Result<()> {
/// let mut options = ServeOptions::default();
/// options.tls = Some(stream::tls::server_config("cert.pem", "key.pem", &[b"http/1.1"])?);
/// # Ok(()) }
/// ```
pub fn server_config(
    cert: impl AsRef<Path>,
    key: impl AsRef<Path>,
    alpn: &[&[u8]],
) -> io::Result<Arc<rustls::ServerConfig>> {
    let (cert, key) = (cert.as_ref(), key.as_ref());
    let chain = load_certs(cert)?;
    let private = load_key(key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} with {}: the key does not fit the certificate ({e})",
                    key.display(),
                    cert.display()
                ),
            )
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client configuration that trusts the certificates of the PEM file
/// `ca` (a private CA, or a self-signed server's own certificate), TLS
/// 1.2 and 1.3 on the ring provider, ALPN `alpn`.
///
/// # Errors
///
/// As [`load_certs`]; `InvalidData` naming the file if a certificate is
/// not one a root can be made of.
pub fn client_config(
    ca: impl AsRef<Path>,
    alpn: &[&[u8]],
) -> io::Result<Arc<rustls::ClientConfig>> {
    let ca = ca.as_ref();
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).map_err(|e| {
            file_error(
                ca,
                io::ErrorKind::InvalidData,
                format_args!("not a CA certificate ({e})"),
            )
        })?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(format!("TLS versions: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The crypto provider the configurations here use: ring.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
