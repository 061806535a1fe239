//! Where callbacks may go: the operator's allow-list (`--callback-allow`).
//!
//! A callback makes the host send a request to an address a client chose,
//! from inside the operator's network. Without a rule saying otherwise,
//! only public addresses are reached: loopback, private, link-local,
//! shared (CGNAT), unspecified, broadcast and multicast ranges are refused,
//! for the address a URL names and for every address its host name
//! resolves to, both when the job is submitted (a 422 naming the rule) and
//! again when each request is sent (the client resolves through
//! [`CallbackPolicy::resolver`], so a name that resolves elsewhere later is
//! refused too).
//!
//! Rules, each a `--callback-allow` value:
//! - `public`: any public address (the default, when no rule is given);
//! - a CIDR (`10.1.0.0/16`, `fd00::/8`) or one address: those addresses;
//! - a host name (`hooks.example.com`) or a suffix (`*.example.com`): URLs
//!   naming that host, whatever it resolves to (the operator vouches for it).
//!
//! Once any rule is given, only what the rules name is allowed: an operator
//! who wants public addresses and one private receiver says `public` too.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

/// Longest callback URL.
pub const MAX_URL_BYTES: usize = 2048;

/// How long the check at submission waits for a host name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// One `--callback-allow` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowRule {
    /// Any public address.
    Public,
    /// The addresses of a network.
    Net { addr: IpAddr, prefix: u8 },
    /// One host name, or (`*.` before it) every name under it.
    Host { name: String, suffix: bool },
}

impl FromStr for AllowRule {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.eq_ignore_ascii_case("public") {
            return Ok(AllowRule::Public);
        }
        if let Some((addr, prefix)) = raw.split_once('/') {
            let addr: IpAddr =
                addr.parse().map_err(|_| format!("'{raw}' is not a CIDR: '{addr}' is not an IP address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{raw}' is not a CIDR: the prefix must be 0 to {max}"))?;
            return Ok(AllowRule::Net { addr, prefix });
        }
        if let Ok(addr) = raw.parse::<IpAddr>() {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            return Ok(AllowRule::Net { addr, prefix });
        }
        let (name, suffix) = match raw.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (raw, false),
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !valid {
            return Err(format!(
                "'{raw}' is not a rule: give 'public', a CIDR (10.0.0.0/8), an IP address, a host name or *.domain"
            ));
        }
        Ok(AllowRule::Host { name: name.to_ascii_lowercase(), suffix })
    }
}

impl std::fmt::Display for AllowRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllowRule::Public => f.write_str("public"),
            AllowRule::Net { addr, prefix } => write!(f, "{addr}/{prefix}"),
            AllowRule::Host { name, suffix: true } => write!(f, "*.{name}"),
            AllowRule::Host { name, suffix: false } => f.write_str(name),
        }
    }
}

impl AllowRule {
    fn allows_addr(&self, ip: IpAddr) -> bool {
        match self {
            AllowRule::Public => range_of(ip).is_none(),
            AllowRule::Net { addr, prefix } => in_net(ip, *addr, *prefix),
            AllowRule::Host { .. } => false,
        }
    }

    fn allows_name(&self, host: &str) -> bool {
        match self {
            AllowRule::Host { name, suffix: false } => host == name,
            AllowRule::Host { name, suffix: true } => {
                host.len() > name.len() + 1
                    && host.ends_with(name.as_str())
                    && host[..host.len() - name.len()].ends_with('.')
            }
            _ => false,
        }
    }
}

/// The address an IPv4-mapped or IPv4-compatible IPv6 address stands for,
/// so `::ffff:127.0.0.1` is judged as the loopback it reaches.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The non-public range `ip` is in, named, or `None` for a public address.
pub fn range_of(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if a == 100 && (64..128).contains(&b) {
                Some("shared (CGNAT)")
            } else if v4.is_unspecified() || a == 0 {
                Some("unspecified")
            } else if v4.is_broadcast() || v4.is_multicast() || a >= 240 {
                Some("broadcast, multicast or reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("broadcast, multicast or reserved")
            } else {
                None
            }
        }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let bits = |ip: IpAddr| -> (u128, u32) {
        match ip {
            IpAddr::V4(v4) => (u32::from(v4) as u128, 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    };
    let (ip, net) = (canonical(ip), canonical(net));
    if ip.is_ipv4() != net.is_ipv4() {
        return false;
    }
    let ((ip, width), (net, _)) = (bits(ip), bits(net));
    let host_bits = width - prefix as u32;
    if host_bits >= width {
        return true;
    }
    (ip >> host_bits) == (net >> host_bits)
}

/// Why a callback destination is refused: the message names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The operator's rules for callback destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackPolicy {
    rules: Arc<Vec<AllowRule>>,
}

impl Default for CallbackPolicy {
    fn default() -> Self {
        CallbackPolicy::new(Vec::new())
    }
}

impl CallbackPolicy {
    /// The policy of `rules`; none is `public` alone.
    pub fn new(rules: Vec<AllowRule>) -> Self {
        let rules = if rules.is_empty() { vec![AllowRule::Public] } else { rules };
        CallbackPolicy { rules: Arc::new(rules) }
    }

    pub fn rules(&self) -> &[AllowRule] {
        &self.rules
    }

    fn listed(&self) -> String {
        self.rules.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
    }

    /// Whether `ip` may be reached; if not, why.
    pub fn check_addr(&self, ip: IpAddr) -> Result<(), Refused> {
        if self.rules.iter().any(|r| r.allows_addr(ip)) {
            return Ok(());
        }
        let what = match range_of(ip) {
            Some(range) => format!("{ip} is a {range} address"),
            None => format!("{ip} is a public address"),
        };
        Err(Refused(format!(
            "callback.url: {what}, which the host's callback rules (--callback-allow: {}) do not allow",
            self.listed()
        )))
    }

    fn names_host(&self, host: &str) -> bool {
        self.rules.iter().any(|r| r.allows_name(host))
    }

    /// Parses and checks a callback URL as a submission gives it: http or
    /// https, no credentials, and a destination the rules allow (a host
    /// name is resolved, and every address it has must be allowed).
    pub async fn check(&self, raw: &str) -> Result<Url, Refused> {
        let url = parse(raw)?;
        let host = url.host().ok_or_else(|| Refused("callback.url has no host".into()))?;
        match host {
            url::Host::Ipv4(v4) => self.check_addr(IpAddr::V4(v4))?,
            url::Host::Ipv6(v6) => self.check_addr(IpAddr::V6(v6))?,
            url::Host::Domain(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if !self.names_host(&name) {
                    let port = url.port_or_known_default().unwrap_or(443);
                    let addrs = resolve(&name, port).await?;
                    for addr in addrs {
                        self.check_addr(addr.ip())?;
                    }
                }
            }
        }
        Ok(url)
    }

    /// A resolver for the delivering client that hands it only the
    /// addresses the rules allow.
    pub fn resolver(&self) -> Arc<Resolver> {
        Arc::new(Resolver { policy: self.clone() })
    }
}

/// A callback URL's syntax: absolute, http or https, no user or password,
/// at most [`MAX_URL_BYTES`].
pub fn parse(raw: &str) -> Result<Url, Refused> {
    if raw.len() > MAX_URL_BYTES {
        return Err(Refused(format!("callback.url has {} bytes; the cap is {MAX_URL_BYTES}", raw.len())));
    }
    let url = Url::parse(raw).map_err(|e| Refused(format!("callback.url is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refused(format!("callback.url must be http or https, not {}", url.scheme())));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refused("callback.url must not carry a user or password".into()));
    }
    if url.host().is_none() {
        return Err(Refused("callback.url has no host".into()));
    }
    Ok(url)
}

async fn resolve(name: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
    let looked_up = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port)))
        .await
        .map_err(|_| Refused(format!("callback.url: the host {name} did not resolve within {RESOLVE_TIMEOUT:?}")))?;
    let addrs: Vec<SocketAddr> =
        looked_up.map_err(|e| Refused(format!("callback.url: the host {name} does not resolve: {e}")))?.collect();
    if addrs.is_empty() {
        return Err(Refused(format!("callback.url: the host {name} has no address")));
    }
    Ok(addrs)
}

/// Resolves host names for the delivering client, keeping only the
/// addresses the rules allow.
pub struct Resolver {
    policy: CallbackPolicy,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
            // The port is the URL's; the client puts it back on every
            // address it is given.
            // A name that does not resolve now may later: not a refusal.
            let addrs = resolve(&host, 0).await.map_err(|e| std::io::Error::other(e.0))?;
            let vouched = policy.names_host(&host);
            let mut refused = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| vouched || policy.check_addr(a.ip()).map_err(|e| refused = Some(e)).is_ok())
                .collect();
            if allowed.is_empty() {
                let why = refused.unwrap_or_else(|| Refused(format!("the host {host} has no allowed address")));
                return Err(Box::new(why) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn policy(rules: &[&str]) -> CallbackPolicy {
        CallbackPolicy::new(rules.iter().map(|r| r.parse().unwrap()).collect())
    }

    #[test]
    fn by_default_only_public_addresses_are_allowed() {
        let p = CallbackPolicy::default();
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            let err = p.check_addr(refused.parse().unwrap()).unwrap_err();
            assert!(err.0.contains("--callback-allow: public"), "{refused}: {err}");
        }
        for allowed in ["93.184.215.14", "1.1.1.1", "2606:4700::1111", "172.32.0.1", "100.128.0.1"] {
            p.check_addr(allowed.parse().unwrap()).unwrap_or_else(|e| panic!("{allowed}: {e}"));
        }
        let err = p.check_addr("169.254.169.254".parse().unwrap()).unwrap_err();
        assert!(err.0.contains("link-local"), "the range is named: {err}");
    }

    #[test]
    fn rules_allow_what_they_name_and_nothing_else() {
        let p = policy(&["127.0.0.0/8", "*.hooks.example.com", "fd00::/8"]);
        p.check_addr("127.0.0.1".parse().unwrap()).unwrap();
        p.check_addr("fd12::1".parse().unwrap()).unwrap();
        p.check_addr("::ffff:127.0.0.2".parse().unwrap()).unwrap();
        assert!(p.check_addr("10.0.0.1".parse().unwrap()).is_err());
        assert!(p.check_addr("1.1.1.1".parse().unwrap()).is_err(), "public is not implied once rules are given");
        assert!(p.names_host("a.hooks.example.com"));
        assert!(!p.names_host("hooks.example.com"), "a suffix rule names what is under it");
        assert!(!p.names_host("evilhooks.example.com"));
        let p = policy(&["public", "10.1.2.3"]);
        p.check_addr("10.1.2.3".parse().unwrap()).unwrap();
        assert!(p.check_addr("10.1.2.4".parse().unwrap()).is_err());
        p.check_addr("8.8.8.8".parse().unwrap()).unwrap();
        assert!(policy(&["0.0.0.0/0"]).check_addr(IpAddr::V4(Ipv4Addr::UNSPECIFIED)).is_ok());
    }

    #[test]
    fn bad_rules_are_refused_by_name() {
        for bad in ["10.0.0.0/33", "::/129", "10.0.0/8", "exa mple.com", "-bad.com", "*.", ""] {
            let err = bad.parse::<AllowRule>().unwrap_err();
            assert!(err.contains(bad.trim()), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn urls_are_checked_with_the_rules() {
        let p = CallbackPolicy::default();
        let refused = p.check("http://127.0.0.1:9/hook").await.unwrap_err();
        assert!(refused.0.contains("127.0.0.1 is a loopback address"), "{refused}");
        let refused = p.check("http://localhost:9/hook").await.unwrap_err();
        assert!(refused.0.contains("loopback"), "a name is judged by its addresses: {refused}");
        let refused = p.check("http://[::ffff:169.254.169.254]/latest").await.unwrap_err();
        assert!(refused.0.contains("link-local"), "{refused}");
        for bad in ["ftp://1.1.1.1/x", "http://user:pw@1.1.1.1/", "not a url", "http:///x"] {
            assert!(p.check(bad).await.is_err(), "{bad}");
        }
        let long = format!("https://1.1.1.1/{}", "a".repeat(MAX_URL_BYTES));
        assert!(p.check(&long).await.unwrap_err().0.contains("cap"));
        p.check("https://1.1.1.1/hook").await.unwrap();
        let vouched = policy(&["localhost"]);
        vouched.check("http://localhost:9/hook").await.unwrap();
    }
}
