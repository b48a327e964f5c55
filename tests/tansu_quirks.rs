//! What tansu 0.6 (the Kafka-protocol broker the tests start) does differently from a Kafka
//! broker, reproduced with plain librdkafka clients (the `rdkafka` crate, as plume uses it).
//! Each test asserts the broker's CURRENT behaviour, so it fails when tansu changes and the
//! workaround plume or its tests carry (ARCHITECTURE.md, "Kafka", "tansu") can go.
//!
//! - A fetch that starts inside a record batch is answered with the NEXT batch: the records of
//!   the batch from the asked offset on are skipped.
//! - A group member killed (SIGKILL) while another member is in the group is expired on time
//!   (`session.timeout.ms`) and the group rebalances, but the survivor is given its old
//!   assignment back: the dead member's partitions are assigned to nobody, for as long as no
//!   member joins (measured: still so after 90 s, and after 300 s by hand), whatever the killed
//!   process had open beside its consumer (nothing, a producer, a second consumer in the same
//!   group or another, a consumer assigning partitions by hand). A member that joins re-forms
//!   the group and gets them; so does a member started after the kill, one session timeout
//!   after it. (tansu's coordinator drops the dead member while answering the survivor's
//!   heartbeat and keeps the group formed, with the dead leader's assignments.)
//! - Members that leave one right after the other, the group's leader last, leave the group
//!   without a leader for good: a member that joins alone afterwards gets no partition. (The
//!   coordinator keeps the id of a leader that leaves while the group re-forms.)
//! - A member alone in its group whose session times out while the broker is stopped (SIGSTOP)
//!   is revoked and not given all its partitions back (none, or one of two), and a member that
//!   replaces it after its kill got none in most runs (both in one); a member of another group
//!   gets them at once.
//!
//! The member processes are this test binary run again (`member_process`, told what to open by
//! environment variables), so that they can be SIGKILLed.

#[path = "common/kafka.rs"]
mod kafka_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_support::{Tansu, free_port};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

// ---------------------------------------------------------------------------------------------
// (2) a fetch from inside a batch

/// Produces `batches` batches of `per_batch` records each to partition 0 of `topic` (value
/// `v<offset>`): the producer lingers long enough to put each group of records in one batch,
/// and flushes between groups.
fn produce_batches(brokers: &str, topic: &str, batches: usize, per_batch: usize) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "1000")
        .set("batch.num.messages", per_batch.to_string())
        .set("acks", "all")
        .create()
        .unwrap();
    let mut n = 0;
    for _ in 0..batches {
        for _ in 0..per_batch {
            producer
                .send(BaseRecord::to(topic).partition(0).key("k").payload(&format!("v{n}")))
                .unwrap();
            n += 1;
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    }
}

/// Assigns partition 0 of `topic` at `start` and returns the offsets of the first `n` records
/// fetched (fewer if nothing more comes within a few seconds).
fn fetch_from(brokers: &str, topic: &str, start: i64, n: usize) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("probe-{}", free_port()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(start)).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut offsets = Vec::new();
    let mut last = Instant::now();
    while offsets.len() < n && last.elapsed() < Duration::from_secs(5) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            assert_eq!(m.payload(), Some(format!("v{}", m.offset()).as_bytes()));
            offsets.push(m.offset());
            last = Instant::now();
        }
    }
    offsets
}

/// tansu answers a fetch whose offset lies inside a record batch with the next batch, so a
/// consumer that resumes (or seeks) to the middle of a batch skips the rest of that batch. A
/// fetch from a batch's first offset, or from the partition's start, gets everything.
#[test]
fn a_fetch_from_inside_a_batch_gets_the_next_batch() {
    let broker = Tansu::start();
    broker.create_topic("batched", 1);
    // 3 batches of 5: offsets 0-4, 5-9, 10-14
    produce_batches(&broker.brokers(), "batched", 3, 5);
    let all: Vec<i64> = (0..15).collect();
    // from the start, and from each batch's first offset: everything from there
    assert_eq!(fetch_from(&broker.brokers(), "batched", 0, 15), all);
    assert_eq!(fetch_from(&broker.brokers(), "batched", 5, 10), all[5..]);
    assert_eq!(fetch_from(&broker.brokers(), "batched", 10, 5), all[10..]);
    // from inside a batch: the rest of that batch is skipped (Kafka would give 2, 3, 4, 5, …)
    assert_eq!(
        fetch_from(&broker.brokers(), "batched", 2, 13),
        all[5..],
        "from offset 2"
    );
    assert_eq!(
        fetch_from(&broker.brokers(), "batched", 4, 11),
        all[5..],
        "from offset 4"
    );
    assert_eq!(
        fetch_from(&broker.brokers(), "batched", 7, 8),
        all[10..],
        "from offset 7"
    );
    // inside the last batch: nothing at all (no next batch yet)
    assert_eq!(
        fetch_from(&broker.brokers(), "batched", 12, 3),
        Vec::<i64>::new(),
        "from offset 12"
    );
}

/// The same through a consumer group: a committed offset inside a batch (a consumer that
/// committed after part of a batch) resumes after the batch.
#[test]
fn a_committed_offset_inside_a_batch_resumes_after_the_batch() {
    let broker = Tansu::start();
    broker.create_topic("committed", 1);
    produce_batches(&broker.brokers(), "committed", 2, 4);
    let group = "resumer";
    let config = || {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", broker.brokers())
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000");
        c
    };
    // read two records of the first batch (0, 1) and commit offset 2
    {
        let consumer: BaseConsumer = config().create().unwrap();
        consumer.subscribe(&["committed"]).unwrap();
        let started = Instant::now();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                seen.push(m.offset());
            }
            assert!(started.elapsed() < Duration::from_secs(30), "nothing read");
        }
        assert_eq!(seen, vec![0, 1]);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("committed", 0, Offset::Offset(2)).unwrap();
        consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync).unwrap();
        consumer.unsubscribe();
    }
    // a new member of the group starts at the committed offset 2: it gets 4… (2 and 3 skipped)
    let consumer: BaseConsumer = config().create().unwrap();
    consumer.subscribe(&["committed"]).unwrap();
    let started = Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < Duration::from_secs(20) && seen.len() < 6 {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            seen.push(m.offset());
            if m.offset() == 7 {
                // the last one: give a skipped record no more chance than this
                std::thread::sleep(Duration::from_millis(500));
                while let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
                    seen.push(m.offset());
                }
                break;
            }
        }
    }
    assert_eq!(seen, vec![4, 5, 6, 7], "resumed at committed offset 2");
}

// ---------------------------------------------------------------------------------------------
// (1) a killed member that had more than one client open

const TOPIC: &str = "members";
const PARTITIONS: i32 = 2;

/// What a member process opens besides its group consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Extra {
    /// Nothing: one client, the consumer.
    None,
    /// An idempotent producer (`acks=all`) that has produced one record, as plume's Kafka sink.
    Producer,
    /// A second consumer in the same group (as a second Kafka source would be).
    SameGroupConsumer,
    /// A consumer of another group.
    OtherGroupConsumer,
    /// A consumer that only assigns partitions (no group): what a changelog reader would be.
    AssignedConsumer,
}

impl Extra {
    fn name(self) -> &'static str {
        match self {
            Extra::None => "none",
            Extra::Producer => "producer",
            Extra::SameGroupConsumer => "same-group-consumer",
            Extra::OtherGroupConsumer => "other-group-consumer",
            Extra::AssignedConsumer => "assigned-consumer",
        }
    }

    fn parse(name: &str) -> Extra {
        [
            Extra::None,
            Extra::Producer,
            Extra::SameGroupConsumer,
            Extra::OtherGroupConsumer,
            Extra::AssignedConsumer,
        ]
        .into_iter()
        .find(|e| e.name() == name)
        .unwrap_or_else(|| panic!("unknown extra client {name}"))
    }
}

fn member_config(brokers: &str, group: &str, session_ms: u32, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("client.id", client_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", session_ms.to_string())
        .set("heartbeat.interval.ms", (session_ms / 6).to_string());
    c
}

/// The partitions a consumer holds now.
fn assigned(consumer: &BaseConsumer) -> usize {
    consumer.assignment().map(|a| a.count()).unwrap_or(0)
}

/// Not a test of its own: the member process the tests below start and kill. It joins the
/// group with one consumer, opens the extra client it is told to, and prints `assigned N`
/// whenever its assignment changes; it runs until killed.
#[test]
#[ignore = "a member process for the tests in this file"]
fn member_process() {
    let Ok(brokers) = std::env::var("QUIRK_BROKERS") else {
        return;
    };
    let group = std::env::var("QUIRK_GROUP").unwrap();
    let session_ms: u32 = std::env::var("QUIRK_SESSION_MS").unwrap().parse().unwrap();
    let extra = Extra::parse(&std::env::var("QUIRK_EXTRA").unwrap());
    let consumer: BaseConsumer = member_config(&brokers, &group, session_ms, "member").create().unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();
    // the extra client, kept open (and polled) for the process's life
    let mut producer: Option<BaseProducer> = None;
    let mut second: Option<BaseConsumer> = None;
    match extra {
        Extra::None => {}
        Extra::Producer => {
            let p: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("client.id", "member-producer")
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .create()
                .unwrap();
            p.send(BaseRecord::to("elsewhere").key("k").payload("v")).unwrap();
            p.flush(Duration::from_secs(30)).unwrap();
            producer = Some(p);
        }
        Extra::SameGroupConsumer | Extra::OtherGroupConsumer => {
            let g = if extra == Extra::SameGroupConsumer {
                group.clone()
            } else {
                format!("{group}-other")
            };
            let c: BaseConsumer = member_config(&brokers, &g, session_ms, "member-second")
                .create()
                .unwrap();
            c.subscribe(&["elsewhere"]).unwrap();
            second = Some(c);
        }
        Extra::AssignedConsumer => {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("client.id", "member-reader")
                .set("group.id", format!("{group}-reader"))
                .set("enable.auto.commit", "false")
                .create()
                .unwrap();
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset("elsewhere", 0, Offset::Beginning).unwrap();
            c.assign(&tpl).unwrap();
            second = Some(c);
        }
    }
    let mut last = usize::MAX;
    loop {
        let _ = consumer.poll(Duration::from_millis(50));
        if let Some(p) = &producer {
            p.poll(Duration::ZERO);
        }
        if let Some(c) = &second {
            let _ = c.poll(Duration::ZERO);
        }
        let now = assigned(&consumer);
        if now != last {
            println!("assigned {now}");
            last = now;
        }
    }
}

/// A member process, its `assigned N` lines collected.
struct Member {
    child: Child,
    assigned: Arc<Mutex<usize>>,
}

impl Member {
    fn start(brokers: &str, group: &str, session_ms: u32, extra: Extra) -> Member {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "member_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("QUIRK_BROKERS", brokers)
            .env("QUIRK_GROUP", group)
            .env("QUIRK_SESSION_MS", session_ms.to_string())
            .env("QUIRK_EXTRA", extra.name())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let assigned = Arc::new(Mutex::new(0));
        let stdout = child.stdout.take().unwrap();
        {
            let assigned = assigned.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    // (the first one follows libtest's `test member_process ... ` on its line)
                    if let Some((_, n)) = line.rsplit_once("assigned ") {
                        *assigned.lock().unwrap() = n.trim().parse().unwrap();
                    }
                }
            });
        }
        Member { child, assigned }
    }

    fn assigned(&self) -> usize {
        *self.assigned.lock().unwrap()
    }

    /// Waits (up to 60 s) until the member holds every partition of the topic.
    fn wait_for_every_partition(&self) {
        let started = Instant::now();
        while self.assigned() != PARTITIONS as usize {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the member got no partitions"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A consumer in this process (nothing else open), in the member processes' group.
fn survivor(brokers: &str, group: &str, session_ms: u32) -> BaseConsumer {
    let c: BaseConsumer = member_config(brokers, group, session_ms, "survivor").create().unwrap();
    c.subscribe(&[TOPIC]).unwrap();
    c
}

/// Polls `consumer` until `step` returns true or `limit` passed; `step` gets the number of
/// partitions it holds after every poll, and whether that changed. Returns what `step` last said.
fn poll_until(consumer: &BaseConsumer, limit: Duration, mut step: impl FnMut(usize, bool) -> bool) -> bool {
    let started = Instant::now();
    let mut last = usize::MAX;
    while started.elapsed() < limit {
        let _ = consumer.poll(Duration::from_millis(50));
        let now = assigned(consumer);
        let changed = now != last;
        last = now;
        if step(now, changed) {
            return true;
        }
    }
    false
}

/// The group's members: a member process with `extra` open (it joins first: the group's
/// leader) and a survivor in this process, one partition each.
fn split_group(broker: &Tansu, group: &str, extra: Extra) -> (Member, BaseConsumer) {
    let member = Member::start(&broker.brokers(), group, SESSION_MS, extra);
    member.wait_for_every_partition();
    let survivor = survivor(&broker.brokers(), group, SESSION_MS);
    let split = poll_until(&survivor, Duration::from_secs(60), |n, _| {
        n == 1 && member.assigned() == 1
    });
    assert!(
        split,
        "the group did not split: member {}, survivor {}",
        member.assigned(),
        assigned(&survivor)
    );
    (member, survivor)
}

fn broker_with_topics() -> Tansu {
    let broker = Tansu::start();
    broker.create_topic(TOPIC, PARTITIONS as u32);
    broker.create_topic("elsewhere", 1);
    broker
}

/// Two members (one partition each), one SIGKILLed: tansu notices after `session.timeout.ms`
/// (the survivor's next heartbeat is answered "rebalance in progress", about 3 s later it has
/// rejoined), but the rejoined survivor is given its old assignment again: the dead member's
/// partition is assigned to nobody. Returns the survivor's assignment changes (time after the
/// kill, partitions held) over `watch`, and what it holds at the end.
fn kill_one_of_two(extra: Extra, watch: Duration) -> (Vec<(Duration, usize)>, usize) {
    let broker = broker_with_topics();
    let group = format!("two-{}", extra.name());
    let (mut member, survivor) = split_group(&broker, &group, extra);
    member.kill();
    let killed = Instant::now();
    let mut changes = Vec::new();
    poll_until(&survivor, watch, |n, changed| {
        if changed {
            changes.push((killed.elapsed(), n));
        }
        n == PARTITIONS as usize
    });
    eprintln!(
        "tansu quirk: one of two members (extra client `{}`) killed: survivor's assignment changes {changes:?}",
        extra.name()
    );
    (changes, assigned(&survivor))
}

const SESSION_MS: u32 = 6000;

/// The earliest a killed member can be expired after the kill: its session times out one
/// `session.timeout.ms` after its last heartbeat, which may have come up to one heartbeat
/// interval (`member_config`: a sixth of the session) before the kill; 500 ms more for the
/// broker's and the poll's granularity. (CI once saw the revocation 5.006 s after a kill with a
/// 6 s session.)
fn earliest_expiry_after_kill() -> Duration {
    Duration::from_millis((SESSION_MS - SESSION_MS / 6 - 500) as u64)
}

/// The dead member is expired on time (its session timeout) and the group rebalances, but its
/// partition is not handed to the survivor: it stays unassigned (until a member joins, below).
#[test]
fn a_killed_members_partitions_stay_unassigned_after_its_expiry() {
    let (changes, holds) = kill_one_of_two(Extra::None, Duration::from_secs(25));
    // revoked (0) about one session timeout after the kill, then its one partition again
    let revoked = changes.iter().find(|(_, n)| *n == 0).map(|(t, _)| *t);
    assert!(
        revoked.is_some_and(|t| t >= earliest_expiry_after_kill()
            && t < Duration::from_millis(SESSION_MS as u64 + 10_000)),
        "changes {changes:?} (session timeout {SESSION_MS} ms)"
    );
    assert_eq!(
        holds, 1,
        "changes {changes:?}: the survivor now gets the dead member's partition: tansu fixed this"
    );
}

/// A member that joins the group re-forms it: the dead member's partition is assigned again.
/// (This is also why a member started after another was killed, as in tests/kafka.rs, gets
/// every partition about one session timeout after the kill.)
#[test]
fn a_member_joining_after_the_expiry_gets_the_orphaned_partition() {
    let broker = broker_with_topics();
    let group = "rejoin";
    let (mut member, survivor) = split_group(&broker, group, Extra::None);
    member.kill();
    // expired, rebalanced, the survivor back on its one partition
    let mut zero_seen = false;
    assert!(poll_until(&survivor, Duration::from_secs(30), |n, _| {
        zero_seen |= n == 0;
        n == 1 && zero_seen
    }));
    std::thread::sleep(Duration::from_secs(1));
    let newcomer = Member::start(&broker.brokers(), group, SESSION_MS, Extra::None);
    let started = Instant::now();
    let both = poll_until(&survivor, Duration::from_secs(30), |n, _| {
        n == 1 && newcomer.assigned() == 1
    });
    assert!(
        both,
        "survivor {}, newcomer {}",
        assigned(&survivor),
        newcomer.assigned()
    );
    eprintln!("tansu quirk: a newcomer re-formed the group in {:?}", started.elapsed());
}

/// A member alone in the group (every partition) is killed and another starts right after (the
/// shape of tests/kafka.rs's crash test): the newcomer has every partition about one session
/// timeout after the kill, whether or not the killed process had a producer open beside its
/// consumer.
#[test]
fn a_member_started_after_a_kill_gets_every_partition_after_the_session_timeout() {
    for extra in [Extra::None, Extra::Producer] {
        let broker = broker_with_topics();
        let group = format!("after-{}", extra.name());
        let mut member = Member::start(&broker.brokers(), &group, SESSION_MS, extra);
        member.wait_for_every_partition();
        member.kill();
        let killed = Instant::now();
        let newcomer = survivor(&broker.brokers(), &group, SESSION_MS);
        let all = poll_until(&newcomer, Duration::from_secs(60), |n, _| n == PARTITIONS as usize);
        let took = killed.elapsed();
        eprintln!(
            "tansu quirk: newcomer after a kill ({}): every partition after {took:?}",
            extra.name()
        );
        assert!(all, "not every partition within 60 s ({})", extra.name());
        assert!(
            took >= earliest_expiry_after_kill() && took < Duration::from_millis(SESSION_MS as u64 * 3),
            "{}: {took:?}",
            extra.name()
        );
    }
}

/// The stale assignment lasts: 90 s after the kill the survivor still holds only its own
/// partition, whatever the killed process had open beside its consumer (a producer as plume's
/// Kafka sink, a second consumer in the group, one in another group, one assigning partitions
/// by hand). With the `slow-tests` feature (`cargo test --all-features` runs it).
#[cfg(feature = "slow-tests")]
#[test]
fn the_orphaned_partition_stays_unassigned_for_90_s_whatever_else_the_killed_process_had_open() {
    let handles: Vec<_> = [
        Extra::None,
        Extra::Producer,
        Extra::SameGroupConsumer,
        Extra::OtherGroupConsumer,
        Extra::AssignedConsumer,
    ]
    .into_iter()
    .map(|extra| std::thread::spawn(move || (extra, kill_one_of_two(extra, Duration::from_secs(90)))))
    .collect();
    for h in handles {
        let (extra, (changes, holds)) = h.join().unwrap();
        // one partition, or (seen with a second consumer of the group in the killed process)
        // none at all: never the dead member's
        assert!(holds < PARTITIONS as usize, "{}: {changes:?}", extra.name());
        assert!(
            changes.iter().all(|(_, n)| *n < PARTITIONS as usize),
            "{}: the survivor got the dead member's partition: {changes:?}",
            extra.name()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (3) the leader leaving while the group re-forms

/// How the two members of a group leave, in [`two_leave`].
#[derive(Clone, Copy, Debug)]
enum Leaving {
    /// The other member leaves, then the leader at once (the group is re-forming).
    LeaderLastAtOnce,
    /// The leader leaves, then the other member at once.
    LeaderFirstAtOnce,
    /// The other member leaves, then the leader once it holds every partition again.
    LeaderLastSettled,
}

/// Two in-process members (the first to join is the group's leader) leave as `leaving` says;
/// then a newcomer joins alone. Returns the partitions the newcomer holds after 30 s.
fn two_leave(brokers: &str, group: &str, leaving: Leaving) -> usize {
    let poll_both = |a: &BaseConsumer, b: &BaseConsumer, limit: Duration, done: &dyn Fn(usize, usize) -> bool| {
        let started = Instant::now();
        while started.elapsed() < limit && !done(assigned(a), assigned(b)) {
            let _ = a.poll(Duration::from_millis(20));
            let _ = b.poll(Duration::from_millis(20));
        }
    };
    let leader: BaseConsumer = member_config(brokers, group, SESSION_MS, "leader").create().unwrap();
    leader.subscribe(&[TOPIC]).unwrap();
    assert!(poll_until(&leader, Duration::from_secs(60), |n, _| n == PARTITIONS as usize));
    let other = survivor(brokers, group, SESSION_MS);
    poll_both(&leader, &other, Duration::from_secs(60), &|l, o| l == 1 && o == 1);
    assert_eq!(
        (assigned(&leader), assigned(&other)),
        (1, 1),
        "{group}: the group did not split"
    );
    match leaving {
        Leaving::LeaderLastAtOnce => {
            drop(other);
            drop(leader);
        }
        Leaving::LeaderFirstAtOnce => {
            drop(leader);
            drop(other);
        }
        Leaving::LeaderLastSettled => {
            drop(other);
            assert!(
                poll_until(&leader, Duration::from_secs(60), |n, _| n == PARTITIONS as usize),
                "{group}: the leader did not get every partition after the other left"
            );
            drop(leader);
        }
    }
    let newcomer = survivor(brokers, group, SESSION_MS);
    poll_until(&newcomer, Duration::from_secs(30), |n, _| n == PARTITIONS as usize);
    assigned(&newcomer)
}

/// Members that leave one right after the other, the group's leader last, leave the group
/// without a leader for good: a member that then joins ALONE gets no partition (30 s here;
/// the cluster tests saw five newcomers in a row get none for 150 s). tansu's coordinator
/// keeps the leader's id when the leader leaves a group that is re-forming (the other member's
/// leave started that), and only a leader may complete a re-forming group. The leader leaving
/// first, or last once the group has settled, is fine. This is why `tests/cluster.rs` stops
/// its members one at a time, each once the others hold every partition again.
#[test]
fn the_leader_leaving_a_re_forming_group_leaves_it_without_a_leader_for_good() {
    let broker = broker_with_topics();
    let cases = [
        Leaving::LeaderLastAtOnce,
        Leaving::LeaderFirstAtOnce,
        Leaving::LeaderLastSettled,
    ];
    let handles: Vec<_> = cases
        .into_iter()
        .map(|leaving| {
            let brokers = broker.brokers();
            std::thread::spawn(move || two_leave(&brokers, &format!("leave-{leaving:?}"), leaving))
        })
        .collect();
    let held: Vec<(Leaving, usize)> = cases
        .into_iter()
        .zip(handles.into_iter().map(|h| h.join().unwrap()))
        .collect();
    eprintln!("tansu quirk: a newcomer alone after two members left holds {held:?}");
    assert_eq!(
        held[0].1, 0,
        "{held:?}: a newcomer got partitions after the leader left a re-forming group: tansu fixed this"
    );
    assert_eq!(held[1].1, PARTITIONS as usize, "{held:?}");
    assert_eq!(held[2].1, PARTITIONS as usize, "{held:?}");
}

// ---------------------------------------------------------------------------------------------
// (5) a lone member's session timing out in a broker stall

/// What `member` holds, each time it changes, over `watch`.
fn assignments_over(member: &Member, watch: Duration) -> Vec<(Duration, usize)> {
    let started = Instant::now();
    let mut changes = Vec::new();
    let mut last = usize::MAX;
    while started.elapsed() < watch {
        let n = member.assigned();
        if n != last {
            changes.push((started.elapsed(), n));
            last = n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    changes
}

/// A member alone in its group, every partition held, its broker stopped (SIGSTOP) for longer
/// than its session timeout: once the broker runs again the member is revoked and not given all
/// its partitions back (none for the 20 s watched in the runs of 2026-12-07 morning; one of the
/// two in a CI run that afternoon), and in the first runs a member started in its place after
/// its kill and one session timeout got nothing either (in that CI run it got both). So the
/// test asserts what every run showed: the lone member or its replacement is left without some
/// partition for 20 s, while a member of another group gets every partition at once. (The
/// chaos test's CI run of 2026-12-07 lost its group so: a broker stall of a few seconds while
/// the group re-formed after kills. On Kafka the rejoining member is given its partitions
/// again.) Stopped for 3 s, less than the session timeout, the broker left the member as it
/// was (tried by hand, 2026-12-07).
#[test]
fn a_lone_member_whose_session_times_out_in_a_broker_stall_is_left_without_partitions() {
    let broker = broker_with_topics();
    let group = "stalled";
    let mut member = Member::start(&broker.brokers(), group, SESSION_MS, Extra::None);
    member.wait_for_every_partition();
    unsafe { libc::kill(broker.pid() as i32, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(SESSION_MS as u64 + 2000));
    unsafe { libc::kill(broker.pid() as i32, libc::SIGCONT) };
    let after_stall = assignments_over(&member, Duration::from_secs(20));
    member.kill();
    std::thread::sleep(Duration::from_millis(SESSION_MS as u64 + 1000));
    let replacement = Member::start(&broker.brokers(), group, SESSION_MS, Extra::None);
    let replacement_holds = assignments_over(&replacement, Duration::from_secs(20));
    drop(replacement);
    let elsewhere = Member::start(&broker.brokers(), "stalled-elsewhere", SESSION_MS, Extra::None);
    let elsewhere_holds = assignments_over(&elsewhere, Duration::from_secs(15));
    eprintln!(
        "tansu quirk: after the stall the member held {after_stall:?}; its replacement {replacement_holds:?}; \
         a member of another group {elsewhere_holds:?}"
    );
    assert_eq!(
        elsewhere_holds.last().map(|(_, n)| *n),
        Some(PARTITIONS as usize),
        "a member of another group gets every partition"
    );
    let every = Some(PARTITIONS as usize);
    let member_short = after_stall.last().map(|(_, n)| *n) != every;
    let replacement_short = replacement_holds.last().map(|(_, n)| *n) != every;
    assert!(
        member_short || replacement_short,
        "after the stall the member ({after_stall:?}) and then its replacement ({replacement_holds:?}) \
         got every partition back: tansu fixed this"
    );
}
