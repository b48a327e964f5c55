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
        // without a durable checkpoint, the offsets are not committed: the next owner re-reads
        if checkpoint.is_some() || self.store.is_none() {
            let tpl = Self::offsets_list(&offsets, None);
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
                if self.write_handoff(key, *offset, id, "revoked").is_none() {
                    continue;
                }
                handed_off.insert(key.clone());
                // the next owner has the state now: forget it here
                let devices = store.partition_devices(&key.0, key.1).unwrap_or_default();
                let evicted = self.ownership.as_ref().map_or(0, |o| o.evict(devices.clone()));
                match store.drop_partition(&key.0, key.1, |d| key_group_of(d, kgs)) {
                    Ok(n) => {
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
            self.handed_off_at.remove(key);
            self.assigned.remove(key);
            self.at_end.remove(key);
        }
        for (_, offsets) in &mut self.at_barrier {
            offsets.retain(|k, _| !revoked.contains(k));
        }
    }

    /// The partitions in `assigned` are ours now: where does each one start?
    pub(super) fn assign(&mut self, tpl: &mut TopicPartitionList) {
        let assigned: Vec<PartitionKey> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        self.stats.rebalances.fetch_add(1, Ordering::Relaxed);
        for key in &assigned {
            let mut start = self.own_offset(key);
            let mut from = if start.is_some() { "checkpoint" } else { "group" };
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
                            Ok(()) => {
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
            let offset = match start {
                Some(o) => {
                    self.carried.remove(key);
                    self.consumed.insert(key.clone(), o);
                    Offset::Offset(o)
                }
                None => Offset::Stored,
            };
            info!(source = %self.name, topic = %key.0, partition = key.1, offset = ?offset, from, "kafka partition assigned");
            if let Err(e) = tpl.set_partition_offset(&key.0, key.1, offset) {
                error!(source = %self.name, error = %e, "setting the start offset of a kafka partition");
            }
            self.assigned.insert(key.clone());
        }
        self.caught_up_logged = false;
    }
}
