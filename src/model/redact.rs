//! URLs: what plume shows of them in logs, errors, `plume validate` and sink names (never a
//! secret), and whether one would carry credentials in clear.
//!
//! Secrets travel in URLs more often than they should: a password in the user info
//! (`mqtt://user:pass@host`), a token in the path (Slack and Discord webhook URLs are the secret
//! themselves: `https://hooks.slack.com/services/T0/B0/XXXX`), a key in the query string. Every
//! place that shows a URL shows [`url`] of it instead.

/// `scheme://[user:***@]host[:port]`, then `/…` if the URL had a path, query or fragment (its
/// content is not shown). Text that is not `scheme://…` is shown as `(not a URL)` unless it has
/// no `@`, `/`, `?` or `#` (then it cannot hold a secret and is shown as it is).
pub fn url(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return if text.contains(['@', '/', '?', '#', ':']) {
            "(not a URL)".to_string()
        } else {
            text.to_string()
        };
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or("");
            format!("{user}:***@{host}")
        }
        None => authority.to_string(),
    };
    let tail = if tail.is_empty() || tail == "/" { tail } else { "/…" };
    format!("{scheme}://{host}{tail}")
}

/// Whether `url` goes without TLS (`http://`, `mqtt://`) to a host other than this machine
/// (loopback traffic never leaves it).
pub fn plaintext_to_another_host(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    if !matches!(scheme, "http" | "mqtt") {
        return false;
    }
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    if host.is_empty() || host.contains(['\0', '$']) {
        // (no host to judge: a broken value, or a variable not set, reported elsewhere)
        return false;
    }
    let loopback =
        host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    !loopback
}

#[cfg(test)]
mod tests {
    use super::url;

    #[test]
    fn passwords_paths_and_queries_are_never_shown() {
        let cases = [
            ("mqtt://broker.lan:1883", "mqtt://broker.lan:1883"),
            (
                "mqtts://fleet:s3cret@broker.lan:8883",
                "mqtts://fleet:***@broker.lan:8883",
            ),
            ("mqtt://fleet@broker.lan", "mqtt://fleet:***@broker.lan"),
            (
                "https://hooks.slack.com/services/T000/B000/XXXXSECRET",
                "https://hooks.slack.com/…",
            ),
            ("https://example.com/hook?token=abc", "https://example.com/…"),
            // (a notifier's log name: issue 16 hid the path too)
            (
                "https://user:pw@hooks.example.com:8443/a/b?token=x",
                "https://user:***@hooks.example.com:8443/…",
            ),
            ("https://example.com/", "https://example.com/"),
            ("https://u:p@[::1]:8443/x#frag", "https://u:***@[::1]:8443/…"),
            ("http://a:b:c@host/", "http://a:***@host/"),
            ("no-scheme-host", "no-scheme-host"),
            ("user:secret@host", "(not a URL)"),
        ];
        for (given, shown) in cases {
            assert_eq!(url(given), shown, "{given}");
            for secret in ["s3cret", "XXXXSECRET", "token=abc", "frag"] {
                assert!(!url(given).contains(secret));
            }
        }
    }
}

#[cfg(test)]
mod plaintext_tests {
    use super::plaintext_to_another_host as plain;

    #[test]
    fn only_plaintext_to_another_host_counts() {
        assert!(plain("http://push.example.com/x"));
        assert!(plain("mqtt://user@10.0.0.5:1883"));
        assert!(!plain("https://push.example.com"));
        assert!(!plain("mqtts://broker:8883"));
        assert!(!plain("http://127.0.0.1:9000/x"));
        assert!(!plain("http://localhost:9000"));
        assert!(!plain("mqtt://[::1]:1883"));
    }
}
