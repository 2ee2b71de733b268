//! The lab's own certificate authority, the apiserver's serving certificate, the
//! service-account signing key, and bearer tokens. All made with the `openssl` CLI, once:
//! `up` reuses whatever is already there.
//!
//! Keys are ECDSA P-256: generating them takes milliseconds where RSA takes a noticeable
//! fraction of a second, and both kube-apiserver and rustls accept them.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::lab::{CONTROL_IP, Lab};
use crate::{Error, run, write_file};

/// Paths of the lab's key material.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub apiserver_cert: PathBuf,
    pub apiserver_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

impl Pki {
    pub fn of(lab: &Lab) -> Pki {
        let dir = lab.pki_dir();
        Pki {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            apiserver_cert: dir.join("apiserver.crt"),
            apiserver_key: dir.join("apiserver.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
        }
    }

    fn all(&self) -> [&Path; 6] {
        [
            &self.ca_cert,
            &self.ca_key,
            &self.apiserver_cert,
            &self.apiserver_key,
            &self.sa_key,
            &self.sa_pub,
        ]
    }
}

/// The apiserver certificate's subject alternative names: the address clients dial, the
/// loopback, the first address of the service range (what in-cluster clients use) and the
/// usual in-cluster DNS names.
pub const APISERVER_SANS: &[&str] = &[
    "IP:127.0.0.1",
    "IP:10.96.0.1",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
    "DNS:localhost",
];

/// Makes the CA, the apiserver certificate and the service-account key pair, unless all are
/// already there. Returns whether anything was made.
pub fn ensure(lab: &Lab) -> Result<bool, Error> {
    let pki = Pki::of(lab);
    if pki.all().iter().all(|p| p.exists()) {
        return Ok(false);
    }
    let dir = lab.pki_dir();
    crate::mkdir(&dir)?;
    ec_key(&pki.ca_key)?;
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-new",
            "-sha256",
            "-days",
            "3650",
            "-subj",
            "/CN=tortie-lab-ca",
        ])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-key")
        .arg(&pki.ca_key)
        .arg("-out")
        .arg(&pki.ca_cert))?;

    ec_key(&pki.apiserver_key)?;
    let csr = dir.join("apiserver.csr");
    run(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-sha256",
            "-subj",
            "/CN=kube-apiserver",
            "-key",
        ])
        .arg(&pki.apiserver_key)
        .arg("-out")
        .arg(&csr))?;
    let ext = dir.join("apiserver.ext");
    let mut sans = vec![format!("IP:{CONTROL_IP}")];
    sans.extend(APISERVER_SANS.iter().map(|s| s.to_string()));
    write_file(
        &ext,
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\nsubjectAltName={}\n",
            sans.join(",")
        )
        .as_bytes(),
    )?;
    run(Command::new("openssl")
        .args([
            "x509",
            "-req",
            "-sha256",
            "-days",
            "3650",
            "-set_serial",
            "2",
            "-in",
        ])
        .arg(&csr)
        .arg("-CA")
        .arg(&pki.ca_cert)
        .arg("-CAkey")
        .arg(&pki.ca_key)
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&pki.apiserver_cert))?;

    ec_key(&pki.sa_key)?;
    run(Command::new("openssl")
        .args(["ec", "-pubout", "-in"])
        .arg(&pki.sa_key)
        .arg("-out")
        .arg(&pki.sa_pub))?;
    Ok(true)
}

fn ec_key(path: &Path) -> Result<(), Error> {
    run(Command::new("openssl")
        .args([
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
        ])
        .arg(path))?;
    Ok(())
}

/// A fresh random bearer token: 128 bits from the kernel, as hex.
pub fn new_token() -> Result<String, Error> {
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(Error::io("reading /dev/urandom"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_hex() {
        let a = new_token().unwrap_or_else(|e| panic!("{e}"));
        let b = new_token().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn ensure_makes_a_ca_signed_server_cert_with_ip_sans() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let lab = Lab::new(dir.path(), "");
        assert!(ensure(&lab).unwrap_or_else(|e| panic!("{e}")));
        assert!(
            !ensure(&lab).unwrap_or_else(|e| panic!("{e}")),
            "second run reuses the files"
        );
        let pki = Pki::of(&lab);
        let verify = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&pki.ca_cert)
            .arg(&pki.apiserver_cert)
            .output()
            .unwrap_or_else(|e| panic!("openssl: {e}"));
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stderr)
        );
        let text = run(Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&pki.apiserver_cert))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(text.contains(&format!("IP Address:{CONTROL_IP}")), "{text}");
    }
}
