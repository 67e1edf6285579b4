//! Just enough DER to read two things of an X.509 certificate (RFC 5280 §4.1): whether its
//! basicConstraints say it is a CA, and its subject, for the message that names it. It
//! decides no trust (rustls does, with webpki): it only stops start-up when a leaf is given
//! as `--tls-client-ca`. Anything it cannot follow is "unreadable", never a panic.

/// One DER element: its tag, its contents, and what follows it.
struct Element<'a> {
    tag: u8,
    contents: &'a [u8],
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
/// `[0] EXPLICIT Version` and `[3] EXPLICIT Extensions` of a TBSCertificate.
const VERSION: u8 = 0xA0;
const EXTENSIONS: u8 = 0xA3;
/// 2.5.29.19, id-ce-basicConstraints.
const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1D, 0x13];

/// Reads the element at the start of `input`: `None` for a truncated one, a length over
/// 4 bytes or a multi-byte tag (none of which a certificate's outline holds).
fn element(input: &[u8]) -> Option<(Element<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |len, byte| len << 8 | usize::from(*byte));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (Element { tag, contents: &rest[..len] }, &rest[len..]))
}

/// The elements of a constructed element's contents, in order; stops at the first it
/// cannot read (`items` then says so).
fn items(mut input: &[u8]) -> impl Iterator<Item = Option<Element<'_>>> {
    std::iter::from_fn(move || {
        if input.is_empty() {
            return None;
        }
        match element(input) {
            Some((element, rest)) => {
                input = rest;
                Some(Some(element))
            }
            None => {
                input = &[];
                Some(None)
            }
        }
    })
}

fn expect(element: Option<Element<'_>>, tag: u8) -> Result<&[u8], Unreadable> {
    match element {
        Some(element) if element.tag == tag => Ok(element.contents),
        _ => Err(Unreadable),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Unreadable;

/// What [`outline`] reads of a certificate.
#[derive(Debug, PartialEq, Eq)]
pub struct Outline {
    /// The subject, `CN=…, O=…` (RFC 4514's short names where there is one).
    pub subject: String,
    /// basicConstraints `cA` (false when the extension is absent).
    pub ca: bool,
}

/// The subject and CA flag of a DER certificate.
pub fn outline(cert: &[u8]) -> Result<Outline, Unreadable> {
    let (certificate, _) = element(cert).ok_or(Unreadable)?;
    let certificate = (certificate.tag == SEQUENCE).then_some(certificate.contents).ok_or(Unreadable)?;
    let tbs = expect(items(certificate).next().flatten(), SEQUENCE)?;
    let mut fields = items(tbs).peekable();
    if matches!(fields.peek(), Some(Some(Element { tag: VERSION, .. }))) {
        fields.next();
    }
    // serialNumber, signature, issuer, validity; then subject.
    for _ in 0..4 {
        fields.next().flatten().ok_or(Unreadable)?;
    }
    let subject = name(expect(fields.next().flatten(), SEQUENCE)?)?;
    let mut ca = false;
    for field in fields {
        let field = field.ok_or(Unreadable)?;
        if field.tag == EXTENSIONS {
            let extensions = expect(items(field.contents).next().flatten(), SEQUENCE)?;
            for extension in items(extensions) {
                if let Some(value) = basic_constraints(expect(extension, SEQUENCE)?)? {
                    ca = is_ca(value)?;
                }
            }
        }
    }
    Ok(Outline { subject, ca })
}

/// The extension's value when it is basicConstraints.
fn basic_constraints(extension: &[u8]) -> Result<Option<&[u8]>, Unreadable> {
    let mut parts = items(extension);
    if expect(parts.next().flatten(), OID)? != BASIC_CONSTRAINTS {
        return Ok(None);
    }
    let mut next = parts.next().flatten().ok_or(Unreadable)?;
    if next.tag == BOOLEAN {
        next = parts.next().flatten().ok_or(Unreadable)?; // critical
    }
    expect(Some(next), OCTET_STRING).map(Some)
}

/// `BasicConstraints ::= SEQUENCE { cA BOOLEAN DEFAULT FALSE, pathLenConstraint INTEGER OPTIONAL }`
fn is_ca(value: &[u8]) -> Result<bool, Unreadable> {
    let (constraints, _) = element(value).ok_or(Unreadable)?;
    if constraints.tag != SEQUENCE {
        return Err(Unreadable);
    }
    Ok(match items(constraints.contents).next() {
        Some(Some(Element { tag: BOOLEAN, contents })) => contents.iter().any(|b| *b != 0),
        Some(None) => return Err(Unreadable),
        _ => false,
    })
}

/// A Name (a sequence of sets of type-value pairs) as `CN=…, O=…`.
fn name(rdns: &[u8]) -> Result<String, Unreadable> {
    let mut parts = Vec::new();
    for rdn in items(rdns) {
        for pair in items(expect(rdn, SET)?) {
            let mut pair = items(expect(pair, SEQUENCE)?);
            let kind = expect(pair.next().flatten(), OID)?;
            let value = pair.next().flatten().ok_or(Unreadable)?;
            parts.push(format!("{}={}", attribute(kind), text(&value)));
        }
    }
    Ok(parts.join(", "))
}

fn attribute(oid: &[u8]) -> String {
    let short = match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x0A] => "O",
        [0x55, 0x04, 0x0B] => "OU",
        _ => return dotted(oid),
    };
    short.to_owned()
}

/// An OID's dotted form (`2.5.4.97`).
fn dotted(oid: &[u8]) -> String {
    let mut arcs = Vec::new();
    let mut arc: u64 = 0;
    for byte in oid {
        arc = arc.saturating_mul(128) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (arc / 40).min(2);
                arcs.push(first);
                arcs.push(arc - first * 40);
            } else {
                arcs.push(arc);
            }
            arc = 0;
        }
    }
    arcs.iter().map(u64::to_string).collect::<Vec<_>>().join(".")
}

/// A directory string as text (UTF-8, printable, IA5, teletex as Latin-1, BMP as UTF-16);
/// anything else as `#` and its hex, as RFC 4514 writes it.
fn text(value: &Element<'_>) -> String {
    match value.tag {
        0x0C | 0x13 | 0x16 => String::from_utf8_lossy(value.contents).into_owned(),
        0x14 => value.contents.iter().map(|b| char::from(*b)).collect(),
        0x1E => {
            let units = value.contents.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units).map(|c| c.unwrap_or('\u{fffd}')).collect()
        }
        _ => format!("#{}", value.contents.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    fn certificate(ca: IsCa, cn: &str) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["edge.example".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.distinguished_name.push(DnType::OrganizationName, "keygate tests");
        params.is_ca = ca;
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    #[test]
    fn a_ca_and_a_leaf_are_told_apart_with_their_subjects() {
        let ca = outline(&certificate(IsCa::Ca(BasicConstraints::Unconstrained), "server CA")).unwrap();
        assert!(ca.ca);
        assert_eq!(ca.subject, "CN=server CA, O=keygate tests");
        let constrained = outline(&certificate(IsCa::Ca(BasicConstraints::Constrained(0)), "ca0")).unwrap();
        assert!(constrained.ca);
        let leaf = outline(&certificate(IsCa::NoCa, "edge-1.example")).unwrap();
        assert!(!leaf.ca);
        assert_eq!(leaf.subject, "CN=edge-1.example, O=keygate tests");
        let says_not = outline(&certificate(IsCa::ExplicitNoCa, "edge-2")).unwrap();
        assert!(!says_not.ca, "basicConstraints present with cA false");
    }

    #[test]
    fn every_truncation_and_corruption_is_unreadable_or_read_never_a_panic() {
        let cert = certificate(IsCa::Ca(BasicConstraints::Unconstrained), "server CA");
        for end in 0..cert.len() {
            assert_eq!(outline(&cert[..end]), Err(Unreadable), "a certificate cut at {end}");
        }
        for at in 0..cert.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bent = cert.clone();
                bent[at] ^= flip;
                let _ = outline(&bent);
            }
        }
        assert_eq!(outline(b"not a certificate"), Err(Unreadable));
        assert_eq!(outline(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), Err(Unreadable));
    }

    #[test]
    fn attribute_types_without_a_short_name_are_dotted() {
        assert_eq!(dotted(&[0x55, 0x04, 0x61]), "2.5.4.97");
        assert_eq!(dotted(&[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x01]), "1.2.840.113549.1.9.1");
    }
}
