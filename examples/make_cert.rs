//! Makes a self-signed certificate for `localhost` (also valid for
//! 127.0.0.1 and ::1) and its key, as PEM files, so that the TLS examples
//! can be tried in one command, then prints those commands.
//!
//! ```text
//! cargo run --example make_cert                    # into target/localhost-cert/
//! cargo run --example make_cert -- --dir /tmp/certs
//! ```
//!
//! For trying things out only: the key is written unencrypted, and a
//! self-signed certificate is trusted only where it is named as the CA
//! (`curl --cacert`, `openssl s_client -CAfile`, `tls::client_config`).

#[path = "common/cli.rs"]
mod cli;

use std::path::PathBuf;

use clap::Parser;

/// Writes cert.pem and key.pem for localhost into a directory.
#[derive(Parser)]
struct Args {
    /// Directory to write cert.pem and key.pem into (made if missing).
    #[arg(long, default_value = "target/localhost-cert")]
    dir: PathBuf,
}

#[cfg(target_os = "linux")]
fn main() -> std::io::Result<()> {
    use std::io;

    cli::guard_stdio();
    let args = Args::parse();
    let names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| io::Error::other(format!("making the certificate: {e}")))?;
    std::fs::create_dir_all(&args.dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{}: cannot make it: {e}", args.dir.display()),
        )
    })?;
    let dir = args.dir.canonicalize()?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem())?;
    write_private(&key, made.signing_key.serialize_pem().as_bytes())?;
    let flags = format!("--tls-cert {} --tls-key {}", cert.display(), key.display());
    cli::say!("wrote {} and {}", cert.display(), key.display());
    cli::say!("HTTPS: cargo run --features tls --example http_hello -- {flags}");
    cli::say!("TLS echo: cargo run --features tls --example echo_server -- {flags}");
    Ok(())
}

/// Writes `data` to `path`, readable by its owner only (it is a key).
#[cfg(target_os = "linux")]
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(data)
}

/// rcgen is a dev-dependency on Linux only (ring's C is not built for the
/// targets the crate is only type-checked for).
#[cfg(not(target_os = "linux"))]
fn main() {
    cli::guard_stdio();
    let args = Args::parse();
    cli::tell!(
        "make_cert is built on Linux only; elsewhere: openssl req -x509 -newkey ec \
         -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
         -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout {0}/key.pem -out {0}/cert.pem",
        args.dir.display()
    );
    std::process::exit(2);
}
