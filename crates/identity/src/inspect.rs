//! A readable account of a certificate chain, for operators (`oxmesh ca inspect`),
//! in the spirit of `istioctl proxy-config secret`.

use std::fmt::Write;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::certificate::{CertificateError, CertificateInfo};

/// One paragraph per certificate, saying which other certificate of the file signed
/// it, if any.
pub fn describe(certs: &[CertificateDer<'_>], now: SystemTime) -> Result<String, CertificateError> {
    let infos = certs
        .iter()
        .map(|c| CertificateInfo::parse(c.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = String::new();
    for (i, info) in infos.iter().enumerate() {
        let _ = writeln!(out, "Certificate {} of {}", i + 1, infos.len());
        let _ = writeln!(
            out,
            "  Subject:   {}",
            if info.subject.is_empty() {
                "(empty)"
            } else {
                &info.subject
            }
        );
        let _ = writeln!(out, "  Issuer:    {}", info.issuer);
        let mut sans: Vec<String> = info.uri_sans.iter().map(|u| format!("URI:{u}")).collect();
        sans.extend(info.dns_sans.iter().map(|d| format!("DNS:{d}")));
        let _ = writeln!(
            out,
            "  SANs:      {}",
            if sans.is_empty() {
                "(none)".to_owned()
            } else {
                sans.join(", ")
            }
        );
        let _ = writeln!(
            out,
            "  Valid:     {} to {} ({})",
            rfc3339(info.not_before),
            rfc3339(info.not_after),
            remaining(info.not_after, now)
        );
        let _ = writeln!(out, "  Key:       {}", info.key);
        let _ = writeln!(
            out,
            "  CA:        {}",
            if info.is_ca { "yes" } else { "no" }
        );
        let _ = writeln!(out, "  Serial:    {}", info.serial);
        let _ = writeln!(out, "  Signed by: {}", signer(certs, i));
    }
    Ok(out)
}

/// Which certificate of the list verifies the signature of certificate `i`.
fn signer(certs: &[CertificateDer<'_>], i: usize) -> String {
    fn parse<'a>(der: &'a CertificateDer<'_>) -> Option<X509Certificate<'a>> {
        X509Certificate::from_der(der.as_ref()).map(|(_, c)| c).ok()
    }
    let Some(cert) = parse(&certs[i]) else {
        return "unknown".to_owned();
    };
    for (j, candidate) in certs.iter().enumerate() {
        if let Some(issuer) = parse(candidate)
            && cert.verify_signature(Some(issuer.public_key())).is_ok()
        {
            return if i == j {
                "itself (a root)".to_owned()
            } else {
                format!("certificate {}", j + 1)
            };
        }
    }
    "a certificate not in this file".to_owned()
}

fn rfc3339(t: SystemTime) -> String {
    let time = time::OffsetDateTime::from(t);
    time.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{time}"))
}

fn remaining(not_after: SystemTime, now: SystemTime) -> String {
    match not_after.duration_since(now) {
        Ok(left) => format!("expires in {}", human(left.as_secs())),
        Err(past) => format!("EXPIRED {} ago", human(past.duration().as_secs())),
    }
}

fn human(seconds: u64) -> String {
    let (days, hours, minutes) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
    );
    match (days, hours) {
        (0, 0) => format!("{minutes}m"),
        (0, _) => format!("{hours}h{minutes}m"),
        _ => format!("{days}d{hours}h"),
    }
}
