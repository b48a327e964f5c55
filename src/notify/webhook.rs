//! Webhooks signed per the Standard Webhooks specification.
//!
//! Every request is a `POST` of the JSON body built when the event entered the outbox (the same
//! bytes on every attempt; schema in the README, "Notifications") with the headers
//! `webhook-id` (the record's deterministic id: receivers deduplicate by it),
//! `webhook-timestamp` (Unix seconds of this attempt) and, when a secret is configured,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the
//! base64-decoded part of the `whsec_…` secret. A 2xx answer acknowledges the event.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::NotifyError;
use super::delivery::{BoxFuture, DeliveryError, Transport, parse_retry_after};
use super::outbox::OutboxEntry;

/// The `whsec_…` signing secrets of a webhook: one, or several during a rotation. Its `Debug`
/// does not show them.
#[derive(Clone)]
pub struct WebhookSecret(Vec<ring::hmac::Key>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookSecret({} key(s): …)", self.0.len())
    }
}

impl WebhookSecret {
    /// One or more `whsec_<base64>` secrets separated by spaces (the prefix is optional). With
    /// several (a rotation: the new one and the old one), every request carries a signature
    /// with each, space-separated as Standard Webhooks allows, so receivers that know either
    /// accept it. The error never repeats a secret.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (i, one) in text.split_whitespace().enumerate() {
            let which = if i == 0 {
                "the secret".to_string()
            } else {
                format!("secret {}", i + 1)
            };
            let b64 = one.strip_prefix("whsec_").unwrap_or(one);
            let key = STANDARD
                .decode(b64)
                .map_err(|_| format!("{which} is not `whsec_` followed by base64"))?;
            if key.len() < 16 {
                return Err(format!("{which} is shorter than 16 bytes"));
            }
            keys.push(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key));
        }
        if keys.is_empty() {
            return Err("the secret is empty".into());
        }
        Ok(WebhookSecret(keys))
    }

    /// The `webhook-signature` header value for one attempt: `v1,<signature>` per secret.
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        let mut header = String::new();
        for key in &self.0 {
            let mut ctx = ring::hmac::Context::with_key(key);
            ctx.update(id.as_bytes());
            ctx.update(b".");
            ctx.update(timestamp.to_string().as_bytes());
            ctx.update(b".");
            ctx.update(body.as_bytes());
            if !header.is_empty() {
                header.push(' ');
            }
            header.push_str("v1,");
            header.push_str(&STANDARD.encode(ctx.sign().as_ref()));
        }
        header
    }
}

pub(crate) fn client(timeout: Duration, http2_prior_knowledge: bool) -> Result<reqwest::Client, NotifyError> {
    super::install_crypto_provider();
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("plume/", env!("CARGO_PKG_VERSION")));
    if http2_prior_knowledge {
        b = b.http2_prior_knowledge();
    }
    b.build().map_err(|e| NotifyError::Client(e.to_string()))
}

/// Turns a non-success response into a [`DeliveryError`].
pub(crate) async fn status_error(response: reqwest::Response) -> DeliveryError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    // (only the start of the answer is read: a receiver could answer with gigabytes)
    let detail = read_bounded(response, 4096).await.unwrap_or_default();
    let detail = String::from_utf8_lossy(&detail);
    let mut detail: String = detail.chars().take(200).collect();
    detail = detail.replace(['\n', '\r'], " ");
    DeliveryError::Status {
        status,
        retry_after,
        detail,
    }
}

/// Reads at most `max` bytes of a response's body (the rest is not read), and whether there was
/// more.
pub(crate) async fn read_bounded(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while body.len() < max {
        match response.chunk().await? {
            Some(chunk) => {
                let room = max - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            None => break,
        }
    }
    Ok(body)
}

pub struct WebhookTransport {
    client: reqwest::Client,
    url: String,
    secret: Option<WebhookSecret>,
    describe: String,
}

impl WebhookTransport {
    pub fn new(url: &str, secret: Option<WebhookSecret>, timeout: Duration) -> Result<Self, NotifyError> {
        Ok(WebhookTransport {
            client: client(timeout, false)?,
            url: url.to_string(),
            secret,
            describe: format!("webhook:{}", crate::model::redact::url(url)),
        })
    }
}

impl Transport for WebhookTransport {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn deliver<'a>(&'a self, entry: &'a OutboxEntry) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let timestamp = jiff::Timestamp::now().as_second();
            let mut request = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("webhook-id", &entry.event_id)
                .header("webhook-timestamp", timestamp.to_string());
            if let Some(secret) = &self.secret {
                request = request.header(
                    "webhook-signature",
                    secret.sign(&entry.event_id, timestamp, &entry.payload),
                );
            }
            let response = request
                .body(entry.payload.clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn during_a_rotation_every_request_carries_one_signature_per_secret() {
        let new = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let old = WebhookSecret::parse("whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0").unwrap();
        let both =
            WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw  whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0").unwrap();
        let (id, ts, body) = ("msg_1", 1_700_000_000, r#"{"x":1}"#);
        assert_eq!(
            both.sign(id, ts, body),
            format!("{} {}", new.sign(id, ts, body), old.sign(id, ts, body))
        );
        let e = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_!!!").unwrap_err();
        assert_eq!(e, "secret 2 is not `whsec_` followed by base64");
        assert!(!format!("{both:?}").contains("MfKQ"));
    }

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // the example of the Standard Webhooks specification
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(format!("{secret:?}").contains('…'));
        assert!(WebhookSecret::parse("whsec_!!!").is_err());
    }

    /// A receiver that answers 500 with a body that never ends: the error is built from the start
    /// of it, and the rest is not read (the old `text()` never returned).
    #[test]
    fn an_endless_error_answer_is_read_only_as_far_as_needed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            tokio::spawn(async move {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = "HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("{:x}\r\n{}\r\n", 65_536, "e".repeat(65_536));
                // endless: until the client goes away
                while socket.write_all(chunk.as_bytes()).await.is_ok() {}
            });
            let client = client(Duration::from_secs(30), false).unwrap();
            let response = client.post(format!("http://127.0.0.1:{port}/")).send().await.unwrap();
            let error = tokio::time::timeout(Duration::from_secs(20), status_error(response))
                .await
                .expect("the error is built without reading the whole answer");
            match error {
                DeliveryError::Status { status, detail, .. } => {
                    assert_eq!(status, 500);
                    assert_eq!(detail, "e".repeat(200));
                }
                other => panic!("{other:?}"),
            }
        });
    }
}
