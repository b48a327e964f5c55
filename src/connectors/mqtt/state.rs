//! The MQTT source's protocol state, without IO (the shape of rumqttc's `state.rs`): what to do
//! on each event of the connection (retry after how long, subscribe again or not, whether a loss
//! is new), and which redelivered messages were already handed on. Time is passed in. The driver
//! in `source` does the IO: it polls, sleeps, subscribes and logs what this decides.

use std::time::{Duration, Instant};

use rand::Rng;
use rustc_hash::FxHashMap;

/// Exponential backoff with full jitter: 100 ms doubling up to 10 s.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(100);
    pub const MAX: Duration = Duration::from_secs(10);

    pub fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The next wait: a random time between half the current step and the step, which doubles.
    pub fn delay(&mut self) -> Duration {
        let cap = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        let ms = rand::rng().random_range(cap.as_millis() as u64 / 2..=cap.as_millis() as u64);
        Duration::from_millis(ms)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// A failed poll: whether the connection was just lost (otherwise a reconnect attempt failed),
/// and how long to wait before the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollFailed {
    pub newly_lost: bool,
    pub retry_in: Duration,
}

/// What a CONNACK means for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnAck {
    /// The broker refused the connection (its reason); the event loop retries.
    Refused { code: String },
    /// Connected.
    Connected {
        /// Ever connected before (this is a reconnect).
        reconnect: bool,
        /// How long the connection was down (or, for the first connection, how long it took),
        /// if attempts had failed before.
        down_for: Option<Duration>,
        /// The broker kept no session for us: subscribe again.
        subscribe: bool,
    },
}

/// The connection of one MQTT source.
#[derive(Debug, Default)]
pub struct Connection {
    backoff: Backoff,
    down_since: Option<Instant>,
    ever_connected: bool,
    connected: bool,
}

impl Connection {
    pub fn new() -> Self {
        Connection::default()
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// A poll of the event loop failed at `now`.
    pub fn on_poll_failed(&mut self, now: Instant) -> PollFailed {
        let newly_lost = self.connected || self.down_since.is_none();
        self.connected = false;
        self.down_since.get_or_insert(now);
        PollFailed {
            newly_lost,
            retry_in: self.backoff.delay(),
        }
    }

    /// A CONNACK arrived at `now`.
    pub fn on_connack(&mut self, refused: Option<String>, session_present: bool, now: Instant) -> ConnAck {
        if let Some(code) = refused {
            return ConnAck::Refused { code };
        }
        self.backoff.reset();
        self.connected = true;
        let down_for = self.down_since.take().map(|since| now.saturating_duration_since(since));
        let reconnect = self.ever_connected;
        self.ever_connected = true;
        ConnAck::Connected {
            reconnect,
            down_for,
            subscribe: !session_present,
        }
    }
}

/// Whether a QoS 1/2 message is new or a redelivery of one already handed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    New,
    /// The broker sent it again (`dup`) with a packet id and content already handed on: it lost
    /// our acknowledgement. Acknowledge it again; do not feed it twice.
    AlreadyHandedOn,
}

/// The packet ids of the QoS 1/2 messages handed on, with a hash of their content (kept in the
/// ingest log with `durable: true`, so it survives a restart).
#[derive(Debug, Default)]
pub struct Redeliveries {
    handed: FxHashMap<u16, u64>,
}

impl Redeliveries {
    /// Starts from the packet ids recorded in the ingest log.
    pub fn from_handed(handed: FxHashMap<u16, u64>) -> Self {
        Redeliveries { handed }
    }

    /// A QoS 1/2 message with packet id `pkid`, the broker's `dup` flag and content hash `hash`.
    pub fn on_message(&mut self, pkid: u16, dup: bool, hash: u64) -> Delivery {
        if dup && self.handed.get(&pkid) == Some(&hash) {
            return Delivery::AlreadyHandedOn;
        }
        self.handed.insert(pkid, hash);
        Delivery::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_up_to_its_cap() {
        let mut b = Backoff::new();
        let first = b.delay();
        assert!(first <= Backoff::FIRST && first >= Backoff::FIRST / 2);
        for _ in 0..20 {
            assert!(b.delay() <= Backoff::MAX);
        }
        assert_eq!(b.next, Backoff::MAX);
        b.reset();
        assert_eq!(b.next, Backoff::FIRST);
    }

    #[test]
    fn a_connection_subscribes_without_a_session_and_measures_its_outages() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = Connection::new();
        // the broker is not there yet: the first failure is a new loss, the next ones are not,
        // and the waits grow
        let first = c.on_poll_failed(at(0));
        assert!(first.newly_lost);
        let second = c.on_poll_failed(at(100));
        assert!(!second.newly_lost);
        assert!(
            second.retry_in >= Backoff::FIRST,
            "the second wait is from the doubled step"
        );
        assert_eq!(
            c.on_connack(Some("not authorized".into()), false, at(200)),
            ConnAck::Refused {
                code: "not authorized".into()
            }
        );
        assert!(!c.is_connected());
        // connected after 300 ms of trying, without a session: subscribe
        assert_eq!(
            c.on_connack(None, false, at(300)),
            ConnAck::Connected {
                reconnect: false,
                down_for: Some(Duration::from_millis(300)),
                subscribe: true
            }
        );
        assert!(c.is_connected());
        // lost at 1 s, back at 1.5 s with the session kept: a reconnect, no new subscription,
        // and the backoff starts again from its first step
        let lost = c.on_poll_failed(at(1_000));
        assert!(lost.newly_lost);
        assert!(
            lost.retry_in <= Backoff::FIRST,
            "reset by the connection: {:?}",
            lost.retry_in
        );
        assert_eq!(
            c.on_connack(None, true, at(1_500)),
            ConnAck::Connected {
                reconnect: true,
                down_for: Some(Duration::from_millis(500)),
                subscribe: false
            }
        );
    }

    #[test]
    fn a_redelivery_is_recognised_by_packet_id_and_content() {
        let mut r = Redeliveries::from_handed([(7u16, 99u64)].into_iter().collect());
        assert_eq!(
            r.on_message(7, true, 99),
            Delivery::AlreadyHandedOn,
            "known from the log"
        );
        assert_eq!(r.on_message(7, true, 98), Delivery::New, "same id, other content");
        assert_eq!(r.on_message(7, true, 98), Delivery::AlreadyHandedOn);
        assert_eq!(r.on_message(8, false, 1), Delivery::New);
        assert_eq!(
            r.on_message(8, false, 1),
            Delivery::New,
            "not flagged dup: a new message reusing the id"
        );
    }
}
