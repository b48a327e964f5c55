//! The Kafka source's side of a rebalance (it runs on the source thread, inside the consumer's
//! `rebalance` callback): on revoke, a checkpoint covering what was sent (through the runtime's
//! [`PartitionOwnership`](crate::runtime::ports::PartitionOwnership)), the offsets committed,
//! each partition's state and offset handed off, its devices evicted and dropped from the store;
//! on assign, per partition the newer of this member's own checkpointed offset and a hand-off.
//! Also the periodic refresh of the hand-offs, so that a member that crashes leaves its
//! partitions with their state.

use super::*;

impl Inner {
    /// Asks for a checkpoint covering everything sent, and waits (answering barriers) until it
    /// is durable. `None` without checkpoints or when it failed.
    pub(super) fn checkpoint_now(&mut self) -> Option<u64> {
        let mut rx = self.ownership.as_ref()?.checkpoint_soon();
        let started = Instant::now();
        loop {
            self.poll_barrier();
            match rx.try_recv() {
                Ok(Ok(id)) => return Some(id),
                Ok(Err(e)) => {
                    error!(source = %self.name, error = %e, "the rebalance checkpoint failed");
                    return None;
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => return None,
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
            }
            if started.elapsed() > REBALANCE_CHECKPOINT_TIMEOUT {
                error!(source = %self.name, "the rebalance checkpoint did not complete in time");
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Writes anew the hand-offs of the assigned partitions read since their last one, if
    /// `handoff_refresh` has passed since (the store holds checkpoint `checkpoint`, whose
    /// offsets are `offsets`): a member that dies leaves its partitions with their state.
    pub(super) fn refresh_handoffs(&mut self, offsets: &BTreeMap<PartitionKey, i64>, checkpoint: u64) {
        let Some(every) = self.handoff_refresh else { return };
        if self.handoff_dir.is_none() || self.store.is_none() {
            return;
        }
        let now = Instant::now();
        for (key, offset) in offsets {
            if !self.assigned.contains(key) {
                continue;
            }
            if let Some((at_offset, at)) = self.handed_off_at.get(key)
                && (at_offset == offset || now.duration_since(*at) < every)
            {
                continue;
            }
            if self.write_handoff(key, *offset, checkpoint, "refreshed").is_some() {
                self.stats.handoffs_refreshed.fetch_add(1, Ordering::Relaxed);
                self.handed_off_at.insert(key.clone(), (*offset, now));
            }
        }
    }

    /// Writes the hand-off of `key` (its devices' stored state and `next_offset`).
    pub(super) fn write_handoff(
        &self,
        key: &PartitionKey,
        next_offset: i64,
        checkpoint: u64,
        why: &str,
    ) -> Option<usize> {
        let (store, dir, pipeline) = (
            self.store.as_ref()?,
            self.handoff_dir.as_ref()?,
            self.pipeline.as_ref()?,
        );
        let kgs = self.key_groups;
        let result = store
            .partition_states(&key.0, key.1, |d| key_group_of(d, kgs))
            .and_then(|devices| {
                let n = devices.len();
                PartitionHandoff {
                    topic: key.0.clone(),
                    partition: key.1,
                    next_offset,
                    pipeline_hash: pipeline.hash.clone(),
                    key_groups: kgs,
                    checkpoint,
                    written_ms: crate::clock::now_ms(),
                    devices,
                }
                .write(dir)
                .map(|_| n)
            });
        match result {
            Ok(n) => {
                self.stats.handoffs_written.fetch_add(1, Ordering::Relaxed);
                if why == "refreshed" {
                    info!(source = %self.name, topic = %key.0, partition = key.1, next_offset, devices = n, checkpoint, "kafka partition hand-off refreshed");
                } else {
                    info!(source = %self.name, topic = %key.0, partition = key.1, next_offset, devices = n, checkpoint, "kafka partition handed off");
                }
                Some(n)
            }
            Err(e) => {
                error!(source = %self.name, topic = %key.0, partition = key.1, error = %e, "the kafka partition hand-off could not be written");
                None
            }
        }
    }

    /// The partitions in `revoked` go to another member.
    pub(super) fn revoke(&mut self, consumer: &BaseConsumer<SourceContext>, revoked: Vec<PartitionKey>) {
        self.stats.rebalances.fetch_add(1, Ordering::Relaxed);
        info!(source = %self.name, partitions = ?revoked, "kafka partitions revoked: checkpointing before letting them go");
        self.send_all_blocking();
        let checkpoint = self.checkpoint_now();
        let offsets: BTreeMap<PartitionKey, i64> = revoked
            .iter()
            .filter_map(|k| self.consumed.get(k).map(|o| (k.clone(), *o)))
            .collect();
        // with a changelog, its markers first: the group's offsets never run ahead of them
        let published = match checkpoint {
            Some(id) if self.changelog.is_some() => {
                let revoked_set: BTreeSet<PartitionKey> = revoked.iter().cloned().collect();
                self.publish_changelog(&offsets, id, &revoked_set)
            }
            _ => BTreeSet::new(),
        };
        // without a durable checkpoint, the offsets are not committed: the next owner re-reads
        if checkpoint.is_some() || self.store.is_none() {
            let tpl = Self::offsets_list(&self.committable(&offsets), None);
            if tpl.count() > 0 {
                match consumer.commit(&tpl, CommitMode::Sync) {
                    Ok(()) => {
                        self.stats.commits.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        warn!(source = %self.name, error = %e, "kafka offsets of revoked partitions not committed")
                    }
                }
            }
        }
        let mut handed_off = BTreeSet::new();
        if let (Some(id), Some(store)) = (checkpoint, self.store.clone()) {
            let kgs = self.key_groups;
            for key in &revoked {
                let Some(offset) = offsets.get(key) else { continue };
                if self.changelog.is_some() {
                    if !published.contains(key) {
                        continue;
                    }
                    info!(source = %self.name, topic = %key.0, partition = key.1, next_offset = offset, checkpoint = id, "kafka partition handed off through the changelog");
                } else if self.write_handoff(key, *offset, id, "revoked").is_none() {
                    continue;
                }
                handed_off.insert(key.clone());
                // the next owner has the state now: forget it here
                let devices = store.partition_devices(&key.0, key.1).unwrap_or_default();
                let evicted = self.ownership.as_ref().map_or(0, |o| o.evict(devices.clone()));
                match store.drop_partition(&key.0, key.1, |d| key_group_of(d, kgs)) {
                    Ok(n) => {
                        if let Some(o) = &self.ownership {
                            o.stored_devices_changed(-(n as i64));
                        }
                        debug!(source = %self.name, topic = %key.0, partition = key.1, dropped = n, evicted, "kafka partition state dropped")
                    }
                    Err(e) => {
                        error!(source = %self.name, error = %e, "the state of a handed-off partition could not be dropped")
                    }
                }
            }
        }
        for key in &revoked {
            if let Some(o) = self.consumed.remove(key)
                && !handed_off.contains(key)
            {
                // not handed off: the state stays here, and so does its position
                self.carried.insert(key.clone(), o);
            }
            if handed_off.contains(key) {
                self.carried.remove(key);
            }
            self.known.remove(key);
            self.expected.remove(key);
            self.read_next.remove(key);
            if let Some(c) = self.changelog.as_mut() {
                c.dirty.remove(key);
                c.full.remove(key);
                c.repair.remove(key);
                c.published.remove(key);
            }
            self.handed_off_at.remove(key);
            self.assigned.remove(key);
            self.at_end.remove(key);
        }
        for (_, offsets) in &mut self.at_barrier {
            offsets.retain(|k, _| !revoked.contains(k));
        }
        // The routers keep the position of the last chunk, which still names the partitions
        // handed off: without this, every checkpoint until the next chunk would record their
        // offsets over a store that no longer holds their devices, and a restart without their
        // hand-off (another group, the hand-off directory gone) would go on from there with
        // empty state. Sent before any barrier is polled, so no checkpoint falls in between.
        if !handed_off.is_empty() {
            self.send_position();
        }
    }

    /// The partitions in `assigned` are ours now: where does each one start?
    pub(super) fn assign(&mut self, consumer: &BaseConsumer<SourceContext>, tpl: &mut TopicPartitionList) {
        let assigned: Vec<PartitionKey> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        self.stats.rebalances.fetch_add(1, Ordering::Relaxed);
        let mut replicas = self.read_changelog(&assigned);
        for key in &assigned {
            let mut start = self.own_offset(key);
            let mut from = if start.is_some() { "checkpoint" } else { "group" };
            if let Some((replica, how)) = replicas.remove(&key.1)
                && let Some(offset) = self.restore_from_changelog(key, start, replica, how)
            {
                start = Some(offset);
                from = "changelog";
            }
            if let (Some(dir), Some(store), Some(pipeline)) = (&self.handoff_dir, &self.store, &self.pipeline) {
                match PartitionHandoff::read(dir, &key.0, key.1) {
                    Ok(Some(h)) if h.pipeline_hash != pipeline.hash || h.key_groups != pipeline.key_groups => {
                        warn!(source = %self.name, topic = %key.0, partition = key.1, "a hand-off of another pipeline is ignored");
                    }
                    // The newer state wins. At the same offset, this member's own state wins
                    // while its store still holds the partition's devices (its own refreshed
                    // hand-off is no newer, and processing time may have moved the state on
                    // since); a hand-off it wrote when it gave the partition up restores what it
                    // dropped then.
                    Ok(Some(h))
                        if start.is_none_or(|s| {
                            h.next_offset > s
                                || (h.next_offset == s
                                    && store.partition_devices(&key.0, key.1).is_ok_and(|d| d.is_empty()))
                        }) =>
                    {
                        let kgs = self.key_groups;
                        match store.import_partition(&h, |d| key_group_of(d, kgs)) {
                            Ok(new) => {
                                if let Some(o) = &self.ownership {
                                    o.stored_devices_changed(new as i64);
                                    o.adopt(h.devices.iter().map(|(d, _)| d.clone()).collect());
                                }
                                self.stats.handoffs_taken.fetch_add(1, Ordering::Relaxed);
                                info!(source = %self.name, topic = %key.0, partition = key.1, next_offset = h.next_offset, devices = h.devices.len(), from_checkpoint = h.checkpoint, "kafka partition taken over from a hand-off");
                                start = Some(h.next_offset);
                                from = "hand-off";
                                self.handed_off_at.insert(key.clone(), (h.next_offset, Instant::now()));
                            }
                            Err(e) => {
                                error!(source = %self.name, error = %e, "a hand-off could not be imported: starting from the group's offset")
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => error!(source = %self.name, error = %e, "a hand-off is damaged: ignoring it"),
                }
            }
            if start.is_none() {
                // the group's offset, asked for here so that the first fetch is checked like
                // any other start (see `check_gap`)
                start = self.group_offset(consumer, key);
            }
            let offset = match start {
                Some(o) => {
                    self.carried.remove(key);
                    self.consumed.insert(key.clone(), o);
                    self.expected.insert(key.clone(), Expected::at(o));
                    self.read_next.insert(key.clone(), o);
                    Offset::Offset(o)
                }
                None => {
                    self.read_next.remove(key);
                    Offset::Stored
                }
            };
            // the partition's devices, so that their changes are published
            if self.changelog.is_some()
                && let Some(store) = &self.store
            {
                match store.partition_devices(&key.0, key.1) {
                    Ok(devices) => {
                        self.known.insert(key.clone(), devices.into_iter().collect());
                    }
                    Err(e) => error!(source = %self.name, error = %e, "reading the partition index"),
                }
            }
            info!(source = %self.name, topic = %key.0, partition = key.1, offset = ?offset, from, "kafka partition assigned");
            if let Err(e) = tpl.set_partition_offset(&key.0, key.1, offset) {
                error!(source = %self.name, error = %e, "setting the start offset of a kafka partition");
            }
            self.assigned.insert(key.clone());
        }
        self.caught_up_logged = false;
        // the routers' position names the partitions taken on from now (see `revoke`)
        if !assigned.is_empty() {
            self.send_position();
        }
    }

    /// Tells the routers this source's position now: the partitions it holds state for, as
    /// `snapshot` has them. Sent before any barrier is polled (see [`ChunkFeeder::send_position`]).
    fn send_position(&mut self) {
        let permit = self.feeder.wait_for_room();
        self.feeder.send_position(Position::Partitions(self.snapshot()), permit);
    }
}

impl Inner {
    /// The offsets of `offsets` that may be committed to the group: all of them, or with a
    /// changelog, each partition's up to its newest marker (a member that takes a partition
    /// without reading a marker starts at the group's offset, with no state).
    pub(super) fn committable(&self, offsets: &BTreeMap<PartitionKey, i64>) -> BTreeMap<PartitionKey, i64> {
        match &self.changelog {
            None => offsets.clone(),
            Some(c) => offsets
                .iter()
                .filter_map(|(k, o)| c.published.get(k).map(|p| (k.clone(), (*o).min(*p))))
                .collect(),
        }
    }

    /// The group's committed offset of `key`, if there is one.
    fn group_offset(&self, consumer: &BaseConsumer<SourceContext>, key: &PartitionKey) -> Option<i64> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&key.0, key.1);
        match consumer.committed_offsets(tpl, Duration::from_secs(10)) {
            Ok(committed) => committed.elements().first().and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            }),
            Err(e) => {
                warn!(source = %self.name, topic = %key.0, partition = key.1, error = %e, "the group's offset could not be read: librdkafka looks it up");
                None
            }
        }
    }

    /// Whether the message at `offset` of `key` may go on. After a seek to offset `want` (an
    /// assignment or a resume), tansu answers a fetch that starts inside a record batch with the
    /// next batch, or with nothing when there is none (ARCHITECTURE.md, Kafka). So until a
    /// message at or before `want` arrives, the source seeks back (1, 2, 4, … offsets before
    /// `want`) whenever a later one arrives, or nothing does for a while
    /// ([`Inner::probe_silent_starts`]); messages before `want` are dropped (already in the
    /// state). `false`: drop this message.
    pub(super) fn check_gap(
        &mut self,
        consumer: &BaseConsumer<SourceContext>,
        key: &PartitionKey,
        offset: i64,
    ) -> bool {
        // every message passes here: no lookup once every start is confirmed
        if self.expected.is_empty() {
            return true;
        }
        let Some(e) = self.expected.get_mut(key) else {
            return true;
        };
        if offset < e.want {
            e.anchored = true;
            return false; // before where this member goes on: already in its state
        }
        if offset == e.want || e.anchored {
            // (anchored and later: offsets the broker does not have, e.g. compacted)
            self.expected.remove(key);
            return true;
        }
        self.seek_back(consumer, key, Some(offset))
    }

    /// Seeks partition `key` further back than the last time (see [`Inner::check_gap`]);
    /// `got`: the later offset the broker answered with (none: it answered nothing). `false`
    /// when it did.
    fn seek_back(&mut self, consumer: &BaseConsumer<SourceContext>, key: &PartitionKey, got: Option<i64>) -> bool {
        let Some(e) = self.expected.get(key).copied() else {
            return true;
        };
        if e.want == 0 || e.step > e.want * 2 {
            // searched back to the partition's start: the offsets are not there
            if got.is_some() {
                warn!(source = %self.name, topic = %key.0, partition = key.1, wanted = e.want, got = ?got, "kafka offsets skipped by the broker");
            }
            self.expected.remove(key);
            return true;
        }
        let back = (e.want - e.step).max(0);
        self.stats.gap_seeks.fetch_add(1, Ordering::Relaxed);
        debug!(source = %self.name, topic = %key.0, partition = key.1, wanted = e.want, got = ?got, seeking = back, "the broker answered from a later offset, or not at all: seeking back");
        match consumer.seek(&key.0, key.1, Offset::Offset(back), Duration::from_secs(10)) {
            Ok(()) => {
                self.expected.insert(
                    key.clone(),
                    Expected {
                        step: e.step * 2,
                        since: Instant::now(),
                        ..e
                    },
                );
                false
            }
            Err(err) => {
                error!(source = %self.name, topic = %key.0, partition = key.1, error = %err, "seeking back failed: offsets may be skipped");
                self.expected.remove(key);
                true
            }
        }
    }

    /// Partitions sought to an offset that have answered nothing for a while: the offset may
    /// be inside the partition's last record batch (see [`Inner::check_gap`]).
    pub(super) fn probe_silent_starts(&mut self, consumer: &BaseConsumer<SourceContext>) {
        const SILENCE: Duration = Duration::from_millis(500);
        let silent: Vec<PartitionKey> = self
            .expected
            .iter()
            .filter(|(k, e)| !e.anchored && e.since.elapsed() > SILENCE && self.assigned.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in silent {
            self.seek_back(consumer, &key, None);
        }
    }

    /// Publishes to the changelog, for each partition in `only` with an offset in `offsets`
    /// (the store holds exactly checkpoint `checkpoint`, whose offsets they are), the devices
    /// changed since the partition's last publish and a marker with its offset. Returns the
    /// partitions published.
    pub(super) fn publish_changelog(
        &mut self,
        offsets: &BTreeMap<PartitionKey, i64>,
        checkpoint: u64,
        only: &BTreeSet<PartitionKey>,
    ) -> BTreeSet<PartitionKey> {
        let mut done = BTreeSet::new();
        let (Some(store), Some(pipeline)) = (self.store.clone(), self.pipeline.clone()) else {
            return done;
        };
        let kgs = self.key_groups;
        let Some(changelog) = self.changelog.as_mut() else {
            return done;
        };
        // which partition each changed device belongs to
        for (_, device) in store.take_changed() {
            if let Some((key, _)) = self.known.iter().find(|(_, devices)| devices.contains(&device)) {
                changelog.dirty.entry(key.clone()).or_default().insert(device);
            }
        }
        // the notifiers' records of each partition's devices (changelog key → record): the
        // notifications pending, and the policy entries as of this checkpoint
        let mut extras: std::collections::HashMap<PartitionKey, BTreeMap<String, Vec<u8>>> = Default::default();
        if let Some(handover) = &self.notifications {
            use crate::connectors::kafka::changelog::{notification_key, policy_key};
            let partition_of = |device: &str| {
                self.known
                    .iter()
                    .find(|(_, devices)| devices.contains(device))
                    .map(|(key, _)| key.clone())
            };
            for n in handover.pending() {
                if let Some(key) = partition_of(&n.device) {
                    extras
                        .entry(key)
                        .or_default()
                        .insert(notification_key(&n.notifier, &n.id), n.record);
                }
            }
            for p in handover.device_policies(checkpoint) {
                if let Some(key) = partition_of(&p.device) {
                    extras
                        .entry(key)
                        .or_default()
                        .insert(policy_key(&p.notifier, &p.device), p.record);
                }
            }
        }
        let mut extras_now: Vec<(PartitionKey, BTreeMap<String, u64>)> = Vec::new();
        let mut queued = Vec::new();
        for key in only {
            let Some(&offset) = offsets.get(key) else { continue };
            let full = changelog.full.contains(key);
            let mut devices: Vec<String> = if full {
                store.partition_devices(&key.0, key.1).unwrap_or_default()
            } else {
                changelog
                    .dirty
                    .get(key)
                    .map(|d| d.iter().cloned().collect())
                    .unwrap_or_default()
            };
            devices.sort();
            let mut states: Vec<(String, Option<Vec<u8>>)> = Vec::with_capacity(devices.len());
            for device in devices {
                match store.load_device(key_group_of(&device, kgs), &device) {
                    Ok(Some(state)) => states.push((device, Some(state))),
                    Ok(None) => {}
                    Err(e) => {
                        error!(source = %self.name, error = %e, "a changed device's state could not be read for the changelog")
                    }
                }
            }
            // the notifiers' records: those new or changed, and a tombstone for each one gone
            // since (a notification delivered, a cooldown expired)
            let now = extras.remove(key).unwrap_or_default();
            let in_changelog = changelog.extras.get(key);
            let gone: Vec<String> = in_changelog
                .map(|had| had.keys().filter(|k| !now.contains_key(*k)).cloned().collect())
                .unwrap_or_default();
            let mut hashes = BTreeMap::new();
            for (k, record) in now {
                let hash = crate::connectors::kafka::changelog::extra_hash(&record);
                hashes.insert(k.clone(), hash);
                if in_changelog.and_then(|had| had.get(&k)) != Some(&hash) {
                    states.push((k, Some(record)));
                }
            }
            states.extend(gone.into_iter().map(|k| (k, None)));
            extras_now.push((key.clone(), hashes));
            if let Some(repairs) = changelog.repair.get(key) {
                let written: std::collections::HashSet<String> = states.iter().map(|(d, _)| d.clone()).collect();
                states.extend(repairs.iter().filter(|(d, _)| !written.contains(d)).cloned());
            }
            if states.is_empty() && changelog.published.get(key) == Some(&offset) {
                done.insert(key.clone()); // its newest marker stands for this offset already
                continue;
            }
            let marker = crate::connectors::kafka::changelog::ChangelogMarker {
                version: crate::connectors::kafka::changelog::MARKER_VERSION,
                topic: key.0.clone(),
                partition: key.1,
                next_offset: offset,
                pipeline_hash: pipeline.hash.clone(),
                key_groups: pipeline.key_groups,
                checkpoint,
                written_ms: crate::clock::now_ms(),
                devices: states.iter().filter(|(k, _)| !k.starts_with('\0')).count() as u64,
            };
            match changelog.writer.queue(key.1, &states, &marker) {
                Ok(p) => queued.push((key.clone(), offset, p)),
                Err(e) => {
                    self.stats.changelog_failures.fetch_add(1, Ordering::Relaxed);
                    error!(source = %self.name, error = %e, "the kafka changelog could not be published: the next checkpoint tries again");
                }
            }
        }
        if queued.is_empty() {
            return done;
        }
        let started = Instant::now();
        let failed = match changelog.writer.flush() {
            Ok(f) => f,
            Err(e) => {
                self.stats.changelog_failures.fetch_add(1, Ordering::Relaxed);
                error!(source = %self.name, error = %e, "the kafka changelog could not be published: the next checkpoint tries again");
                return done;
            }
        };
        let (mut devices, mut bytes) = (0, 0);
        for (key, offset, p) in queued {
            if let Some(n) = failed.get(&key.1) {
                self.stats.changelog_failures.fetch_add(1, Ordering::Relaxed);
                error!(source = %self.name, topic = %changelog.topic, partition = key.1, failed = n, "kafka changelog records not delivered: the next checkpoint publishes the partition again");
                continue;
            }
            self.stats.changelog_publishes.fetch_add(1, Ordering::Relaxed);
            self.stats.changelog_devices.fetch_add(p.devices, Ordering::Relaxed);
            self.stats.changelog_bytes.fetch_add(p.bytes, Ordering::Relaxed);
            devices += p.devices;
            bytes += p.bytes;
            changelog.full.remove(&key);
            changelog.dirty.remove(&key);
            changelog.repair.remove(&key);
            changelog.published.insert(key.clone(), offset);
            if let Some(i) = extras_now.iter().position(|(k, _)| *k == key) {
                changelog.extras.insert(key.clone(), extras_now.swap_remove(i).1);
            }
            done.insert(key);
        }
        debug!(source = %self.name, topic = %changelog.topic, checkpoint, partitions = done.len(), devices, bytes, ms = started.elapsed().as_millis() as u64, "kafka changelog published");
        done
    }

    /// The changelog replicas of the partitions in `assigned` (none without a changelog):
    /// from the standby, brought up to each partition's end, or read from the partitions'
    /// start. Each with how it was had.
    pub(super) fn read_changelog(
        &mut self,
        assigned: &[PartitionKey],
    ) -> BTreeMap<i32, (crate::connectors::kafka::changelog::PartitionReplica, &'static str)> {
        use crate::connectors::kafka::changelog::{PartitionReplica, partition_ends, read_partitions};
        const READ_TIMEOUT: Duration = Duration::from_secs(120);
        let mut out = BTreeMap::new();
        let Some(changelog) = self.changelog.as_ref() else {
            return out;
        };
        if assigned.is_empty() {
            return out;
        }
        let partitions: Vec<i32> = assigned.iter().map(|k| k.1).collect();
        if let Some(standby) = &changelog.standby {
            match partition_ends(&changelog.reader_config, &changelog.topic, &partitions) {
                Ok(ends) => {
                    for (p, high) in ends {
                        if let Some(r) = standby.caught_up(p, high, READ_TIMEOUT) {
                            out.insert(p, (r, "standby"));
                        }
                    }
                }
                Err(e) => {
                    warn!(source = %self.name, error = %e, "the standby's replicas could not be brought up to date: reading the changelog")
                }
            }
        }
        let mut to_read: BTreeMap<i32, PartitionReplica> = partitions
            .iter()
            .filter(|p| !out.contains_key(*p))
            .map(|p| (*p, PartitionReplica::default()))
            .collect();
        if !to_read.is_empty() {
            match read_partitions(&changelog.reader_config, &changelog.topic, &mut to_read, READ_TIMEOUT) {
                Ok(stats) => {
                    info!(source = %self.name, topic = %changelog.topic, partitions = to_read.len(), records = stats.records, bytes = stats.bytes, ms = stats.elapsed.as_millis() as u64, "kafka changelog read");
                    out.extend(to_read.into_iter().map(|(p, r)| (p, (r, "read"))));
                }
                Err(e) => {
                    error!(source = %self.name, error = %e, "the kafka changelog could not be read: going on without it")
                }
            }
        }
        out
    }

    /// When partition `key`'s changelog state (`replica`) is newer than this member's own
    /// (`own`: its checkpointed offset), imports it into the store. Returns the offset to go on
    /// from when it did.
    pub(super) fn restore_from_changelog(
        &mut self,
        key: &PartitionKey,
        own: Option<i64>,
        replica: crate::connectors::kafka::changelog::PartitionReplica,
        how: &'static str,
    ) -> Option<i64> {
        let (store, pipeline) = (self.store.clone()?, self.pipeline.clone()?);
        let kgs = self.key_groups;
        let changelog = self.changelog.as_mut()?;
        let started = Instant::now();
        for d in &replica.damaged {
            error!(source = %self.name, topic = %changelog.topic, partition = key.1, offset = d.offset, problem = %d.problem, "a damaged changelog record is skipped");
        }
        changelog.repair.insert(key.clone(), replica.uncommitted());
        changelog.extras.insert(key.clone(), replica.extras());
        let handoff = replica.to_handoff()?;
        if handoff.topic != key.0 || handoff.pipeline_hash != pipeline.hash || handoff.key_groups != pipeline.key_groups
        {
            warn!(source = %self.name, topic = %changelog.topic, partition = key.1, "the changelog holds another pipeline's state (or another topic's): ignoring it");
            changelog.full.insert(key.clone());
            return None;
        }
        // the notifications the partition's last owner had not delivered: this member sends
        // them now (those it has already, or acknowledged, are skipped); and its policies'
        // entries for the partition's devices, merged before the next decision
        if let Some(handover) = &self.notifications {
            let policies = replica.policies();
            if !policies.is_empty() {
                info!(source = %self.name, topic = %key.0, partition = key.1, devices = policies.len(), "policy entries taken over from the changelog");
                handover.take_over_policies(policies);
            }
            let waiting = replica.notifications();
            if !waiting.is_empty() {
                let taken = handover.take_over(waiting.clone());
                self.stats
                    .changelog_notifications_taken
                    .fetch_add(taken as u64, Ordering::Relaxed);
                info!(source = %self.name, topic = %key.0, partition = key.1, in_changelog = waiting.len(), taken, "pending notifications taken over from the changelog");
            }
        }
        let holds_devices = store.partition_devices(&key.0, key.1).is_ok_and(|d| !d.is_empty());
        let newer = own.is_none_or(|o| handoff.next_offset > o || (handoff.next_offset == o && !holds_devices));
        if !newer {
            if own.is_some_and(|o| o > handoff.next_offset) {
                changelog.full.insert(key.clone());
            }
            info!(source = %self.name, topic = %key.0, partition = key.1, own = ?own, changelog = handoff.next_offset, "this member's own state of the partition is as new as the changelog's");
            return None;
        }
        // copies in memory from an earlier ownership are older than what comes in
        let mut devices = store.partition_devices(&key.0, key.1).unwrap_or_default();
        devices.extend(handoff.devices.iter().map(|(d, _)| d.clone()));
        if let Some(o) = &self.ownership {
            o.evict(devices);
        }
        let new = match store.import_partition(&handoff, |d| key_group_of(d, kgs)) {
            Ok(new) => new,
            Err(e) => {
                error!(source = %self.name, error = %e, "the changelog's state could not be imported: starting from the group's offset");
                return None;
            }
        };
        if let Some(o) = &self.ownership {
            o.stored_devices_changed(new as i64);
            o.adopt(handoff.devices.iter().map(|(d, _)| d.clone()).collect());
        }
        let ms = started.elapsed().as_millis() as u64;
        self.stats.changelog_restores.fetch_add(1, Ordering::Relaxed);
        self.stats
            .changelog_restored_devices
            .fetch_add(handoff.devices.len() as u64, Ordering::Relaxed);
        self.stats.changelog_restore_ms.fetch_add(ms, Ordering::Relaxed);
        info!(source = %self.name, topic = %key.0, partition = key.1, next_offset = handoff.next_offset, devices = handoff.devices.len(), records = replica.records, bytes = replica.bytes, from_checkpoint = handoff.checkpoint, how, ms, "kafka partition restored from the changelog");
        Some(handoff.next_offset)
    }
}
