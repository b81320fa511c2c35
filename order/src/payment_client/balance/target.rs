//! The URLs of `ORDER_PAYMENT_URL` and the addresses they stand for. Parsing happens once, when the
//! client is made, so a URL that cannot work stops the service with the setting's name; resolving
//! happens again and again (the discovery loop), because the replicas behind a name come and go.

use std::net::{IpAddr, SocketAddr};

use tonic::transport::Uri;

use super::super::ClientConfigError;

/// One of the URLs of `ORDER_PAYMENT_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) scheme: String,
    /// A host name or an address, without the brackets of an IPv6 address.
    pub(super) host: String,
    pub(super) port: u16,
}

impl Target {
    pub(super) fn parse(url: &str) -> Result<Self, ClientConfigError> {
        let uri: Uri = url.parse()?;
        let bad = |why: &str| ClientConfigError::Target(format!("{url}: {why}"));
        let scheme = uri
            .scheme_str()
            .ok_or_else(|| bad("no scheme (http:// or https://)"))?;
        if scheme != "http" && scheme != "https" {
            return Err(bad("the scheme must be http or https"));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        Ok(Self {
            scheme: scheme.to_owned(),
            // `[::1]` is written with brackets in a URL, resolved without.
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
        })
    }

    /// The address, when the URL gives one rather than a host name to resolve.
    pub(super) fn literal(&self) -> Option<SocketAddr> {
        let ip = self.host.parse::<IpAddr>().ok()?;
        Some(SocketAddr::new(ip, self.port))
    }

    /// The addresses the target stands for now.
    pub(super) async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        if let Some(addr) = self.literal() {
            return Ok(vec![addr]);
        }
        Ok(tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect())
    }
}

/// The comma-separated URLs of `urls` (blanks around them and empty entries ignored): at least one,
/// every one usable.
pub(super) fn parse_list(urls: &str) -> Result<Vec<Target>, ClientConfigError> {
    let targets = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(Target::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if targets.is_empty() {
        return Err(ClientConfigError::Target("no URL given".into()));
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(scheme: &str, host: &str, port: u16) -> Target {
        Target {
            scheme: scheme.into(),
            host: host.into(),
            port,
        }
    }

    /// The reason of a refused URL, from a setting error of our own.
    fn refused(url: &str) -> String {
        match Target::parse(url) {
            Err(ClientConfigError::Target(why)) => why,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn the_port_is_the_urls_or_the_schemes_default() {
        assert_eq!(
            Target::parse("http://payment:50052").unwrap(),
            target("http", "payment", 50052)
        );
        assert_eq!(
            Target::parse("http://payment").unwrap(),
            target("http", "payment", 80)
        );
        assert_eq!(
            Target::parse("https://payment.internal").unwrap(),
            target("https", "payment.internal", 443)
        );
    }

    #[test]
    fn an_address_is_used_as_it_is_a_name_is_resolved() {
        let v4 = Target::parse("http://10.0.0.7:50052").unwrap();
        assert_eq!(v4.literal(), Some("10.0.0.7:50052".parse().unwrap()));
        let v6 = Target::parse("http://[::1]:50052").unwrap();
        assert_eq!(v6.host, "::1", "without the brackets");
        assert_eq!(v6.literal(), Some("[::1]:50052".parse().unwrap()));
        assert_eq!(
            Target::parse("http://payment:50052").unwrap().literal(),
            None
        );
    }

    #[test]
    fn urls_that_cannot_work_are_refused_with_the_reason() {
        assert!(
            refused("payment:50052").contains("no scheme"),
            "a bare host:port"
        );
        assert!(refused("/payment").contains("no scheme"));
        assert!(refused("ftp://payment:50052").contains("http or https"));
        assert!(
            refused("ftp://payment:50052").starts_with("ftp://payment:50052: "),
            "names the URL"
        );
        assert!(
            matches!(
                Target::parse("http://pay ment"),
                Err(ClientConfigError::Url(_))
            ),
            "not a URL at all"
        );
    }

    #[test]
    fn a_list_is_split_on_commas_and_needs_one_url() {
        assert_eq!(
            parse_list(" http://a:1 , ,https://b ,").unwrap(),
            [target("http", "a", 1), target("https", "b", 443)]
        );
        for empty in ["", " ", " , ,"] {
            assert!(
                matches!(parse_list(empty), Err(ClientConfigError::Target(why)) if why == "no URL given"),
                "{empty:?}"
            );
        }
        assert!(
            parse_list("http://a:1,payment:2").is_err(),
            "one bad URL spoils the list"
        );
    }

    #[tokio::test]
    async fn an_address_resolves_to_itself_and_a_name_through_the_resolver() {
        let literal = Target::parse("http://192.0.2.1:7").unwrap();
        assert_eq!(
            literal.resolve().await.unwrap(),
            ["192.0.2.1:7".parse().unwrap()],
            "no lookup for an address"
        );
        // Resolved by the system's resolver (the hosts file): no network needed.
        let name = Target::parse("http://localhost:50052").unwrap();
        let addrs = name.resolve().await.unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|addr| addr.ip().is_loopback() && addr.port() == 50052),
            "{addrs:?}"
        );
    }
}
