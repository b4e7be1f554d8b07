//! Which certificate authorities the client trusts: the operating system's store.
//!
//! A municipality's platform or warehouse may present a certificate from an internal CA that
//! its operations team installs in the system store (`update-ca-certificates`), not from one of
//! the public web roots a crate could bundle. So both TLS clients — reqwest for the platform and
//! sqlx for PostgreSQL — are built with native roots (rustls-native-certs), which reads what
//! OpenSSL reads: the distribution's bundle and directory, or `SSL_CERT_FILE` / `SSL_CERT_DIR`
//! when set. A source's `ca_file` and PostgreSQL's `sslrootcert` add a private CA on top.
//!
//! This module only reads the store to *report* on it (`config check`) and to refuse a source
//! that could trust nobody, with a message instead of a handshake failure in every window.

/// What the operating system's store held when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemRoots {
    /// Certificates read (each a CA the client trusts).
    pub certificates: usize,
    /// Where they came from, for a person: the variable that chose the file or directory, or
    /// the system default.
    pub origin: String,
    /// Files or directories that could not be read, as rustls-native-certs reported them.
    pub errors: Vec<String>,
}

/// Reads the store once (a few milliseconds: every file of the bundle directory is parsed).
pub fn system_roots() -> SystemRoots {
    let loaded = rustls_native_certs::load_native_certs();
    let origin = ["SSL_CERT_FILE", "SSL_CERT_DIR"]
        .iter()
        .filter_map(|var| {
            std::env::var_os(var).map(|v| format!("{var}={}", std::path::Path::new(&v).display()))
        })
        .collect::<Vec<_>>();
    SystemRoots {
        certificates: loaded.certs.len(),
        origin: if origin.is_empty() {
            "the operating system's store".into()
        } else {
            origin.join(", ")
        },
        errors: loaded.errors.iter().map(ToString::to_string).collect(),
    }
}
