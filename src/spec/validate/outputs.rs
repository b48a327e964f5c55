//! Output routes and their sinks.

use super::rules::{check_kafka_topic, check_publish_topic, check_url, is_clock_time};
use super::{Checker, EVENT_KINDS, Path, RESERVED_ROUTE_NAMES};
use crate::operators::Report;
use crate::spec::de::suggest;
use crate::spec::{NotifyPolicySpec, OneOrMany, PushSinkSpec, RetrySpec, SinkSpec};

impl Checker<'_> {
    pub(super) fn outputs(&mut self) {
        let spec = self.spec;
        let names: Vec<&str> = (0..spec.operators.len())
            .filter_map(|i| self.identity(i).name)
            .collect();
        let uncertain = self.chain_uncertain();
        for (i, route) in spec.outputs.iter().enumerate() {
            let path = Path::root().key("outputs").index(i);
            if !self.gaps.touches(&path.key("when")) {
                let when = &route.when;
                let (list, many) = match when {
                    OneOrMany::One(one) => (vec![one.clone()], false),
                    OneOrMany::Many(many) => (many.clone(), true),
                };
                if list.is_empty() {
                    self.report(path.key("when"), "name at least one operator (or `all`)");
                }
                for (j, name) in list.iter().enumerate() {
                    if names.contains(&name.as_str()) || RESERVED_ROUTE_NAMES.contains(&name.as_str()) || uncertain {
                        continue;
                    }
                    let at = if many {
                        path.key("when").index(j)
                    } else {
                        path.key("when")
                    };
                    let mut m = format!("`when` names `{name}`, which is no operator");
                    let candidates = names.iter().copied().chain(RESERVED_ROUTE_NAMES);
                    if let Some(s) = suggest(name, candidates) {
                        m.push_str(&format!("; did you mean `{s}`?"));
                    }
                    m.push_str(&format!(
                        " (operators: {}; or one of {})",
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        },
                        RESERVED_ROUTE_NAMES.join(", ")
                    ));
                    self.report(at, m);
                }
            }
            let events = if self.gaps.touches(&path.key("events")) {
                &[][..]
            } else {
                &route.events[..]
            };
            for (j, event) in events.iter().enumerate() {
                if !EVENT_KINDS.contains(&event.as_str()) {
                    let mut m = format!("unknown kind of result `{event}`");
                    if let Some(s) = suggest(event, EVENT_KINDS) {
                        m.push_str(&format!("; did you mean `{s}`?"));
                    }
                    m.push_str(&format!(" (valid: {})", EVENT_KINDS.join(", ")));
                    self.report(path.key("events").index(j), m);
                }
            }
            if route.to.is_empty() && !self.gaps.covers(&path.key("to")) {
                self.report(path.key("to"), "a route needs at least one sink in `to`");
            }
            for (j, sink) in route.to.iter().enumerate() {
                let sink_path = path.key("to").index(j);
                if !self.gaps.touches(&sink_path) {
                    self.sink(&sink_path, sink);
                }
            }
        }
    }

    /// Refuses `url` when it would carry `what` in clear to another host (unless the notifier
    /// says `allow_insecure: true`).
    fn credentials_in_clear(&mut self, path: Path, url: &str, retry: &RetrySpec, what: &str) {
        if !retry.allow_insecure && super::rules::plaintext_to_another_host(url) {
            self.report(
                path,
                format!(
                    "{what} would cross the network in clear over `http://`: use `https://`, or set \
                     `allow_insecure: true` to accept that"
                ),
            );
        }
    }

    /// The retry settings every notifier has.
    fn retry(&mut self, path: &Path, retry: &RetrySpec) {
        self.duration_positive(path.key("timeout"), "timeout", retry.timeout);
        self.duration_positive(path.key("max_age"), "max_age", retry.max_age);
        if retry.concurrency == 0 {
            self.report(path.key("concurrency"), "`concurrency` must be at least 1");
        }
    }

    fn sink(&mut self, path: &Path, sink: &SinkSpec) {
        match sink {
            SinkSpec::Stdout(_) => {}
            SinkSpec::File(f) => self.not_empty(path.key("file").key("path"), "`path`", &f.path),
            SinkSpec::Webhook(w) => {
                let path = path.key("webhook");
                if let Err(e) = check_url(&w.url, &["http", "https"], true) {
                    self.report(path.key("url"), e);
                }
                if let Some(name) = &w.secret_env {
                    self.env_name(path.key("secret_env"), name);
                }
                self.retry(&path, &w.retry);
                self.policy(&path.key("policy"), &w.policy);
            }
            SinkSpec::Push(push) => {
                let path = path.key("push");
                match push {
                    PushSinkSpec::Fcm(f) => {
                        let path = path.key("fcm");
                        self.env_name(path.key("service_account_env"), &f.service_account_env);
                        for (key, url) in [("endpoint", &f.endpoint), ("token_endpoint", &f.token_endpoint)] {
                            if let Some(Err(e)) = url.as_deref().map(|u| check_url(u, &["http", "https"], true)) {
                                self.report(path.key(key), e);
                            }
                            if let Some(u) = url {
                                self.credentials_in_clear(path.key(key), u, &f.retry, "the FCM access token");
                            }
                        }
                        self.retry(&path, &f.retry);
                        self.policy(&path.key("policy"), &f.policy);
                    }
                    PushSinkSpec::Apns(a) => {
                        let path = path.key("apns");
                        self.not_empty(path.key("team_id"), "`team_id`", &a.team_id);
                        self.not_empty(path.key("key_id"), "`key_id`", &a.key_id);
                        self.env_name(path.key("key_env"), &a.key_env);
                        self.not_empty(path.key("topic"), "`topic` (the app's bundle id)", &a.topic);
                        if let Some(Err(e)) = a.endpoint.as_deref().map(|u| check_url(u, &["http", "https"], true)) {
                            self.report(path.key("endpoint"), e);
                        }
                        if let Some(u) = &a.endpoint {
                            self.credentials_in_clear(path.key("endpoint"), u, &a.retry, "the APNs provider token");
                        }
                        self.retry(&path, &a.retry);
                        self.policy(&path.key("policy"), &a.policy);
                    }
                    PushSinkSpec::Ntfy(n) => {
                        let path = path.key("ntfy");
                        if let Err(e) = check_url(&n.server, &["http", "https"], true) {
                            self.report(path.key("server"), e);
                        }
                        if n.token_env.is_some() {
                            self.credentials_in_clear(path.key("server"), &n.server, &n.retry, "the ntfy access token");
                        }
                        let topic_ok = !n.topic.is_empty()
                            && n.topic.len() <= 64
                            && n.topic
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                        if !topic_ok {
                            self.report(
                                path.key("topic"),
                                format!("ntfy topic `{}` must be 1 to 64 letters, digits, `-` or `_`", n.topic),
                            );
                        }
                        if let Some(name) = &n.token_env {
                            self.env_name(path.key("token_env"), name);
                        }
                        self.retry(&path, &n.retry);
                        self.policy(&path.key("policy"), &n.policy);
                    }
                }
            }
            SinkSpec::Mqtt(m) => {
                let path = path.key("mqtt");
                self.mqtt_connection(&path, &m.url, &m.client);
                if let Err(e) = check_publish_topic(&m.topic) {
                    self.report(path.key("topic"), e);
                }
            }
            SinkSpec::Kafka(k) => {
                let path = path.key("kafka");
                self.kafka_brokers(path.key("brokers"), &k.brokers);
                if let Err(e) = check_kafka_topic(&k.topic) {
                    self.report(path.key("topic"), e);
                }
                self.kafka_client(&path, &k.client);
            }
        }
    }

    fn policy(&mut self, path: &Path, policy: &NotifyPolicySpec) {
        if policy.notify_on.as_ref().is_some_and(Vec::is_empty) {
            self.report(
                path.key("notify_on"),
                "`notify_on: []` would notify nothing: leave it out to notify every record",
            );
        }
        if policy.max_entries == Some(0) {
            self.report(
                path.key("max_entries"),
                "`max_entries` must be at least 1 (leave it out for the default, 100000)",
            );
        }
        if let Some(cooldown) = policy.cooldown {
            self.duration_positive(path.key("cooldown"), "cooldown", cooldown);
        }
        if let Some(quiet) = &policy.quiet_hours {
            let path = path.key("quiet_hours");
            for (key, value) in [("from", &quiet.from), ("to", &quiet.to)] {
                if !is_clock_time(value) {
                    self.report(
                        path.key(key),
                        format!("`{key}` must be a time of day as HH:MM (such as 22:00), found `{value}`"),
                    );
                }
            }
            if quiet.from == quiet.to && is_clock_time(&quiet.from) {
                self.report(path.key("to"), "quiet hours from and to the same time would be empty");
            }
            if let Err(e) = jiff::tz::TimeZone::get(&quiet.timezone) {
                let _ = e;
                self.report(
                    path.key("timezone"),
                    format!(
                        "`{}` is not a known IANA time zone (such as Europe/Zurich or America/New_York)",
                        quiet.timezone
                    ),
                );
            }
        }
    }
}
