//! The lab's own certificate authority, the apiserver's serving certificate, the
//! service-account signing key, and bearer tokens. Made in-process with `rcgen`, once: `up`
//! reuses whatever is already there.
//!
//! Keys are ECDSA P-256: generating them takes microseconds where RSA takes a noticeable
//! fraction of a second, and both kube-apiserver and rustls accept them. Private keys are
//! PKCS#8 PEM (`PRIVATE KEY`), the service-account public key SPKI PEM (`PUBLIC KEY`):
//! kube-apiserver v1.20 reads both for its TLS and service-account flags.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::lab::{CONTROL_IP, Lab};
use crate::{Error, write_file};

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

/// The apiserver certificate's IP addresses besides [`CONTROL_IP`] (the address clients
/// dial): the loopback and the first address of the service range (what in-cluster clients
/// use).
pub const APISERVER_IPS: &[Ipv4Addr] = &[Ipv4Addr::LOCALHOST, Ipv4Addr::new(10, 96, 0, 1)];

/// The apiserver certificate's DNS names: the usual in-cluster ones.
pub const APISERVER_DNS_NAMES: &[&str] = &[
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "localhost",
];

/// How long the CA and the apiserver certificate are valid: ten years, as long as a lab's
/// state folder could plausibly live.
const VALIDITY: time::Duration = time::Duration::days(3650);

/// Makes the CA, the apiserver certificate and the service-account key pair, unless all are
/// already there. Returns whether anything was made.
pub fn ensure(lab: &Lab) -> Result<bool, Error> {
    let pki = Pki::of(lab);
    if pki.all().iter().all(|p| p.exists()) {
        return Ok(false);
    }
    crate::mkdir(&lab.pki_dir())?;
    let not_before = time::OffsetDateTime::now_utc();
    let not_after = not_before + VALIDITY;

    let ca_key = new_key("the lab CA's key")?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = common_name("tortie-lab-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(pki_error("signing the lab CA certificate"))?;
    let ca = Issuer::new(ca, ca_key);

    let apiserver_key = new_key("the apiserver's key")?;
    let mut apiserver = CertificateParams::default();
    apiserver.distinguished_name = common_name("kube-apiserver");
    apiserver.is_ca = IsCa::ExplicitNoCa;
    apiserver.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    apiserver.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    apiserver.subject_alt_names = apiserver_sans()?;
    apiserver.use_authority_key_identifier_extension = true;
    apiserver.not_before = not_before;
    apiserver.not_after = not_after;
    let apiserver_cert = apiserver
        .signed_by(&apiserver_key, &ca)
        .map_err(pki_error("signing the apiserver certificate"))?;

    let sa_key = new_key("the service-account signing key")?;

    write_file(&pki.ca_key, ca.key().serialize_pem().as_bytes())?;
    write_file(&pki.ca_cert, ca_cert.pem().as_bytes())?;
    write_file(&pki.apiserver_key, apiserver_key.serialize_pem().as_bytes())?;
    write_file(&pki.apiserver_cert, apiserver_cert.pem().as_bytes())?;
    write_file(&pki.sa_key, sa_key.serialize_pem().as_bytes())?;
    write_file(&pki.sa_pub, sa_key.public_key_pem().as_bytes())?;
    Ok(true)
}

/// A fresh ECDSA P-256 key pair.
fn new_key(what: &str) -> Result<KeyPair, Error> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(pki_error(format!("generating {what}")))
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// [`CONTROL_IP`], [`APISERVER_IPS`] and [`APISERVER_DNS_NAMES`], in that order.
fn apiserver_sans() -> Result<Vec<SanType>, Error> {
    let ips = std::iter::once(CONTROL_IP)
        .chain(APISERVER_IPS.iter().copied())
        .map(|ip| Ok(SanType::IpAddress(IpAddr::V4(ip))));
    let names = APISERVER_DNS_NAMES.iter().map(|name| {
        let dns = (*name)
            .try_into()
            .map_err(pki_error(format!("apiserver DNS name {name:?}")))?;
        Ok(SanType::DnsName(dns))
    });
    ips.chain(names).collect()
}

fn pki_error(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> Error {
    let what = what.into();
    move |source| Error::Pki { what, source }
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
    fn ensure_makes_a_ca_signed_server_cert_with_the_apiserver_sans() {
        use x509_parser::extensions::GeneralName;
        use x509_parser::pem::parse_x509_pem;

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let lab = Lab::new(dir.path(), "");
        assert!(ensure(&lab).unwrap_or_else(|e| panic!("{e}")));
        assert!(
            !ensure(&lab).unwrap_or_else(|e| panic!("{e}")),
            "second run reuses the files"
        );
        let pki = Pki::of(&lab);
        let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));

        let ca_pem = read(&pki.ca_cert);
        let (_, ca_pem) = parse_x509_pem(&ca_pem).unwrap_or_else(|e| panic!("ca.crt: {e}"));
        let ca = ca_pem
            .parse_x509()
            .unwrap_or_else(|e| panic!("ca.crt: {e}"));
        assert_eq!(ca.subject().to_string(), "CN=tortie-lab-ca");
        assert!(ca.is_ca());
        ca.verify_signature(None)
            .unwrap_or_else(|e| panic!("ca.crt is not self-signed: {e}"));

        let server_pem = read(&pki.apiserver_cert);
        let (_, server_pem) =
            parse_x509_pem(&server_pem).unwrap_or_else(|e| panic!("apiserver.crt: {e}"));
        let server = server_pem
            .parse_x509()
            .unwrap_or_else(|e| panic!("apiserver.crt: {e}"));
        assert_eq!(server.subject().to_string(), "CN=kube-apiserver");
        assert_eq!(server.issuer(), ca.subject());
        assert!(!server.is_ca());
        server
            .verify_signature(Some(ca.public_key()))
            .unwrap_or_else(|e| panic!("apiserver.crt is not signed by ca.crt: {e}"));
        let validity = server.validity().time_to_expiration();
        assert!(
            validity.is_some_and(|d| d > time::Duration::days(3649)),
            "{validity:?}"
        );
        let eku = server
            .extended_key_usage()
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|e| e.value.server_auth);
        assert_eq!(eku, Some(true));
        let sans = server
            .subject_alternative_name()
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|e| e.value.general_names.clone())
            .unwrap_or_default();
        let ips: Vec<&[u8]> = sans
            .iter()
            .filter_map(|n| match n {
                GeneralName::IPAddress(ip) => Some(*ip),
                _ => None,
            })
            .collect();
        let names: Vec<&str> = sans
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(name) => Some(*name),
                _ => None,
            })
            .collect();
        assert_eq!(
            ips,
            [&CONTROL_IP.octets()[..], &[127, 0, 0, 1], &[10, 96, 0, 1]]
        );
        assert_eq!(names, APISERVER_DNS_NAMES);

        // What kube-apiserver parses: PKCS#8 private keys, an SPKI public key that belongs
        // to the signing key.
        let text = |p: &Path| {
            String::from_utf8(read(p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        for key in [&pki.ca_key, &pki.apiserver_key, &pki.sa_key] {
            assert!(
                text(key).starts_with("-----BEGIN PRIVATE KEY-----"),
                "{}",
                key.display()
            );
        }
        let sa = KeyPair::from_pem(&text(&pki.sa_key)).unwrap_or_else(|e| panic!("sa.key: {e}"));
        assert_eq!(sa.public_key_pem(), text(&pki.sa_pub));
    }
}
