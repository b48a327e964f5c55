//! ntfy: `POST <server>/<topic>` with the body as the message and the `Title`, `Priority`
//! (1–5) and `Tags` headers; `Authorization: Bearer <token>` when `token_env` is set. Header
//! values that are not ASCII are sent as RFC 2047 encoded words (ntfy decodes them).

use std::time::Duration;

use base64::Engine as _;

use super::NotifyError;
use super::delivery::{BoxFuture, DeliveryError, Transport};
use super::outbox::OutboxEntry;
use super::webhook::{client, status_error};
use crate::model::redact;

pub struct NtfyTransport {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
    critical: Vec<String>,
    describe: String,
}

impl NtfyTransport {
    /// `critical`: severities sent with the highest priority.
    pub fn new(
        server: &str,
        topic: &str,
        token: Option<String>,
        critical: Vec<String>,
        timeout: Duration,
    ) -> Result<Self, NotifyError> {
        let url = format!("{}/{}", server.trim_end_matches('/'), topic);
        Ok(NtfyTransport {
            client: client(timeout, false)?,
            describe: format!("ntfy:{}", redact::url(&url)),
            url,
            token,
            critical,
        })
    }
}

/// A header value ntfy accepts: as is when ASCII, else an RFC 2047 encoded word.
pub fn header_text(text: &str) -> String {
    let clean: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if clean.is_ascii() {
        clean
    } else {
        format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(clean)
        )
    }
}

/// ntfy priority: 5 for critical severities, 4 for an event start or escalation, 3 otherwise.
fn priority(entry: &OutboxEntry, critical: &[String]) -> u8 {
    if entry.severity.as_ref().is_some_and(|s| critical.contains(s)) {
        5
    } else if matches!(entry.kind.as_str(), "event_start" | "event_update") {
        4
    } else {
        3
    }
}

fn tags(entry: &OutboxEntry) -> String {
    let mut tags = vec![
        match entry.kind.as_str() {
            "event_start" | "event_update" => "warning",
            "event_end" => "white_check_mark",
            "digest" => "zzz",
            _ => "information_source",
        }
        .to_string(),
    ];
    if let Some(s) = &entry.severity {
        tags.push(s.clone());
    }
    tags.join(",")
}

impl Transport for NtfyTransport {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn deliver<'a>(&'a self, entry: &'a OutboxEntry) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let mut request = self
                .client
                .post(&self.url)
                .header("Title", header_text(&entry.title))
                .header("Priority", priority(entry, &self.critical).to_string())
                .header("Tags", header_text(&tags(entry)))
                .header("X-Plume-Id", &entry.event_id);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let response = request
                .body(entry.body.clone())
                .send()
                .await
                .map_err(DeliveryError::from_reqwest)?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(status_error(response).await)
            }
        })
    }
}
