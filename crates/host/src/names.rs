//! Validated names. Every path, unit name and command line the engine builds starts from one of
//! these, so nothing a user typed reaches a unit file or a shell without passing through here.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A DNS-label-like name: lower-case letters, digits, '-' and '.', starting and ending with a
/// letter or digit, at most 63 characters. Safe as a path component, a systemd instance name and
/// an etcd member name (no escaping needed anywhere, and no "..").
fn check_label(field: &'static str, s: &str) -> Result<()> {
    let fix = "use 1-63 characters from a-z, 0-9, '-' and '.', starting and ending with a letter or digit";
    let bytes = s.as_bytes();
    let ok_char = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.';
    let ends_ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if s.is_empty() || s.len() > 63 {
        return Err(Error::invalid(field, format!("{s:?} has {} characters", s.len()), fix));
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii() || !ok_char(*c as u8)) {
        return Err(Error::invalid(field, format!("{s:?} contains {c:?}"), fix));
    }
    if !ends_ok(bytes[0]) || !ends_ok(bytes[bytes.len() - 1]) || s.contains("..") {
        return Err(Error::invalid(field, format!("{s:?} is not a valid name"), fix));
    }
    Ok(())
}

macro_rules! label_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self> {
                let s = s.into();
                check_label($field, &s)?;
                Ok(Self(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::new(s)
            }
        }
        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }
        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

label_type!(
    /// The systemd instance (`runc-etcd@<instance>.service`) and the directory
    /// `/var/lib/runc-etcd/<instance>/`. The operator uses `<namespace>.<cluster>`.
    InstanceName,
    "--cluster"
);
label_type!(
    /// The etcd member name (`name:` in etcd's config).
    MemberName,
    "--name"
);

/// An address etcd can listen on and advertise: a concrete unicast address of this host.
pub fn check_member_ip(ip: IpAddr) -> Result<IpAddr> {
    let fix = "pass an address assigned to one of this host's interfaces, e.g. --ip 10.0.0.11";
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(Error::invalid(
            "--ip",
            format!("{ip} cannot be advertised to peers"),
            fix,
        ));
    }
    Ok(ip)
}

pub fn parse_ip(s: &str) -> Result<IpAddr> {
    let ip: IpAddr = s.trim().parse().map_err(|_| {
        Error::invalid(
            "--ip",
            format!("{s:?} is not an IPv4 or IPv6 address"),
            "pass an address such as 10.0.0.11",
        )
    })?;
    check_member_ip(ip)
}

/// `http://IP:PORT`, with brackets around IPv6 addresses.
pub fn url(scheme: &str, ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{scheme}://{v4}:{port}"),
        IpAddr::V6(v6) => format!("{scheme}://[{v6}]:{port}"),
    }
}

/// An etcd `initial-cluster-token`: 1–128 letters, digits, `.`, `_` or `-` (it goes into the
/// member's config file).
pub fn check_token(field: &'static str, token: &str) -> Result<()> {
    let ok =
        (1..=128).contains(&token.len()) && token.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
    if ok {
        return Ok(());
    }
    Err(Error::invalid(
        field,
        format!("{token:?} is not a cluster token"),
        "use 1-128 letters, digits, '.', '_' or '-' (the controller sets it from the EtcdCluster's UID)",
    ))
}

/// Client and peer ports must be distinct and non-zero.
pub fn check_ports(client: u16, peer: u16) -> Result<()> {
    if client == 0 || peer == 0 {
        return Err(Error::invalid(
            "--client-port/--peer-port",
            "port 0 is not a port etcd can advertise",
            "use 1-65535",
        ));
    }
    if client == peer {
        return Err(Error::invalid(
            "--client-port/--peer-port",
            format!("both are {client}"),
            "give etcd's client and peer listeners different ports (defaults 2379 and 2380)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_accept_dns_like_names() {
        for ok in ["a", "etcd", "kube-system.main", "h1", "a-b.c-d"] {
            InstanceName::new(ok).unwrap();
        }
    }

    #[test]
    fn labels_refuse_what_could_escape_a_path_or_unit() {
        for bad in [
            "",
            "-a",
            "a-",
            ".a",
            "a..b",
            "A",
            "a/b",
            "a b",
            "a\nb",
            "../x",
            "a%i",
            "ä",
            &"a".repeat(64),
        ] {
            let e = MemberName::new(bad).unwrap_err();
            assert!(e.to_string().contains("--name"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn ips_and_urls() {
        assert!(parse_ip("10.0.0.300").unwrap_err().to_string().contains("--ip"));
        assert!(parse_ip("0.0.0.0").is_err());
        assert_eq!(url("http", parse_ip("10.0.0.1").unwrap(), 2379), "http://10.0.0.1:2379");
        assert_eq!(url("http", parse_ip("fd00::1").unwrap(), 2380), "http://[fd00::1]:2380");
    }

    #[test]
    fn ports_must_differ() {
        assert!(
            check_ports(2379, 2379)
                .unwrap_err()
                .to_string()
                .contains("different ports")
        );
        check_ports(2379, 2380).unwrap();
    }
}
