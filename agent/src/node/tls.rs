//! TLS material for redis: the operator's files, or (mode "generate", for development and
//! tests) a CA made once and a node certificate re-issued at every start, so its IP SANs
//! always match the node's current addresses.

use crate::config::TlsConfig;
use crate::node::layout::Layout;
use crate::node::secrets::{ensure_dir, write_file_atomic};
use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct TlsMaterial {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Resolve (and in generate mode, create) the TLS files redis will use.
pub fn prepare(
    tls: &TlsConfig,
    layout: &Layout,
    node_name: &str,
    addrs: &[IpAddr],
) -> Result<TlsMaterial> {
    match tls {
        TlsConfig::Files {
            cert_file,
            key_file,
            ca_file,
        } => Ok(TlsMaterial {
            cert: cert_file.clone(),
            key: key_file.clone(),
            ca: ca_file.clone(),
        }),
        TlsConfig::Generate {
            ca_file,
            ca_key_file,
        } => {
            let dir = layout.tls_dir();
            ensure_dir(&dir, 0o700)?;
            let ca = ca_file.clone().unwrap_or_else(|| dir.join("ca.crt"));
            let ca_key = ca_key_file.clone().unwrap_or_else(|| dir.join("ca.key"));
            let issuer = load_or_create_ca(&ca, &ca_key)?;
            let material = TlsMaterial {
                cert: dir.join("node.crt"),
                key: dir.join("node.key"),
                ca,
            };
            issue_node_cert(&issuer, node_name, addrs, &material)?;
            Ok(material)
        }
    }
}

fn load_or_create_ca(cert_path: &Path, key_path: &Path) -> Result<Issuer<'static, KeyPair>> {
    if let Some(parent) = cert_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Several agents on one machine may share a development CA: create it under a lock.
    let lock_path = cert_path.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    // SAFETY: flock on a descriptor we own; released when `lock` is dropped.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    if cert_path.exists() && key_path.exists() {
        let cert_pem = std::fs::read_to_string(cert_path)
            .with_context(|| format!("cannot read CA certificate {}", cert_path.display()))?;
        let key_pem = std::fs::read_to_string(key_path)
            .with_context(|| format!("cannot read CA key {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
        return Issuer::from_ca_cert_pem(&cert_pem, key)
            .with_context(|| format!("{} is not a usable CA certificate", cert_path.display()));
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "redis-steward development CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2046, 1, 1);
    let cert = params.self_signed(&key)?;
    write_file_atomic(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file_atomic(cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(Issuer::new(params, key))
}

/// Subject alternative names for a node: its name, localhost, loopback, and every address
/// clients may be handed (the Sentinel port gives out IPs, and clients verify them).
pub fn node_sans(node_name: &str, addrs: &[IpAddr]) -> Vec<SanType> {
    let mut ips: BTreeSet<IpAddr> = addrs
        .iter()
        .copied()
        .filter(|a| !a.is_unspecified())
        .collect();
    ips.insert("127.0.0.1".parse().unwrap());
    ips.insert("::1".parse().unwrap());
    let mut sans = vec![
        SanType::DnsName(node_name.try_into().expect("validated node name")),
        SanType::DnsName("localhost".try_into().expect("static name")),
    ];
    sans.extend(ips.into_iter().map(SanType::IpAddress));
    sans
}

fn issue_node_cert(
    issuer: &Issuer<'static, KeyPair>,
    node_name: &str,
    addrs: &[IpAddr],
    out: &TlsMaterial,
) -> Result<()> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = node_sans(node_name, addrs);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_name);
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Replication is TLS too: a replica presents this certificate as a client.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2046, 1, 1);
    let cert = params.signed_by(&key, issuer)?;
    write_file_atomic(&out.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_file_atomic(&out.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

/// Every IP address configured on this host's interfaces (for SANs when redis binds 0.0.0.0).
pub fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free with freeifaddrs.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return out;
        }
        let mut cur = ifap;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() {
                match (*addr).sa_family as i32 {
                    libc::AF_INET => {
                        let sin = &*(addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_material_is_reused_ca_and_fresh_node_cert() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(&dir.path().join("data"), &dir.path().join("state"));
        let cfg = TlsConfig::Generate {
            ca_file: None,
            ca_key_file: None,
        };
        let addrs = ["10.1.2.3".parse().unwrap()];
        let m1 = prepare(&cfg, &layout, "node-a", &addrs).unwrap();
        let ca1 = std::fs::read_to_string(&m1.ca).unwrap();
        let m2 = prepare(&cfg, &layout, "node-a", &addrs).unwrap();
        assert_eq!(
            ca1,
            std::fs::read_to_string(&m2.ca).unwrap(),
            "CA must be kept"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&m2.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn sans_cover_addresses_and_loopback() {
        let sans = node_sans(
            "node-a",
            &["0.0.0.0".parse().unwrap(), "10.9.0.2".parse().unwrap()],
        );
        let ips: Vec<String> = sans
            .iter()
            .filter_map(|s| match s {
                SanType::IpAddress(ip) => Some(ip.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(ips, vec!["10.9.0.2", "127.0.0.1", "::1"]);
    }

    #[test]
    fn local_addresses_include_loopback() {
        assert!(local_addresses().iter().any(|a| a.is_loopback()));
    }
}
