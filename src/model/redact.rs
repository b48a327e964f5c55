//! What plume shows of a URL in logs, errors, `plume validate` and sink names: never a secret.
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
