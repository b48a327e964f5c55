//! The rules of names, URLs, MQTT and Kafka topics and times of day.

pub(super) use crate::model::location::is_name;

pub(super) use crate::model::redact::plaintext_to_another_host;

/// `HH:MM`, 00:00 to 23:59.
pub(super) fn is_clock_time(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 5
        && b[2] == b':'
        && b[..2].iter().chain(&b[3..]).all(u8::is_ascii_digit)
        && text[..2].parse::<u8>().is_ok_and(|h| h < 24)
        && text[3..].parse::<u8>().is_ok_and(|m| m < 60)
}

/// Checks `scheme://host[:port][/path]`. `path_allowed`: whether anything may follow the host.
pub(super) fn check_url(url: &str, schemes: &[&str], path_allowed: bool) -> Result<(), String> {
    let wanted = schemes
        .iter()
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(" or ");
    // (messages show the URL without its password, path or query: they can hold secrets)
    let shown = crate::model::redact::url(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(if shown.starts_with('(') {
            format!("this value is not a URL: it must start with {wanted}")
        } else {
            format!("`{shown}` is not a URL: it must start with {wanted}")
        });
    };
    if !schemes.contains(&scheme) {
        return Err(format!("`{shown}` must start with {wanted}, not {scheme}://"));
    }
    let (authority, tail) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if !path_allowed && !(tail.is_empty() || tail == "/") {
        return Err(format!("`{shown}` must be only {wanted}host:port, without a path"));
    }
    if authority.contains('@') {
        return Err(format!(
            "`{shown}` holds credentials: give them with the username / secret keys (`*_env`), not in the URL"
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':')),
            None => return Err(format!("`{shown}` has an unclosed `[` in its host")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("`{shown}` has no valid host"));
    }
    if let Some(port) = port {
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(format!("`{shown}` has an invalid port `{port}` (1 to 65535)"));
        }
    }
    Ok(())
}

/// A subscription topic template: levels split by `/`; `{device}` at most once and as a whole
/// level; `+` a whole level; `#` a whole level and the last one.
pub(super) fn check_subscribe_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic must not be empty".to_string());
    }
    if topic.starts_with("$share/") {
        return Err("write the shared subscription group in `shared_group`, and the plain topic here".to_string());
    }
    let levels: Vec<&str> = topic.split('/').collect();
    let mut devices = 0;
    for (i, level) in levels.iter().enumerate() {
        if level.contains("{device}") {
            devices += 1;
            if *level != "{device}" {
                return Err(format!(
                    "`{{device}}` must be a whole topic level (such as `sensors/{{device}}/air`), found `{level}` in `{topic}`"
                ));
            }
            continue;
        }
        if let Some(start) = level.find('{') {
            let placeholder = &level[start..level[start..].find('}').map_or(level.len(), |e| start + e + 1)];
            return Err(format!(
                "unknown placeholder `{placeholder}` in `{topic}`: only `{{device}}` is filled in"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("`+` must be a whole topic level, found `{level}` in `{topic}`"));
        }
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!("`#` must be the whole last topic level, in `{topic}`"));
        }
    }
    if devices > 1 {
        return Err(format!("`{{device}}` may appear only once in `{topic}`"));
    }
    Ok(())
}

/// A publish topic: no wildcards; `{device}` and `{operator}` are filled in.
pub(super) fn check_publish_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic must not be empty".to_string());
    }
    if topic.contains(['+', '#']) {
        return Err(format!(
            "`{topic}` is a topic to publish to: it cannot hold the wildcards `+` or `#`"
        ));
    }
    let mut rest = topic;
    while let Some(start) = rest.find('{') {
        let end = rest[start..]
            .find('}')
            .map(|e| start + e + 1)
            .ok_or_else(|| format!("unclosed `{{` in `{topic}`"))?;
        let placeholder = &rest[start..end];
        if placeholder != "{device}" && placeholder != "{operator}" {
            return Err(format!(
                "unknown placeholder `{placeholder}` in `{topic}`: only `{{device}}` and `{{operator}}` are filled in"
            ));
        }
        rest = &rest[end..];
    }
    Ok(())
}

/// Kafka topic names: 1 to 249 of `[a-zA-Z0-9._-]`.
pub(super) fn check_kafka_topic(topic: &str) -> Result<(), String> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && topic != "."
        && topic != "..";
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{topic}` is not a valid Kafka topic name (1 to 249 letters, digits, `.`, `_` or `-`)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("mqtt://localhost:1883", &["mqtt", "mqtts"], false).is_ok());
        assert!(check_url("mqtts://[::1]:8883", &["mqtt", "mqtts"], false).is_ok());
        assert!(check_url("mqtt://broker", &["mqtt", "mqtts"], false).is_ok());
        assert!(
            check_url("tcp://broker:1883", &["mqtt", "mqtts"], false)
                .unwrap_err()
                .contains("must start with mqtt:// or mqtts://")
        );
        assert!(
            check_url("localhost:1883", &["mqtt", "mqtts"], false)
                .unwrap_err()
                .contains("not a URL")
        );
        assert!(
            check_url("mqtt://broker:99999", &["mqtt", "mqtts"], false)
                .unwrap_err()
                .contains("invalid port")
        );
        assert!(
            check_url("mqtt://u:p@broker", &["mqtt", "mqtts"], false)
                .unwrap_err()
                .contains("credentials")
        );
        assert!(
            check_url("mqtt://broker/x", &["mqtt", "mqtts"], false)
                .unwrap_err()
                .contains("without a path")
        );
        assert!(check_url("https://example.com/hooks/1?x=1", &["http", "https"], true).is_ok());
        assert!(check_url("ftp://example.com", &["http", "https"], true).is_err());
    }

    #[test]
    fn topics() {
        assert!(check_subscribe_topic("sensors/{device}/air").is_ok());
        assert!(check_subscribe_topic("sensors/+/{device}/#").is_ok());
        assert!(
            check_subscribe_topic("sensors/dev-{device}/air")
                .unwrap_err()
                .contains("whole topic level")
        );
        assert!(
            check_subscribe_topic("a/{device}/{device}")
                .unwrap_err()
                .contains("only once")
        );
        assert!(check_subscribe_topic("a/#/b").unwrap_err().contains("last"));
        assert!(
            check_subscribe_topic("a/x+/b")
                .unwrap_err()
                .contains("whole topic level")
        );
        assert!(
            check_subscribe_topic("a/{room}/b")
                .unwrap_err()
                .contains("unknown placeholder `{room}`")
        );
        assert!(check_publish_topic("plume/{device}/{operator}").is_ok());
        assert!(check_publish_topic("plume/+/x").is_err());
        assert!(check_publish_topic("plume/{room}").unwrap_err().contains("{room}"));
        assert!(check_kafka_topic("air.aggregates-1").is_ok());
        assert!(check_kafka_topic("air aggregates").is_err());
    }

    #[test]
    fn clock_times() {
        assert!(is_clock_time("22:00"));
        assert!(is_clock_time("07:30"));
        assert!(!is_clock_time("7:30"));
        assert!(!is_clock_time("24:00"));
        assert!(!is_clock_time("22:60"));
    }
}
