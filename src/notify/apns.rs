//! Apple Push Notification service, token-based authentication.
//!
//! The provider token is an ES256 JWT (`alg` ES256, `kid` = key id; `iss` = team id, `iat`),
//! signed with the `.p8` key (PKCS#8 PEM, from `key_env`) and reused for 40 minutes (Apple
//! accepts a token for an hour and refuses refreshing it more than every 20 minutes).
//!
//! One HTTP/2 request per subscribed token: `POST <endpoint>/3/device/<token>` with
//! `authorization: bearer <jwt>`, `apns-topic` (the bundle id), `apns-push-type: alert`,
//! `apns-priority` (10 for an event start, 5 otherwise), `apns-collapse-id` (the event id) and
//! `{"aps": {"alert": {title, body}, "sound": "default"}, "plume": {id, device, type, severity}}`.
//! A 410 answer (`Unregistered`) removes the token. Over `https://` HTTP/2 is negotiated with
//! ALPN; over `http://` (a local test server) the client speaks HTTP/2 with prior knowledge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::signature::EcdsaKeyPair;
use serde_json::json;

use super::NotifyError;
use super::delivery::{BoxFuture, DeliveryError, Transport};
use super::jwt;
use super::outbox::OutboxEntry;
use super::subscribers::Subscribers;
use super::webhook::{client, status_error};
use crate::model::redact;

pub const APNS_ENDPOINT: &str = "https://api.push.apple.com";
const TOKEN_LIFETIME: Duration = Duration::from_secs(40 * 60);

pub struct ApnsTransport {
    client: reqwest::Client,
    endpoint: String,
    team_id: String,
    key_id: String,
    topic: String,
    key: EcdsaKeyPair,
    token: std::sync::Mutex<Option<(String, Instant)>>,
    subscribers: Arc<dyn Subscribers>,
    describe: String,
}

impl ApnsTransport {
    pub fn new(
        team_id: &str,
        key_id: &str,
        key_pem: &str,
        topic: &str,
        endpoint: Option<&str>,
        subscribers: Arc<dyn Subscribers>,
        timeout: Duration,
    ) -> Result<Self, NotifyError> {
        let key = jwt::ec_key(key_pem).map_err(|e| NotifyError::Credentials(format!("apns: {e}")))?;
        let endpoint = endpoint.unwrap_or(APNS_ENDPOINT).trim_end_matches('/').to_string();
        Ok(ApnsTransport {
            client: client(timeout, endpoint.starts_with("http://"))?,
            describe: format!("apns:{}", redact::url(&endpoint)),
            endpoint,
            team_id: team_id.to_string(),
            key_id: key_id.to_string(),
            topic: topic.to_string(),
            key,
            token: std::sync::Mutex::new(None),
            subscribers,
        })
    }

    /// The provider token (cached).
    pub fn provider_token(&self) -> Result<String, DeliveryError> {
        let mut cached = self.token.lock().unwrap();
        if let Some((t, made)) = cached.as_ref()
            && made.elapsed() < TOKEN_LIFETIME
        {
            return Ok(t.clone());
        }
        let header = json!({"alg": "ES256", "kid": self.key_id});
        let claims = json!({"iss": self.team_id, "iat": jiff::Timestamp::now().as_second()});
        let t = jwt::es256(&self.key, &header, &claims).map_err(|e| DeliveryError::Credentials {
            message: e.to_string(),
            retryable: false,
        })?;
        *cached = Some((t.clone(), Instant::now()));
        Ok(t)
    }
}

/// The APNs payload.
pub fn payload(entry: &OutboxEntry) -> serde_json::Value {
    json!({
        "aps": { "alert": { "title": entry.title, "body": entry.body }, "sound": "default" },
        "plume": {
            "id": entry.event_id,
            "device": entry.device,
            "type": entry.kind,
            "severity": entry.severity,
        },
    })
}

impl Transport for ApnsTransport {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn deliver<'a>(&'a self, entry: &'a OutboxEntry) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            // the device token goes into the request path: one that is not an APNs token (a
            // subscriber file edited by hand) is never sent, and leaves like an unregistered one
            if let Err(e) = super::subscribers::check_token("apns", &entry.target) {
                return Err(DeliveryError::Unregistered(e.to_string()));
            }
            let token = self.provider_token()?;
            let url = format!("{}/3/device/{}", self.endpoint, entry.target);
            let response = self
                .client
                .post(url)
                .header("authorization", format!("bearer {token}"))
                .header("apns-topic", &self.topic)
                .header("apns-push-type", "alert")
                .header("apns-priority", if matches!(entry.kind.as_str(), "event_start" | "event_update") { "10" } else { "5" })
                .header("apns-collapse-id", &entry.event_id)
                .json(&payload(entry))
                .send()
                .await
                .map_err(DeliveryError::from_reqwest)?;
            if response.status().is_success() {
                return Ok(());
            }
            let status = response.status().as_u16();
            let e = status_error(response).await;
            match (&e, status) {
                (_, 410) => Err(DeliveryError::Unregistered("apns 410".into())),
                (DeliveryError::Status { detail, .. }, 403) if detail.contains("ExpiredProviderToken") => {
                    *self.token.lock().unwrap() = None;
                    Err(DeliveryError::Credentials {
                        message: "apns: provider token expired".into(),
                        retryable: true,
                    })
                }
                _ => Err(e),
            }
        })
    }

    fn wanted(&self, entry: &OutboxEntry) -> bool {
        self.subscribers.still_wanted(entry)
    }

    fn token_unregistered(&self, entry: &OutboxEntry) {
        self.subscribers.forget_unregistered(&entry.target, "apns");
    }
}
