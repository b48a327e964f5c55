//! Firebase Cloud Messaging, HTTP v1 API.
//!
//! Credentials: a service-account JSON key (`client_email`, `private_key`, `project_id`,
//! `token_uri`), from the variable `service_account_env` (the JSON itself, or a path to it). An
//! RS256-signed JWT assertion (`iss` = client email, `scope` = firebase.messaging, `aud` = token
//! URI, one hour) is exchanged at the token URI (`grant_type=urn:ietf:params:oauth:grant-type:
//! jwt-bearer`) for an OAuth2 access token, cached until a minute before it expires (and dropped
//! when FCM answers 401).
//!
//! One request per subscribed token: `POST <endpoint>/v1/projects/<project>/messages:send` with
//! `{"message": {"token", "notification": {title, body}, "data": {id, device, type, severity},
//! "android": {"priority", "collapse_key"}}}`. An `UNREGISTERED` answer removes the token from
//! the subscribers (and is counted).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::signature::RsaKeyPair;
use serde::Deserialize;
use serde_json::json;

use super::NotifyError;
use super::delivery::{BoxFuture, DeliveryError, Transport};
use super::jwt;
use super::outbox::OutboxEntry;
use super::subscribers::Subscribers;
use super::webhook::{client, status_error};
use crate::model::redact;

pub const FCM_ENDPOINT: &str = "https://fcm.googleapis.com";
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

#[derive(Deserialize)]
struct ServiceAccount {
    client_email: String,
    private_key: String,
    project_id: String,
    #[serde(default)]
    token_uri: Option<String>,
}

/// Reads a service-account key: the JSON itself, or a path to a file that holds it.
fn load_service_account(value: &str) -> Result<ServiceAccount, NotifyError> {
    let text = if value.trim_start().starts_with('{') {
        value.to_string()
    } else {
        std::fs::read_to_string(value.trim())
            .map_err(|e| NotifyError::Credentials(format!("fcm: reading the service-account file: {e}")))?
    };
    serde_json::from_str(&text).map_err(|e| {
        // serde's message names the missing field; it never quotes values of a valid map
        NotifyError::Credentials(format!(
            "fcm: the service-account key is not valid: {}",
            e.classify_msg()
        ))
    })
}

trait ClassifyMsg {
    fn classify_msg(&self) -> String;
}

impl ClassifyMsg for serde_json::Error {
    fn classify_msg(&self) -> String {
        let s = self.to_string();
        if s.starts_with("missing field") {
            s
        } else {
            format!("{:?} error at line {}", self.classify(), self.line())
        }
    }
}

struct CachedToken {
    token: String,
    expires: Instant,
}

pub struct FcmTransport {
    client: reqwest::Client,
    send_url: String,
    token_uri: String,
    client_email: String,
    key: RsaKeyPair,
    token: tokio::sync::Mutex<Option<CachedToken>>,
    subscribers: Arc<dyn Subscribers>,
    describe: String,
}

impl FcmTransport {
    /// Where access tokens are asked for (the service account's `token_uri`, or the override).
    pub fn token_uri(&self) -> &str {
        &self.token_uri
    }

    /// `service_account`: the JSON key or a path to it. `endpoint` and `token_uri` override
    /// Google's (tests, emulators).
    pub fn new(
        service_account: &str,
        endpoint: Option<&str>,
        token_uri: Option<&str>,
        subscribers: Arc<dyn Subscribers>,
        timeout: Duration,
    ) -> Result<Self, NotifyError> {
        let sa = load_service_account(service_account)?;
        let key = jwt::rsa_key(&sa.private_key).map_err(|e| NotifyError::Credentials(format!("fcm: {e}")))?;
        let endpoint = endpoint.unwrap_or(FCM_ENDPOINT).trim_end_matches('/');
        let send_url = format!("{endpoint}/v1/projects/{}/messages:send", sa.project_id);
        let token_uri = token_uri
            .map(str::to_string)
            .or(sa.token_uri)
            .unwrap_or_else(|| GOOGLE_TOKEN_URI.to_string());
        Ok(FcmTransport {
            client: client(timeout, false)?,
            describe: format!("fcm:{}", redact::url(&send_url)),
            send_url,
            token_uri,
            client_email: sa.client_email,
            key,
            token: tokio::sync::Mutex::new(None),
            subscribers,
        })
    }

    /// The signed assertion exchanged for an access token.
    pub fn assertion(&self, now: i64) -> Result<String, DeliveryError> {
        let header = json!({"alg": "RS256", "typ": "JWT"});
        let claims = json!({
            "iss": self.client_email,
            "scope": FCM_SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        jwt::rs256(&self.key, &header, &claims).map_err(|e| DeliveryError::Credentials {
            message: e.to_string(),
            retryable: false,
        })
    }

    async fn access_token(&self) -> Result<String, DeliveryError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref()
            && t.expires > Instant::now() + Duration::from_secs(60)
        {
            return Ok(t.token.clone());
        }
        let assertion = self.assertion(jiff::Timestamp::now().as_second())?;
        let form = format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}");
        let response = self
            .client
            .post(&self.token_uri)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(DeliveryError::from_reqwest)?;
        if !response.status().is_success() {
            let e = status_error(response).await;
            let retryable = e.retryable();
            return Err(DeliveryError::Credentials {
                message: format!("token exchange: {e}"),
                retryable,
            });
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        // a token answer is a few hundred bytes: read at most 64 KiB of it
        const MAX_TOKEN_ANSWER: usize = 64 << 10;
        let body = super::webhook::read_bounded(response, MAX_TOKEN_ANSWER + 1)
            .await
            .map_err(DeliveryError::from_reqwest)?;
        if body.len() > MAX_TOKEN_ANSWER {
            return Err(DeliveryError::Credentials {
                message: format!("token exchange: the answer is longer than {MAX_TOKEN_ANSWER} bytes"),
                retryable: true,
            });
        }
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| DeliveryError::Credentials {
            message: format!("token exchange: unexpected answer: {e}"),
            retryable: true,
        })?;
        let token = t.access_token.clone();
        *cached = Some(CachedToken {
            token: t.access_token,
            expires: token_expiry(Instant::now(), t.expires_in),
        });
        Ok(token)
    }
}

/// When a token given `expires_in` seconds at `now` is to be renewed: its lifetime, at most a
/// day (a token endpoint's absurd `expires_in` must not overflow the clock, nor keep a token
/// for ever); an hour when the endpoint says nothing.
fn token_expiry(now: Instant, expires_in: Option<u64>) -> Instant {
    const DAY: u64 = 86_400;
    now + Duration::from_secs(expires_in.unwrap_or(3600).min(DAY))
}

/// The FCM request body for one token.
pub fn message(entry: &OutboxEntry) -> serde_json::Value {
    json!({
        "message": {
            "token": entry.target,
            "notification": { "title": entry.title, "body": entry.body },
            "data": {
                "id": entry.event_id,
                "device": entry.device,
                "type": entry.kind,
                "severity": entry.severity.clone().unwrap_or_default(),
            },
            "android": {
                "priority": if matches!(entry.kind.as_str(), "event_start" | "event_update") { "high" } else { "normal" },
                "collapse_key": entry.event_id,
            },
        }
    })
}

impl Transport for FcmTransport {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn deliver<'a>(&'a self, entry: &'a OutboxEntry) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let token = self.access_token().await?;
            let response = self
                .client
                .post(&self.send_url)
                .bearer_auth(token)
                .json(&message(entry))
                .send()
                .await
                .map_err(DeliveryError::from_reqwest)?;
            if response.status().is_success() {
                return Ok(());
            }
            let status = response.status().as_u16();
            let e = status_error(response).await;
            match (&e, status) {
                (DeliveryError::Status { detail, .. }, 400 | 404) if detail.contains("UNREGISTERED") => {
                    Err(DeliveryError::Unregistered("fcm UNREGISTERED".into()))
                }
                (_, 401) => {
                    // the access token expired early or was revoked: get a new one next time
                    *self.token.lock().await = None;
                    Err(DeliveryError::Credentials {
                        message: "fcm refused the access token (401)".into(),
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
        self.subscribers.forget_unregistered(&entry.target, "fcm");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_lifetime_from_the_endpoint_is_capped_at_a_day() {
        let now = Instant::now();
        // u64::MAX seconds would overflow `Instant + Duration` (a panic in the delivery task)
        assert_eq!(token_expiry(now, Some(u64::MAX)), now + Duration::from_secs(86_400));
        assert_eq!(token_expiry(now, Some(1_800)), now + Duration::from_secs(1_800));
        assert_eq!(token_expiry(now, None), now + Duration::from_secs(3_600));
    }
}
