//! Notifiers against local receivers on 127.0.0.1: what a real receiver verifies (Standard
//! Webhooks signatures, the FCM JWT and token exchange, the APNs JWT over HTTP/2, the ntfy
//! request), and the delivery guarantees under faults (500, timeouts, 429 with Retry-After, a
//! receiver that is down for a while, one dead endpoint next to a healthy one): every event
//! reaches the receiver's deduplicating view (by `webhook-id`) exactly once, in order per device.
//!
//! Through `plume run` with a data directory: the outbox in the store survives SIGKILL (pending
//! deliveries resumed, acknowledged ones never sent again), and push subscriptions managed with
//! `plume subscribers` (also while the run holds the store) are used and pruned.

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use plume::notify::{DeliveryStats, FileSubscribers, MemoryOutbox, NotifierParts, NotifierSink, Outbox, Subscribers};
use plume::output::OutputRecord;
use plume::runtime::ports::Sink;
use plume::spec::{
    ApnsSpec, DurationSpec, FcmSpec, NotifyPolicySpec, NtfySpec, PushSinkSpec, RetrySpec, SinkSpec, WebhookSinkSpec,
};
use receiver::{Receiver, Recorded, Reply, verify_standard_webhook, wait_for};
use ring::signature::{self, KeyPair};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const FCM_KEY: &str = include_str!("fixtures/fcm-test-key.pem");

static ENV: Once = Once::new();

/// Every variable the tests use, set once before any notifier reads one.
fn env() {
    ENV.call_once(|| {
        let apns_key = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(apns_key.as_ref())
        );
        // SAFETY: set once, before any test thread reads the environment (every test calls
        // env() first and Once blocks them until it is done).
        unsafe {
            std::env::set_var("PLUME_TEST_WEBHOOK_SECRET", SECRET);
            std::env::set_var("PLUME_TEST_APNS_KEY", pem);
            std::env::set_var("PLUME_TEST_NTFY_TOKEN", "tk_ntfy_test");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// records and notifiers

/// `events` pm25 events (start, end) for each of `devices` devices, interleaved across devices.
fn records(devices: usize, events: usize) -> Vec<OutputRecord> {
    let mut out = Vec::new();
    for e in 0..events {
        for d in 0..devices {
            let device = format!("room-{d}");
            let start = 1_700_000_000_000i64 + e as i64 * 600_000;
            for (kind, n) in [("event_start", 0u128), ("event_end", 1)] {
                let id: u128 = ((d as u128) << 64) | ((e as u128) << 1) | n;
                let json = if kind == "event_start" {
                    format!(
                        r#"{{"v":1,"type":"event_start","operator":"pm25_event","device":"{device}","id":"{id:032x}","field":"pm25","start_ts":{start},"value":40.5,"peak":48.0,"severity":"high"}}"#
                    )
                } else {
                    let end = start + 300_000;
                    format!(
                        r#"{{"v":1,"type":"event_end","operator":"pm25_event","device":"{device}","id":"{id:032x}","field":"pm25","start_ts":{start},"end_ts":{end},"duration_ms":300000,"peak":48.0,"mean":41.5,"severity":"high"}}"#
                    )
                };
                out.push(OutputRecord {
                    op: Some(1),
                    kind: plume::model::RecordKind::parse(kind).unwrap(),
                    id,
                    device: Some(device.clone().into()),
                    json: json.into(),
                    backfill: false,
                });
            }
        }
    }
    out
}

fn webhook_spec(url: &str) -> WebhookSinkSpec {
    WebhookSinkSpec {
        url: url.to_string(),
        secret_env: Some("PLUME_TEST_WEBHOOK_SECRET".into()),
        retry: RetrySpec {
            timeout: DurationSpec::from_millis(2_000),
            max_age: DurationSpec::from_millis(60_000),
            concurrency: 4,
            backoff: DurationSpec::from_millis(20),
            breaker_open: DurationSpec::from_millis(100),
            allow_insecure: false,
        },
        policy: NotifyPolicySpec::default(),
    }
}

fn notifier(spec: SinkSpec, outbox: Arc<MemoryOutbox>, subscribers: Option<Arc<dyn Subscribers>>) -> NotifierSink {
    env();
    NotifierSink::build(
        &spec,
        NotifierParts {
            pipeline: "test".into(),
            name: None,
            outbox,
            subscribers,
            drain_timeout: Duration::from_secs(60),
            dead_letters: None,
            policy_state: None,
        },
    )
    .unwrap()
    .unwrap()
}

/// Sends `records` through a webhook notifier in batches (as the hub does) and waits for the end.
fn run_webhook(spec: WebhookSinkSpec, records: &[OutputRecord]) -> (Arc<MemoryOutbox>, Arc<DeliveryStats>) {
    let outbox = Arc::new(MemoryOutbox::new());
    let mut sink = notifier(SinkSpec::Webhook(spec), outbox.clone(), None);
    for batch in records.chunks(7) {
        sink.write(batch).unwrap();
    }
    sink.finish().unwrap();
    (outbox, sink.stats())
}

/// The receiver's deduplicating view: every record delivered exactly once (by valid
/// `webhook-id`, acknowledged with 2xx exactly once), and per device in the order sent (by the
/// first arrival of each id).
fn assert_exactly_once_in_order(requests: &[Recorded], acked: impl Fn(&Recorded) -> bool, sent: &[OutputRecord]) {
    let mut first_arrival: Vec<(u64, String, String)> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut acks: HashMap<String, usize> = HashMap::new();
    for r in requests {
        let id = verify_standard_webhook(r, SECRET, 300).unwrap_or_else(|e| panic!("invalid request: {e}"));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["id"], id.as_str(), "body id == webhook-id");
        if seen.insert(id.clone()) {
            first_arrival.push((r.seq, body["device"].as_str().unwrap().to_string(), id.clone()));
        }
        if acked(r) {
            *acks.entry(id).or_default() += 1;
        }
    }
    let want: BTreeSet<String> = sent.iter().map(|r| r.id_hex()).collect();
    assert_eq!(seen, want, "distinct valid webhook-ids == records sent");
    for id in &want {
        assert_eq!(acks.get(id), Some(&1), "{id} acknowledged exactly once");
    }
    first_arrival.sort();
    let mut by_device: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, device, id) in first_arrival {
        by_device.entry(device).or_default().push(id);
    }
    let mut sent_by_device: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in sent {
        sent_by_device
            .entry(r.device.as_deref().unwrap().to_string())
            .or_default()
            .push(r.id_hex());
    }
    assert_eq!(by_device, sent_by_device, "per device, in the order sent");
}

// ---------------------------------------------------------------------------------------------
// webhooks

#[test]
fn webhook_requests_are_signed_per_standard_webhooks_with_the_documented_body() {
    let seq = Arc::new(AtomicU64::new(0));
    let rx = Receiver::start(seq, |_| Reply::ok());
    let sent = records(2, 2);
    let (outbox, stats) = run_webhook(webhook_spec(&rx.url("/hook")), &sent);
    let requests = rx.requests();
    assert_eq!(requests.len(), sent.len());
    assert_exactly_once_in_order(&requests, |_| true, &sent);
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/hook");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let record = sent.iter().find(|s| s.id_hex() == body["id"]).unwrap();
    assert_eq!(body["type"], record.kind.as_str());
    assert_eq!(body["pipeline"], "test");
    assert_eq!(body["severity"], "high");
    assert!(
        body["timestamp"].as_str().unwrap().starts_with("2023-11-14T22:"),
        "{body}"
    );
    assert_eq!(
        body["data"],
        serde_json::from_str::<serde_json::Value>(&record.json).unwrap()
    );
    assert!(body["title"].as_str().unwrap().starts_with("room-"), "{body}");
    // a signature made with another secret does not verify
    assert!(verify_standard_webhook(r, "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", 300).is_err());
    assert!(outbox.is_empty());
    assert_eq!(DeliveryStats::get(&stats.delivered), sent.len() as u64);
}

#[test]
fn receiver_answering_500_at_first_gets_every_event_once_in_order() {
    let seq = Arc::new(AtomicU64::new(0));
    let rx = Receiver::start(seq, |r| if r.attempt < 2 { Reply::status(500) } else { Reply::ok() });
    let sent = records(4, 3);
    let (outbox, stats) = run_webhook(webhook_spec(&rx.url("/")), &sent);
    assert_exactly_once_in_order(&rx.requests(), |r| r.attempt >= 2, &sent);
    assert!(DeliveryStats::get(&stats.retries) >= 2 * sent.len() as u64);
    assert!(outbox.is_empty() && outbox.dead_letters().unwrap().is_empty());
}

#[test]
fn receiver_timing_out_gets_every_event_once_in_order() {
    let seq = Arc::new(AtomicU64::new(0));
    // the first attempt of every event hangs past the client's timeout (the receiver may well
    // have processed it: the retry carries the same webhook-id)
    let rx = Receiver::start(seq, |r| {
        if r.attempt == 0 {
            Reply::ok().delayed(Duration::from_millis(1_500))
        } else {
            Reply::ok()
        }
    });
    let mut spec = webhook_spec(&rx.url("/"));
    spec.retry.timeout = DurationSpec::from_millis(300);
    let sent = records(3, 2);
    let (outbox, stats) = run_webhook(spec, &sent);
    assert_exactly_once_in_order(&rx.requests(), |r| r.attempt == 1, &sent);
    assert!(DeliveryStats::get(&stats.retries) >= sent.len() as u64);
    assert!(outbox.is_empty());
}

#[test]
fn a_429_with_retry_after_is_retried_no_sooner_than_asked() {
    let seq = Arc::new(AtomicU64::new(0));
    let rx = Receiver::start(seq, |r| {
        if r.attempt == 0 {
            Reply::status(429).with_header("retry-after", "1")
        } else {
            Reply::ok()
        }
    });
    let sent = records(2, 1);
    let (outbox, _) = run_webhook(webhook_spec(&rx.url("/")), &sent);
    let requests = rx.requests();
    assert_exactly_once_in_order(&requests, |r| r.attempt == 1, &sent);
    for id in sent.iter().map(|r| r.id_hex()) {
        let tries: Vec<_> = requests
            .iter()
            .filter(|r| r.header("webhook-id") == Some(&id))
            .collect();
        assert_eq!(tries.len(), 2);
        // backoff is 20 ms: only Retry-After explains a full second
        assert!(tries[1].at - tries[0].at >= Duration::from_secs(1), "{id}");
    }
    assert!(outbox.is_empty());
}

#[test]
fn receiver_down_for_a_while_gets_every_event_once_in_order_when_back() {
    // a port nobody listens on (yet)
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let outbox = Arc::new(MemoryOutbox::new());
    let mut sink = notifier(SinkSpec::Webhook(webhook_spec(&url)), outbox.clone(), None);
    let sent = records(5, 2);
    sink.write(&sent).unwrap();
    let stats = sink.stats();
    // failing long enough to open the circuit breaker
    assert!(wait_for(Duration::from_secs(20), || DeliveryStats::get(
        &stats.breaker_opened
    ) >= 1));
    assert_eq!(outbox.len(), sent.len(), "nothing lost while the receiver is down");
    let seq = Arc::new(AtomicU64::new(0));
    let rx = Receiver::start_on(port, seq, |_| Reply::ok());
    sink.finish().unwrap();
    assert_exactly_once_in_order(&rx.requests(), |_| true, &sent);
    assert!(outbox.is_empty());
}

#[test]
fn permanent_4xx_and_max_age_go_to_dead_letters_with_the_last_error() {
    let seq = Arc::new(AtomicU64::new(0));
    let rx = Receiver::start(seq.clone(), |_| Reply::json(400, r#"{"error":"bad payload"}"#));
    let sent = records(1, 1);
    let (outbox, stats) = run_webhook(webhook_spec(&rx.url("/")), &sent);
    assert_eq!(rx.count(), 2, "a 400 is not retried");
    let dead = outbox.dead_letters().unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead[0].error.contains("HTTP 400") && dead[0].error.contains("bad payload"));
    assert_eq!(DeliveryStats::get(&stats.dead_letters), 2);

    let failing = Receiver::start(seq, |_| Reply::status(503));
    let mut spec = webhook_spec(&failing.url("/"));
    spec.retry.max_age = DurationSpec::from_millis(500);
    let (outbox, _) = run_webhook(spec, &sent);
    let dead = outbox.dead_letters().unwrap();
    assert_eq!(dead.len(), 2);
    assert!(
        dead[0].error.contains("max_age") && dead[0].error.contains("HTTP 503"),
        "{}",
        dead[0].error
    );
    assert!(dead[0].attempts >= 2);
    // the secret never shows in what is kept
    assert!(!format!("{dead:?}").contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
}

#[test]
fn an_acknowledged_event_replayed_is_not_sent_again() {
    let seq = Arc::new(AtomicU64::new(0));
    let rx = Receiver::start(seq, |_| Reply::ok());
    let outbox = Arc::new(MemoryOutbox::new());
    let sent = records(2, 2);
    let mut sink = notifier(SinkSpec::Webhook(webhook_spec(&rx.url("/"))), outbox.clone(), None);
    sink.write(&sent).unwrap();
    sink.finish().unwrap();
    drop(sink);
    // a restart replays the same records into the same outbox
    let mut again = notifier(SinkSpec::Webhook(webhook_spec(&rx.url("/"))), outbox.clone(), None);
    again.write(&sent).unwrap();
    again.finish().unwrap();
    assert_eq!(rx.count(), sent.len());
    assert_eq!(DeliveryStats::get(&again.stats().duplicates), sent.len() as u64);
}

#[test]
fn pending_deliveries_in_the_outbox_are_resumed_by_a_new_notifier() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/");
    let outbox = Arc::new(MemoryOutbox::new());
    let sent = records(3, 1);
    {
        let mut sink = notifier(SinkSpec::Webhook(webhook_spec(&url)), outbox.clone(), None);
        sink.write(&sent).unwrap();
        // stopped without finishing, the receiver never up
    }
    assert_eq!(outbox.len(), sent.len());
    let seq = Arc::new(AtomicU64::new(0));
    let rx = Receiver::start_on(port, seq, |_| Reply::ok());
    let mut sink = notifier(SinkSpec::Webhook(webhook_spec(&url)), outbox.clone(), None);
    sink.finish().unwrap();
    assert_exactly_once_in_order(&rx.requests(), |_| true, &sent);
    assert!(outbox.is_empty());
}

#[test]
fn a_dead_endpoint_does_not_delay_a_healthy_one() {
    let seq = Arc::new(AtomicU64::new(0));
    // hangs every request for longer than the client waits; one request at a time
    let dead = Receiver::start(seq.clone(), |_| Reply::ok().delayed(Duration::from_secs(30)));
    let healthy = Receiver::start(seq.clone(), |_| Reply::ok());
    let mut dead_spec = webhook_spec(&dead.url("/"));
    dead_spec.retry.timeout = DurationSpec::from_millis(3_000);
    dead_spec.retry.max_age = DurationSpec::from_millis(1_000);
    dead_spec.retry.concurrency = 1;
    let (dead_outbox, healthy_outbox) = (Arc::new(MemoryOutbox::new()), Arc::new(MemoryOutbox::new()));
    let mut dead_sink = notifier(SinkSpec::Webhook(dead_spec), dead_outbox.clone(), None);
    let mut healthy_sink = notifier(SinkSpec::Webhook(webhook_spec(&healthy.url("/"))), healthy_outbox, None);
    let sent = records(10, 3);
    for batch in sent.chunks(5) {
        // as the hub does: the dead endpoint's sink first
        dead_sink.write(batch).unwrap();
        healthy_sink.write(batch).unwrap();
    }
    healthy_sink.finish().unwrap();
    let healthy_requests = healthy.requests();
    assert_exactly_once_in_order(&healthy_requests, |_| true, &sent);
    // by arrival order: every healthy delivery arrived while the dead endpoint had seen at most
    // its one concurrent request
    let last_healthy = healthy_requests.iter().map(|r| r.seq).max().unwrap();
    let dead_before = dead.requests().iter().filter(|r| r.seq < last_healthy).count();
    assert!(
        dead_before <= 1,
        "{dead_before} dead requests before the healthy ones were done"
    );
    dead_sink.finish().unwrap();
    assert_eq!(dead_outbox.dead_letters().unwrap().len(), sent.len());
}

// ---------------------------------------------------------------------------------------------
// push

fn jwt_parts(jwt: &str) -> (serde_json::Value, serde_json::Value, Vec<u8>, String) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let dec = |s: &str| URL_SAFE_NO_PAD.decode(s).unwrap();
    (
        serde_json::from_slice(&dec(parts[0])).unwrap(),
        serde_json::from_slice(&dec(parts[1])).unwrap(),
        dec(parts[2]),
        format!("{}.{}", parts[0], parts[1]),
    )
}

fn form_value<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    body.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn fcm_signs_an_rs256_assertion_exchanges_it_once_and_drops_unregistered_tokens() {
    let seq = Arc::new(AtomicU64::new(0));
    let rx = Receiver::start(seq, |r| {
        if r.path == "/token" {
            return Reply::json(
                200,
                r#"{"access_token":"ya29.test-token","expires_in":3599,"token_type":"Bearer"}"#,
            );
        }
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        if body["message"]["token"] == "tok-gone" {
            return Reply::json(
                404,
                r#"{"error":{"code":404,"status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#,
            );
        }
        Reply::json(200, r#"{"name":"projects/plume-test/messages/1"}"#)
    });
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("sa.json");
    let token_uri = rx.url("/token");
    std::fs::write(
        &key_file,
        serde_json::json!({
            "type": "service_account", "project_id": "plume-test",
            "private_key": FCM_KEY, "client_email": "plume@plume-test.iam.gserviceaccount.com",
            "token_uri": token_uri,
        })
        .to_string(),
    )
    .unwrap();
    // the variable holds a path to the key here
    let var = "PLUME_TEST_FCM_KEY_PATH";
    env();
    unsafe { std::env::set_var(var, &key_file) };
    let subs = Arc::new(FileSubscribers::in_memory());
    subs.add("room-0", "tok-a").unwrap();
    subs.add("room-0", "tok-gone").unwrap();
    subs.add("*", "tok-ops").unwrap();
    let spec = SinkSpec::Push(PushSinkSpec::Fcm(FcmSpec {
        service_account_env: var.into(),
        endpoint: Some(rx.url("")),
        token_endpoint: None,
        subscribers: None,
        retry: RetrySpec {
            timeout: DurationSpec::from_millis(2_000),
            max_age: DurationSpec::from_millis(60_000),
            concurrency: 4,
            backoff: DurationSpec::from_millis(20),
            breaker_open: DurationSpec::from_millis(100),
            allow_insecure: false,
        },
        policy: NotifyPolicySpec::default(),
    }));
    let outbox = Arc::new(MemoryOutbox::new());
    let mut sink = notifier(spec, outbox.clone(), Some(subs.clone()));
    let sent = records(2, 1);
    sink.write(&sent).unwrap();
    sink.finish().unwrap();
    let requests = rx.requests();

    // one token exchange, with a valid RS256 assertion
    let exchanges: Vec<_> = requests.iter().filter(|r| r.path == "/token").collect();
    assert_eq!(exchanges.len(), 1, "the access token is cached");
    let ex = exchanges[0];
    assert_eq!(ex.header("content-type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(
        form_value(&ex.body, "grant_type"),
        Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")
    );
    let (header, claims, sig, signed) = jwt_parts(form_value(&ex.body, "assertion").unwrap());
    assert_eq!(header["alg"], "RS256");
    assert_eq!(claims["iss"], "plume@plume-test.iam.gserviceaccount.com");
    assert_eq!(claims["scope"], "https://www.googleapis.com/auth/firebase.messaging");
    assert_eq!(claims["aud"], token_uri.as_str());
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 3600);
    let der = STANDARD
        .decode(FCM_KEY.lines().filter(|l| !l.starts_with("-----")).collect::<String>())
        .unwrap();
    let public = ring::rsa::KeyPair::from_pkcs8(&der)
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();
    signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, public)
        .verify(signed.as_bytes(), &sig)
        .expect("the assertion verifies with the service account's public key");

    // room-0: tok-a, tok-gone (once: then it is gone), tok-ops; room-1: tok-ops; two records each
    let sends: Vec<_> = requests.iter().filter(|r| r.path.ends_with("messages:send")).collect();
    assert_eq!(sends.len(), 7);
    for s in &sends {
        assert_eq!(s.path, "/v1/projects/plume-test/messages:send");
        assert_eq!(s.header("authorization"), Some("Bearer ya29.test-token"));
        let m: serde_json::Value = serde_json::from_str(&s.body).unwrap();
        assert!(
            m["message"]["notification"]["title"]
                .as_str()
                .unwrap()
                .starts_with("room-")
        );
        assert!(m["message"]["data"]["id"].as_str().unwrap().len() == 32);
    }
    assert_eq!(DeliveryStats::get(&sink.stats().tokens_removed), 1);
    assert_eq!(
        subs.tokens_for("room-0").unwrap(),
        ["tok-a", "tok-ops"],
        "UNREGISTERED removes the token"
    );
    assert!(outbox.is_empty() && outbox.dead_letters().unwrap().is_empty());
}

#[test]
fn apns_sends_an_es256_provider_token_over_http2_and_drops_a_410_token() {
    let seq = Arc::new(AtomicU64::new(0));
    let rx = Receiver::start(seq, |r| {
        if r.path.ends_with("/tok-gone") {
            Reply::json(410, r#"{"reason":"Unregistered","timestamp":1700000000000}"#)
        } else {
            Reply::ok().with_header("apns-id", "00000000-0000-0000-0000-000000000001")
        }
    });
    let subs = Arc::new(FileSubscribers::in_memory());
    subs.add("room-0", "tok-a").unwrap();
    subs.add("room-0", "tok-gone").unwrap();
    let spec = SinkSpec::Push(PushSinkSpec::Apns(ApnsSpec {
        team_id: "TEAM123456".into(),
        key_id: "KEY1234567".into(),
        key_env: "PLUME_TEST_APNS_KEY".into(),
        topic: "org.example.air".into(),
        endpoint: Some(rx.url("")),
        subscribers: None,
        retry: RetrySpec {
            timeout: DurationSpec::from_millis(2_000),
            max_age: DurationSpec::from_millis(60_000),
            concurrency: 4,
            backoff: DurationSpec::from_millis(20),
            breaker_open: DurationSpec::from_millis(100),
            allow_insecure: false,
        },
        policy: NotifyPolicySpec::default(),
    }));
    let outbox = Arc::new(MemoryOutbox::new());
    let mut sink = notifier(spec, outbox.clone(), Some(subs.clone()));
    let sent = records(1, 1);
    sink.write(&sent).unwrap();
    sink.finish().unwrap();
    let requests = rx.requests();
    assert_eq!(requests.len(), 3, "tok-a twice, tok-gone once (then removed)");
    let pem = std::env::var("PLUME_TEST_APNS_KEY").unwrap();
    let der = STANDARD
        .decode(pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>())
        .unwrap();
    let key = signature::EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &der,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    let public = signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, key.public_key().as_ref());
    for r in &requests {
        assert_eq!(r.version, hyper::Version::HTTP_2);
        assert_eq!(r.method, "POST");
        assert!(r.path.starts_with("/3/device/tok-"));
        assert_eq!(r.header("apns-topic"), Some("org.example.air"));
        assert_eq!(r.header("apns-push-type"), Some("alert"));
        let collapse = r.header("apns-collapse-id").unwrap();
        assert!(sent.iter().any(|s| s.id_hex() == collapse));
        let jwt = r.header("authorization").unwrap().strip_prefix("bearer ").unwrap();
        let (header, claims, sig, signed) = jwt_parts(jwt);
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], "KEY1234567");
        assert_eq!(claims["iss"], "TEAM123456");
        assert!(claims["iat"].as_i64().unwrap() > 1_700_000_000);
        public
            .verify(signed.as_bytes(), &sig)
            .expect("ES256 signature verifies");
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert!(body["aps"]["alert"]["title"].as_str().unwrap().starts_with("room-0"));
    }
    assert_eq!(subs.tokens_for("room-0").unwrap(), ["tok-a"]);
    assert_eq!(DeliveryStats::get(&sink.stats().tokens_removed), 1);
}

#[test]
fn ntfy_gets_title_priority_tags_and_the_bearer_token() {
    let seq = Arc::new(AtomicU64::new(0));
    let rx = Receiver::start(seq, |_| Reply::json(200, r#"{"id":"x"}"#));
    let spec = SinkSpec::Push(PushSinkSpec::Ntfy(NtfySpec {
        server: rx.url(""),
        topic: "office-air".into(),
        token_env: Some("PLUME_TEST_NTFY_TOKEN".into()),
        retry: RetrySpec {
            timeout: DurationSpec::from_millis(2_000),
            max_age: DurationSpec::from_millis(60_000),
            concurrency: 4,
            backoff: DurationSpec::from_millis(20),
            breaker_open: DurationSpec::from_millis(100),
            allow_insecure: false,
        },
        policy: NotifyPolicySpec {
            title: Some("Air in {device}: {field} {peak} µg/m³".into()),
            ..Default::default()
        },
    }));
    let outbox = Arc::new(MemoryOutbox::new());
    let mut sink = notifier(spec, outbox, None);
    let sent = records(1, 1);
    sink.write(&sent).unwrap();
    sink.finish().unwrap();
    let requests = rx.requests();
    assert_eq!(requests.len(), 2);
    let (start, end) = (&requests[0], &requests[1]);
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/office-air");
        assert_eq!(r.header("authorization"), Some("Bearer tk_ntfy_test"));
        // not ASCII: an RFC 2047 encoded word
        let title = r.header("title").unwrap();
        let b64 = title.strip_prefix("=?UTF-8?B?").unwrap().strip_suffix("?=").unwrap();
        assert_eq!(
            String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap(),
            "Air in room-0: pm25 48 µg/m³"
        );
    }
    assert_eq!(start.header("priority"), Some("4"));
    assert_eq!(start.header("tags"), Some("warning,high"));
    assert_eq!(end.header("priority"), Some("3"));
    assert_eq!(end.header("tags"), Some("white_check_mark,high"));
    assert!(
        start.body.starts_with("pm25 reached 48 at 2023-11-14"),
        "{}",
        start.body
    );
    assert!(end.body.starts_with("pm25 event over after 5m 0s"), "{}", end.body);
}

#[test]
fn quiet_hours_hold_notifications_and_send_one_digest_after() {
    let seq = Arc::new(AtomicU64::new(0));
    let rx = Receiver::start(seq, |_| Reply::ok());
    let mut spec = webhook_spec(&rx.url("/"));
    // records() starts 2023-11-14 22:13:20 UTC; events every 10 minutes
    spec.policy.quiet_hours = Some(plume::spec::QuietHoursSpec {
        from: "22:00".into(),
        to: "22:30".into(),
        timezone: "UTC".into(),
        critical: vec![],
    });
    let sent = records(1, 4);
    let (outbox, stats) = run_webhook(spec, &sent);
    let requests = rx.requests();
    // events 0 and 1 (22:13–22:28) are held; 22:33 releases them as one digest
    let kinds: Vec<String> = requests
        .iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut sorted = kinds.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["digest", "event_end", "event_end", "event_start", "event_start"]
    );
    let digest_request = &requests[kinds.iter().position(|k| k == "digest").unwrap()];
    let digest: serde_json::Value = serde_json::from_str(&digest_request.body).unwrap();
    assert_eq!(
        digest["items"].as_array().unwrap().len(),
        4,
        "events 0 and 1, start and end"
    );
    assert!(verify_standard_webhook(digest_request, SECRET, 300).is_ok());
    assert_eq!(DeliveryStats::get(&stats.held), 4);
    assert!(outbox.is_empty());
}

/// An event of `room-0` as its records: start, updates with `reasons` (`None`: a record from
/// before reasons existed), end.
fn event_with_updates(reasons: &[Option<&str>]) -> Vec<OutputRecord> {
    let start = 1_700_000_000_000i64;
    let record = |n: u128, kind: &str, json: String| OutputRecord {
        op: Some(1),
        kind: plume::model::RecordKind::parse(kind).unwrap(),
        id: n,
        device: Some("room-0".into()),
        json: json.into(),
        backfill: false,
    };
    let mut out = vec![record(
        1,
        "event_start",
        format!(
            r#"{{"v":1,"type":"event_start","operator":"pm25_event","device":"room-0","id":"{:032x}","field":"pm25","start_ts":{start},"value":40.5,"peak":40.5,"severity":"moderate"}}"#,
            1
        ),
    )];
    for (i, reason) in reasons.iter().enumerate() {
        let n = 2 + i as u128;
        let reason = reason.map_or(String::new(), |r| format!(r#","reason":"{r}""#));
        out.push(record(
            n,
            "event_update",
            format!(
                r#"{{"v":1,"type":"event_update","operator":"pm25_event","device":"room-0","id":"{n:032x}","field":"pm25","start_ts":{start},"decided_ts":{},"peak":80.0,"severity":"high","previous_severity":"moderate"{reason}}}"#,
                start + 60_000 * (i as i64 + 1)
            ),
        ));
    }
    out.push(record(
        99,
        "event_end",
        format!(
            r#"{{"v":1,"type":"event_end","operator":"pm25_event","device":"room-0","id":"{:032x}","field":"pm25","start_ts":{start},"end_ts":{},"duration_ms":900000,"peak":80.0,"mean":50.0,"severity":"high"}}"#,
            99,
            start + 900_000
        ),
    ));
    out
}

#[test]
fn a_route_with_notify_on_escalation_pages_only_on_escalations() {
    let rx = Receiver::start(Arc::new(AtomicU64::new(0)), |_| Reply::ok());
    let mut spec = webhook_spec(&rx.url("/pager"));
    spec.policy.notify_on = Some(vec![plume::spec::NotifyOn::Escalation]);
    let sent = event_with_updates(&[None, Some("reminder"), Some("escalation"), Some("de_escalation")]);
    run_webhook(spec, &sent);
    let mut got: Vec<(String, Option<String>)> = rx
        .requests()
        .iter()
        .map(|r| {
            verify_standard_webhook(r, SECRET, 300).unwrap_or_else(|e| panic!("{e}"));
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            (
                body["type"].as_str().unwrap().to_string(),
                body["data"]["reason"].as_str().map(str::to_string),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("event_update".to_string(), None),
            ("event_update".to_string(), Some("escalation".to_string())),
        ],
        "the update without a reason and the escalation, nothing else"
    );
}

// ---------------------------------------------------------------------------------------------
// the aq1 webhook pipeline, end to end through `plume run`

/// `plume run pipelines/webhook-aq1.yaml` on `input` with its own data directory, the file
/// output at `out` and the webhook at `url` (signed with `SECRET`, retries after `backoff`).
fn webhook_aq1(
    input: &std::path::Path,
    state: &std::path::Path,
    out: &std::path::Path,
    url: &str,
    backoff: &str,
) -> std::process::Command {
    let mut c = common::plume();
    c.args(["run", "pipelines/webhook-aq1.yaml", "--input"])
        .arg(input)
        // its own state: the pipeline's default directory would resume another run's devices
        .arg("--data-dir")
        .arg(state)
        .env("PLUME_OUTPUT", out)
        .env("PLUME_WEBHOOK_URL", url)
        .env("PLUME_WEBHOOK_SECRET", SECRET)
        .env("PLUME_WEBHOOK_BACKOFF", backoff);
    c
}

#[test]
fn webhook_aq1_against_a_flaky_receiver_delivers_every_event_of_the_file_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::aq1_input(dir.path(), 50, 20_000, 3);
    let out = dir.path().join("out.jsonl");
    let seq = Arc::new(AtomicU64::new(0));
    // fails part of the time: every third request, with 500, 503 or 429
    let rx = Receiver::start(seq, |r| match r.seq % 9 {
        0 => Reply::status(500),
        3 => Reply::status(503),
        6 => Reply::status(429).with_header("retry-after", "0"),
        _ => Reply::ok(),
    });
    let result = webhook_aq1(&input, &dir.path().join("state"), &out, &rx.url("/aq1"), "10ms")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "plume run failed:\n{stderr}");
    assert!(
        !stderr.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        "the secret never shows"
    );
    // the events the file output holds, per device in order
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut lines: HashMap<String, serde_json::Value> = HashMap::new();
    for line in std::fs::read_to_string(&out).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if matches!(v["type"].as_str(), Some("event_start" | "event_end")) {
            let id = v["id"].as_str().unwrap().to_string();
            want.entry(v["device"].as_str().unwrap().to_string())
                .or_default()
                .push(id.clone());
            lines.insert(id, v);
        }
    }
    let events: usize = want.values().map(Vec::len).sum();
    assert!(events >= 20, "the input should have pm25 events, found {events}");
    let requests = rx.requests();
    assert!(requests.len() > events, "some requests failed and were retried");
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut sorted = requests.clone();
    sorted.sort_by_key(|r| r.seq);
    for r in &sorted {
        let id = verify_standard_webhook(r, SECRET, 300).unwrap_or_else(|e| panic!("{e}"));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            body["data"], lines[&id],
            "the body carries the record of the file output"
        );
        if seen.insert(id.clone()) {
            got.entry(body["device"].as_str().unwrap().to_string())
                .or_default()
                .push(id);
        }
    }
    assert_eq!(
        seen.len(),
        events,
        "distinct valid webhook-ids == events in the file output"
    );
    assert_eq!(got, want, "per device in the order of the file output");
}

// ---------------------------------------------------------------------------------------------
// the durable outbox and subscriptions, through `plume run` with a data directory

/// `plume ARGS…` that must succeed; its stdout.
fn plume_ok(args: &[&str], dir: &std::path::Path) -> String {
    let out = common::plume().args(args).arg("--data-dir").arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "plume {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn outbox_of(state: &std::path::Path, sink: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&plume_ok(&["outbox", "--json"], state)).unwrap();
    v["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sink"] == sink)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// The event ids of a file output, per device in order, and the records by id.
fn events_of(out: &std::path::Path) -> (BTreeMap<String, Vec<String>>, HashMap<String, serde_json::Value>) {
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut lines = HashMap::new();
    for line in std::fs::read_to_string(out).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if matches!(v["type"].as_str(), Some("event_start" | "event_end")) {
            let id = v["id"].as_str().unwrap().to_string();
            want.entry(v["device"].as_str().unwrap().to_string())
                .or_default()
                .push(id.clone());
            lines.insert(id, v);
        }
    }
    (want, lines)
}

#[test]
fn webhook_aq1_killed_with_deliveries_pending_delivers_them_after_a_restart_and_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::aq1_input(dir.path(), 50, 20_000, 3);
    let out = dir.path().join("out.jsonl");
    let state = dir.path().join("state");
    let seq = Arc::new(AtomicU64::new(0));
    let healthy = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    // ids the receiver acknowledged (answered 2xx), with the arrival number of the request
    let acked: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let rx = {
        let (healthy, answered, acked) = (healthy.clone(), answered.clone(), acked.clone());
        // acknowledges the first 10 requests, then fails (503) until it is healthy again
        Receiver::start(seq, move |r| {
            let ok = healthy.load(Ordering::SeqCst) || answered.fetch_add(1, Ordering::SeqCst) < 10;
            if ok {
                let id = r.header("webhook-id").unwrap_or("").to_string();
                acked.lock().unwrap().push((r.seq, id));
                Reply::ok()
            } else {
                Reply::status(503)
            }
        })
    };
    let run = || webhook_aq1(&input, &state, &out, &rx.url("/aq1"), "50ms");
    let log = std::fs::File::create(dir.path().join("first.log")).unwrap();
    let mut first = run().stdout(std::process::Stdio::null()).stderr(log).spawn().unwrap();
    // the 10 acknowledged, then failures (the breaker opens after 5 in a row)
    assert!(
        wait_for(Duration::from_secs(60), || rx.count() >= 15),
        "the receiver saw {} requests",
        rx.count()
    );
    // every acknowledgement was answered well before the kill
    std::thread::sleep(Duration::from_millis(500));
    let pending = outbox_of(&state, "webhook:0");
    assert!(
        pending["pending"].as_u64().unwrap() > 0,
        "deliveries pending in the store before the kill: {pending}"
    );
    assert_eq!(pending["delivered"], 10, "{pending}");
    first.kill().unwrap(); // SIGKILL
    let status = first.wait().unwrap();
    assert!(!status.success(), "killed, not finished");
    let before_kill = rx.count() as u64;
    let acked_before: BTreeSet<String> = acked.lock().unwrap().iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(acked_before.len(), 10);

    healthy.store(true, Ordering::SeqCst);
    let second = run().output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "the restarted run failed:\n{stderr}");
    assert!(
        !stderr.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        "the secret never shows"
    );

    let (want, lines) = events_of(&out);
    let events: usize = want.values().map(Vec::len).sum();
    assert!(events > 20, "the input should have pm25 events, found {events}");
    let mut requests = rx.requests();
    requests.sort_by_key(|r| r.seq);
    let mut seen = BTreeSet::new();
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &requests {
        let id = verify_standard_webhook(r, SECRET, 300).unwrap_or_else(|e| panic!("{e}"));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            body["data"], lines[&id],
            "the body carries the record of the file output"
        );
        if r.seq >= before_kill {
            assert!(
                !acked_before.contains(&id),
                "{id} was acknowledged before the kill and sent again after the restart"
            );
        }
        if seen.insert(id.clone()) {
            got.entry(body["device"].as_str().unwrap().to_string())
                .or_default()
                .push(id);
        }
    }
    assert_eq!(
        seen.len(),
        events,
        "distinct valid webhook-ids == events in the file output"
    );
    assert_eq!(got, want, "per device in the order of the file output");
    let after = outbox_of(&state, "webhook:0");
    assert_eq!(after["pending"], 0, "{after}");
    assert_eq!(after["dead_letters"], 0, "{after}");
    assert_eq!(
        after["delivered"], events as u64,
        "each event acknowledged once: {after}"
    );
}

/// The webhook-aq1 pipeline with its webhook replaced by an APNs push to `endpoint`.
#[test]
fn dead_letters_retried_with_the_cli_are_delivered_by_the_next_run_and_a_dropped_one_never() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::aq1_input(dir.path(), 50, 20_000, 3);
    let out = dir.path().join("out.jsonl");
    let state = dir.path().join("state");
    let healthy = Arc::new(AtomicBool::new(false));
    let rx = {
        let healthy = healthy.clone();
        // rejects every request (a permanent error: straight to dead letters) until fixed
        Receiver::start(Arc::new(AtomicU64::new(0)), move |_| {
            if healthy.load(Ordering::SeqCst) {
                Reply::ok()
            } else {
                Reply::status(400)
            }
        })
    };
    let run = || {
        let out = webhook_aq1(&input, &state, &out, &rx.url("/aq1"), "50ms")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run();
    let (want, _) = events_of(&out);
    let events: usize = want.values().map(Vec::len).sum();
    assert!(events >= 4, "the input should have pm25 events, found {events}");
    let before = outbox_of(&state, "webhook:0");
    assert_eq!(before["dead_letters"], events as u64, "{before}");
    assert_eq!(before["pending"], 0, "{before}");
    let first_requests = rx.count();

    let listed: serde_json::Value =
        serde_json::from_str(&plume_ok(&["outbox", "--json", "--dead-letters"], &state)).unwrap();
    let dead: Vec<String> = listed["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(dead.len(), events);
    let dropped = dead[0].clone();
    let text = plume_ok(&["outbox", "--drop-dead-letters", "--id", &dropped], &state);
    assert!(text.contains("webhook:0: 1 dead letters dropped"), "{text}");
    // an id that is not a dead letter (any more) is reported and fails
    let again = common::plume()
        .args(["outbox", "--drop-dead-letters", "--id", &dropped, "--data-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains(&dropped));
    // not while something holds the store (here: this test, as a run would)
    {
        let _held = plume::store::StateStore::open_tool(&state).unwrap();
        let refused = common::plume()
            .args(["outbox", "--retry-dead-letters", "--data-dir"])
            .arg(&state)
            .output()
            .unwrap();
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("in use by a running plume"), "{stderr}");
    }
    let text = plume_ok(&["outbox", "--retry-dead-letters", "--sink", "webhook:0"], &state);
    assert!(
        text.contains(&format!("webhook:0: {} dead letters back to pending", events - 1)),
        "{text}"
    );
    let middle = outbox_of(&state, "webhook:0");
    assert_eq!(middle["pending"], (events - 1) as u64, "{middle}");
    assert_eq!(middle["dead_letters"], 0, "{middle}");

    healthy.store(true, Ordering::SeqCst);
    run();
    let mut delivered = BTreeSet::new();
    for r in rx.requests().iter().filter(|r| r.seq >= first_requests as u64) {
        let id = verify_standard_webhook(r, SECRET, 300).unwrap_or_else(|e| panic!("{e}"));
        assert!(delivered.insert(id.clone()), "{id} delivered twice");
    }
    let expected: BTreeSet<String> = want.values().flatten().filter(|id| **id != dropped).cloned().collect();
    assert_eq!(delivered, expected, "every retried dead letter, not the dropped one");
    let after = outbox_of(&state, "webhook:0");
    assert_eq!(after["pending"], 0, "{after}");
    assert_eq!(after["delivered"], (events - 1) as u64, "{after}");
}

fn apns_pipeline(dir: &std::path::Path, endpoint: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(common::repo().join("pipelines/webhook-aq1.yaml")).unwrap();
    let head = &text[..text.find("      - webhook:").unwrap()];
    let tail = &text[text.find("\nshutdown:").unwrap()..];
    let push = format!(
        r#"      - push:
          apns:
            team_id: TEAM123456
            key_id: KEY1234567
            key_env: PLUME_TEST_APNS_KEY
            topic: org.example.air
            endpoint: "{endpoint}"
            backoff: 20ms
            breaker_open: 100ms
"#
    );
    let path = dir.join("apns-aq1.yaml");
    std::fs::write(
        &path,
        format!("{head}{push}{tail}").replace("drain_timeout: 5m", "drain_timeout: 1m"),
    )
    .unwrap();
    path
}

/// The device with the highest pm25 reading of an aq1 input (it certainly has an event).
fn device_with_an_event(input: &std::path::Path) -> String {
    let mut best = (0.0f64, String::new());
    for line in std::fs::read_to_string(input).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let pm25 = v["pm25"].as_f64().unwrap_or(0.0);
        if pm25 > best.0 {
            best = (pm25, v["device"].as_str().unwrap().to_string());
        }
    }
    assert!(best.0 > 40.0);
    best.1
}

fn subscriptions(state: &std::path::Path) -> (BTreeSet<(String, String, String)>, serde_json::Value) {
    let v: serde_json::Value =
        serde_json::from_str(&plume_ok(&["subscribers", "list", "--json", "--show-tokens"], state)).unwrap();
    let set = v["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["provider"].as_str().unwrap().to_string(),
                s["device"].as_str().unwrap().to_string(),
                s["token"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (set, v)
}

fn apns_receiver(seq: Arc<AtomicU64>) -> Receiver {
    Receiver::start(seq, |r| {
        if r.path.ends_with("/tok-gone") {
            Reply::json(410, r#"{"reason":"Unregistered","timestamp":1700000000000}"#)
        } else {
            Reply::ok().with_header("apns-id", "00000000-0000-0000-0000-000000000001")
        }
    })
}

/// (device token, collapse id = event id) of every APNs request.
fn pushes(rx: &Receiver) -> Vec<(String, String)> {
    rx.requests()
        .iter()
        .map(|r| {
            (
                r.path.strip_prefix("/3/device/").unwrap().to_string(),
                r.header("apns-collapse-id").unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn subscribers_cli_roundtrip_drives_an_apns_run_and_unregistered_tokens_leave_the_store() {
    env();
    let dir = tempfile::tempdir().unwrap();
    let input = common::aq1_input(dir.path(), 50, 20_000, 3);
    let state = dir.path().join("state");
    let device = device_with_an_event(&input);
    let add = |device: &str, token: &str| {
        plume_ok(
            &[
                "subscribers",
                "add",
                "--provider",
                "apns",
                "--device",
                device,
                "--token",
                token,
            ],
            &state,
        )
    };
    assert!(add(&device, "tok-one").starts_with("added"));
    assert!(add(&device, "tok-one").starts_with("unchanged"), "added once");
    add("*", "tok-all");
    add("*", "tok-gone");
    add(&device, "tok-removed");
    plume_ok(
        &[
            "subscribers",
            "add",
            "--provider",
            "fcm",
            "--device",
            &device,
            "--token",
            "tok-fcm",
        ],
        &state,
    );
    let (set, _) = subscriptions(&state);
    let row = |p: &str, d: &str, t: &str| (p.to_string(), d.to_string(), t.to_string());
    assert_eq!(
        set,
        BTreeSet::from([
            row("apns", "*", "tok-all"),
            row("apns", "*", "tok-gone"),
            row("apns", &device, "tok-one"),
            row("apns", &device, "tok-removed"),
            row("fcm", &device, "tok-fcm"),
        ])
    );
    let removed = plume_ok(
        &[
            "subscribers",
            "remove",
            "--provider",
            "apns",
            "--device",
            &device,
            "--token",
            "tok-removed",
        ],
        &state,
    );
    assert!(removed.starts_with("removed"), "{removed}");
    // the readable list shows tokens shortened only
    let text = plume_ok(&["subscribers", "list", "--device", &device], &state);
    assert!(
        text.contains(&device) && !text.contains("tok-one") && text.contains("tok-…"),
        "{text}"
    );

    let seq = Arc::new(AtomicU64::new(0));
    let rx = apns_receiver(seq);
    let pipeline = apns_pipeline(dir.path(), &rx.url(""));
    let out = dir.path().join("out.jsonl");
    let result = common::plume()
        .arg("run")
        .arg(&pipeline)
        .arg("--input")
        .arg(&input)
        .arg("--data-dir")
        .arg(&state)
        .env("PLUME_OUTPUT", &out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "plume run failed:\n{stderr}");
    assert!(!stderr.contains("tok-gone"), "tokens never show in full in the log");

    let (want, _) = events_of(&out);
    let all_events: BTreeSet<String> = want.values().flatten().cloned().collect();
    let got = pushes(&rx);
    let to = |token: &str| -> Vec<String> {
        got.iter()
            .filter(|(t, _)| t == token)
            .map(|(_, id)| id.clone())
            .collect()
    };
    let mut all = to("tok-all");
    all.sort();
    assert_eq!(
        all.into_iter().collect::<BTreeSet<_>>(),
        all_events,
        "`*` follows every device"
    );
    assert_eq!(to("tok-all").len(), all_events.len(), "each event once");
    assert_eq!(
        to("tok-one").into_iter().collect::<BTreeSet<_>>(),
        want[&device].iter().cloned().collect::<BTreeSet<_>>(),
        "a device's token gets that device's events"
    );
    assert!(to("tok-removed").is_empty(), "a removed token gets nothing");
    assert!(
        to("tok-fcm").is_empty(),
        "another provider's token is not an APNs token"
    );
    let gone = to("tok-gone").len();
    assert!((1..=8).contains(&gone), "{gone} pushes to the unregistered token");

    // the 410 removed the token from the store, and it was counted
    let (set, v) = subscriptions(&state);
    assert!(!set.iter().any(|(_, _, t)| t == "tok-gone"), "{set:?}");
    assert!(set.contains(&row("apns", "*", "tok-all")));
    assert_eq!(v["removed_unregistered"]["apns"], 1, "{v}");
    let outbox = outbox_of(&state, "apns:0");
    assert_eq!(outbox["pending"], 0, "{outbox}");
    assert_eq!(outbox["dead_letters"], 0, "{outbox}");
}

#[test]
fn a_subscriber_added_while_plume_runs_is_applied_by_the_run_within_a_second() {
    env();
    let dir = tempfile::tempdir().unwrap();
    let input = common::aq1_input(dir.path(), 50, 20_000, 3);
    let text = std::fs::read_to_string(&input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (first_half, second_half) = lines.split_at(lines.len() / 2);
    let state = dir.path().join("state");
    plume_ok(
        &[
            "subscribers",
            "add",
            "--provider",
            "apns",
            "--device",
            "*",
            "--token",
            "tok-early",
        ],
        &state,
    );
    let seq = Arc::new(AtomicU64::new(0));
    let rx = apns_receiver(seq);
    let pipeline = apns_pipeline(dir.path(), &rx.url(""));
    let out = dir.path().join("out.jsonl");
    let mut child = common::plume()
        .arg("run")
        .arg(&pipeline)
        .args(["--input", "-", "--data-dir"])
        .arg(&state)
        .env("PLUME_OUTPUT", &out)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    use std::io::Write as _;
    stdin.write_all((first_half.join("\n") + "\n").as_bytes()).unwrap();
    stdin.flush().unwrap();
    // the run holds the store once it pushes
    assert!(
        wait_for(Duration::from_secs(60), || rx.count() > 0),
        "no push from the first half"
    );
    // and has pushed everything of the first half (the count stays put)
    let mut last = (rx.count(), std::time::Instant::now());
    assert!(wait_for(Duration::from_secs(60), || {
        let n = rx.count();
        if n != last.0 {
            last = (n, std::time::Instant::now());
        }
        last.1.elapsed() > Duration::from_millis(700)
    }));
    let started = std::time::Instant::now();
    let added = plume_ok(
        &[
            "subscribers",
            "add",
            "--provider",
            "apns",
            "--device",
            "*",
            "--token",
            "tok-late",
        ],
        &state,
    );
    assert!(added.starts_with("added by the running plume"), "{added}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "applied within a second or so"
    );
    // readable while the run holds the store
    let (set, _) = subscriptions(&state);
    assert!(
        set.contains(&("apns".to_string(), "*".to_string(), "tok-late".to_string())),
        "{set:?}"
    );
    let before = pushes(&rx).len();
    stdin.write_all((second_half.join("\n") + "\n").as_bytes()).unwrap();
    drop(stdin);
    let result = child.wait_with_output().unwrap();
    assert!(
        result.status.success(),
        "plume run failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let got = pushes(&rx);
    assert!(got[..before].iter().all(|(t, _)| t == "tok-early"));
    let ids = |from: usize, token: &str| -> Vec<String> {
        got[from..]
            .iter()
            .filter(|(t, _)| t == token)
            .map(|(_, id)| id.clone())
            .collect()
    };
    let (late, early_after) = (ids(0, "tok-late"), ids(before, "tok-early"));
    assert!(!early_after.is_empty(), "the second half has events");
    // from the change on, both tokens get every event, once
    let set = |v: &[String]| v.iter().cloned().collect::<BTreeSet<_>>();
    assert_eq!(set(&late), set(&early_after));
    assert_eq!(late.len(), set(&late).len());
}

#[test]
fn webhook_dead_letters_reach_the_dead_letters_route_and_stay_in_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::aq1_input(dir.path(), 50, 20_000, 3);
    let out = dir.path().join("out.jsonl");
    let state = dir.path().join("state");
    let seq = Arc::new(AtomicU64::new(0));
    // refuses every payload for good
    let rx = Receiver::start(seq, |_| Reply::json(400, r#"{"error":"schema"}"#));
    let result = webhook_aq1(&input, &state, &out, &rx.url("/aq1"), "1s")
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "plume run failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let (want, lines) = events_of(&out);
    let events: BTreeSet<String> = want.values().flatten().cloned().collect();
    assert_eq!(rx.count(), events.len(), "a 400 is not retried");
    // the file output (the `all` route) holds one dead letter per event, the last ones too
    let mut dead = BTreeSet::new();
    for line in std::fs::read_to_string(&out).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["type"] == "dead_letter" {
            assert_eq!(v["source"], "notify:webhook:0");
            assert!(v["reason"].as_str().unwrap().contains("HTTP 400"), "{v}");
            let id = v["position"].as_str().unwrap().to_string();
            assert_eq!(v["device"], lines[&id]["device"]);
            let body: serde_json::Value = serde_json::from_str(v["raw"].as_str().unwrap()).unwrap();
            assert_eq!(body["data"], lines[&id], "raw is the webhook body");
            assert!(!line.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
            assert!(dead.insert(id), "one dead letter per delivery");
        }
    }
    assert_eq!(dead, events);
    let v: serde_json::Value =
        serde_json::from_str(&plume_ok(&["outbox", "--json", "--dead-letters"], &state)).unwrap();
    assert_eq!(v["sinks"][0]["dead_letters"], events.len() as u64, "{v}");
    assert_eq!(v["sinks"][0]["pending"], 0);
    let kept: BTreeSet<String> = v["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kept, events, "the outbox keeps every dead letter");
}

/// Secrets stay secret (issue 16): a webhook URL whose path and query are the secret (as Slack's
/// and Discord's are), its signing key, and a password written into an MQTT URL appear in no
/// output of `plume validate`, `plume run` (stdout, stderr at debug level, output records),
/// `plume outbox`, `plume checkpoints`, nor in the files of the data directory.
#[test]
fn secrets_appear_in_no_output_log_or_stored_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::aq1_input(dir.path(), 20, 5_000, 3);
    let out = dir.path().join("out.jsonl");
    let state = dir.path().join("state");
    let seq = Arc::new(AtomicU64::new(0));
    // refuses every payload for good: every event becomes a logged dead letter
    let rx = Receiver::start(seq, |_| Reply::json(400, r#"{"error":"schema"}"#));
    let url = rx.url("/services/T0/B0/SECRETPATH?token=SECRETQUERY");
    let secrets = ["SECRETPATH", "SECRETQUERY", SECRET, SECRET.trim_start_matches("whsec_")];
    let check = |what: &str, text: &str| {
        for s in secrets {
            assert!(!text.contains(s), "{what} shows the secret {s}:\n{text}");
        }
    };
    let mut text = String::new();

    let validate = common::plume()
        .args(["validate", "pipelines/webhook-aq1.yaml"])
        .env("PLUME_WEBHOOK_URL", &url)
        .env("PLUME_WEBHOOK_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(validate.status.success());
    text.push_str(&String::from_utf8_lossy(&validate.stdout));
    text.push_str(&String::from_utf8_lossy(&validate.stderr));
    assert!(
        text.contains("webhook http://127.0.0.1:"),
        "the summary names the webhook: {text}"
    );
    check("plume validate", &text);

    let run = webhook_aq1(&input, &state, &out, &url, "10ms")
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "{logs}");
    assert!(logs.contains("127.0.0.1"), "the logs name the endpoint: {logs}");
    check("plume run's logs", &logs);
    let records = std::fs::read_to_string(&out).unwrap();
    assert!(records.contains("\"dead_letter\""), "the receiver refused the events");
    check("the output records", &records);
    check(
        "plume outbox",
        &plume_ok(&["outbox", "--json", "--dead-letters"], &state),
    );
    let list = common::plume()
        .args(["checkpoints", "--data-dir"])
        .arg(&state)
        .arg("list")
        .output()
        .unwrap();
    check("plume checkpoints list", &String::from_utf8_lossy(&list.stdout));
    // every file of the data directory, byte for byte
    let mut stack = vec![state.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                for s in secrets {
                    assert!(
                        !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                        "{} holds the secret {s}",
                        path.display()
                    );
                }
            }
        }
    }

    // a password written into a URL is refused, and the refusal does not repeat it
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "version: 1\npipeline: b\nsources:\n  - mqtt: { url: \"mqtt://fleet:SECRETPW@127.0.0.1:1883\", topic: \"s/{device}/air\" }\ndecode: { fields: { pm25: {} } }\n",
    )
    .unwrap();
    let refused = common::plume().arg("validate").arg(&bad).output().unwrap();
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!refused.status.success());
    assert!(err.contains("holds credentials"), "{err}");
    assert!(!err.contains("SECRETPW"), "{err}");
}
