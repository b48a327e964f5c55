//! Tests of both outboxes.

mod memory_outbox {
    use super::super::*;

    fn entry(id: &str) -> OutboxEntry {
        OutboxEntry {
            id: id.into(),
            event_id: id.into(),
            device: "d".into(),
            target: String::new(),
            kind: "event_start".into(),
            severity: None,
            title: String::new(),
            body: String::new(),
            payload: "{}".into(),
            created_ms: 0,
            held: false,
        }
    }

    #[test]
    fn acknowledged_ids_are_not_put_again_and_pending_keeps_order() {
        let o = MemoryOutbox::new();
        assert_eq!(o.put(vec![entry("a"), entry("b"), entry("a")]).unwrap().len(), 2);
        o.acknowledge("a").unwrap();
        assert!(o.is_acknowledged("a").unwrap());
        assert!(
            o.put(vec![entry("a")]).unwrap().is_empty(),
            "a replayed, acknowledged event"
        );
        o.put(vec![entry("c")]).unwrap();
        let ids: Vec<_> = o.pending().unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["b", "c"]);
        o.dead_letter("b", "HTTP 400", 1).unwrap();
        assert_eq!(o.dead_letters().unwrap()[0].error, "HTTP 400");
        assert!(o.put(vec![entry("b")]).unwrap().is_empty());
        assert_eq!(o.len(), 1);
    }
}

mod store_outbox {
    use super::super::*;

    fn entry(id: &str, device: &str) -> OutboxEntry {
        OutboxEntry {
            id: id.into(),
            event_id: id.into(),
            device: device.into(),
            target: String::new(),
            kind: "event_start".into(),
            severity: Some("high".into()),
            title: format!("title {id}"),
            body: "body".into(),
            payload: format!("{{\"id\":\"{id}\"}}"),
            created_ms: 1_700_000_000_000,
            held: false,
        }
    }

    fn ids(entries: &[OutboxEntry]) -> Vec<String> {
        entries.iter().map(|e| e.id.clone()).collect()
    }

    #[test]
    fn pending_entries_survive_a_reopen_in_put_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open_tool(dir.path()).unwrap();
            let o = StoreOutbox::open(store.clone(), "webhook:0").unwrap();
            // ids that sort differently from their put order
            let added = o
                .put(vec![
                    entry("z", "d1"),
                    entry("a", "d2"),
                    entry("m", "d1"),
                    entry("a", "d2"),
                ])
                .unwrap();
            assert_eq!(ids(&added), ["z", "a", "m"], "a duplicate within one put is skipped");
            o.put(vec![entry("b", "d3")]).unwrap();
            o.acknowledge("a").unwrap();
            // another sink's outbox in the same store does not mix in
            let other = StoreOutbox::open(store.clone(), "webhook:1").unwrap();
            other.put(vec![entry("z", "d1"), entry("y", "d1")]).unwrap();
            drop((o, other));
            StateStore::close(store);
        }
        let store = StateStore::open_tool(dir.path()).unwrap();
        let o = StoreOutbox::open(store.clone(), "webhook:0").unwrap();
        let pending = o.pending().unwrap();
        assert_eq!(ids(&pending), ["z", "m", "b"]);
        assert_eq!(pending[0], entry("z", "d1"), "entries come back whole");
        assert!(o.is_acknowledged("a").unwrap());
        assert!(!o.is_acknowledged("z").unwrap());
        assert_eq!(o.delivered().unwrap(), 1);
        // sequences continue after the reopen: new entries go after the old ones
        o.put(vec![entry("c", "d1")]).unwrap();
        assert_eq!(ids(&o.pending().unwrap()), ["z", "m", "b", "c"]);
        let other = StoreOutbox::open(store.clone(), "webhook:1").unwrap();
        assert_eq!(ids(&other.pending().unwrap()), ["z", "y"]);
        // every stored value is in the store's envelope (retained::verify relies on it)
        for item in store.outbox_table().scan_prefix(&[]) {
            let (_, v) = item.unwrap();
            let payload = unseal(&v).unwrap();
            assert_eq!(payload[0], RECORD_VERSION);
        }
    }

    #[test]
    fn entries_put_unsynced_then_synced_are_pending_in_order_and_acknowledged_after() {
        // the notifier's two steps: written, handed to the engine (which may acknowledge at
        // once), then synced
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open_tool(dir.path()).unwrap();
            let o = StoreOutbox::open(store.clone(), "webhook:0").unwrap();
            o.put(vec![entry("a", "d1")]).unwrap();
            let added = o
                .put_unsynced(vec![entry("b", "d1"), entry("a", "d1"), entry("c", "d2")])
                .unwrap();
            assert_eq!(ids(&added), ["b", "c"], "a pending id is not put again");
            o.acknowledge("b").unwrap();
            o.sync().unwrap();
            assert_eq!(ids(&o.pending().unwrap()), ["a", "c"]);
            drop(o);
            StateStore::close(store);
        }
        let store = StateStore::open_tool(dir.path()).unwrap();
        let o = StoreOutbox::open(store.clone(), "webhook:0").unwrap();
        assert_eq!(ids(&o.pending().unwrap()), ["a", "c"], "in put order after a reopen");
        assert!(
            o.is_acknowledged("b").unwrap(),
            "the acknowledgement after the put wins"
        );
        assert_eq!(o.delivered().unwrap(), 1);
        let added = o.put_unsynced(vec![entry("b", "d1"), entry("d", "d1")]).unwrap();
        assert_eq!(ids(&added), ["d"], "an acknowledged id is not put again");
        o.sync().unwrap();
        assert_eq!(ids(&o.pending().unwrap()), ["a", "c", "d"]);
    }

    #[test]
    fn acknowledged_ids_are_not_put_again_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_tool(dir.path()).unwrap();
        let o = StoreOutbox::open(store.clone(), "fcm:0").unwrap();
        o.put(vec![entry("e1", "d"), entry("e2", "d"), entry("e3", "d")])
            .unwrap();
        o.acknowledge("e1").unwrap();
        o.discard("e2").unwrap();
        // acknowledging twice, or an id never put, changes nothing
        o.acknowledge("e1").unwrap();
        assert_eq!(o.delivered().unwrap(), 1, "a discarded entry is not delivered");
        drop(o);
        let o = StoreOutbox::open(store.clone(), "fcm:0").unwrap();
        // the replay of the same events
        let added = o
            .put(vec![
                entry("e1", "d"),
                entry("e2", "d"),
                entry("e3", "d"),
                entry("e4", "d"),
            ])
            .unwrap();
        assert_eq!(ids(&added), ["e4"], "acknowledged and pending ids are not put again");
        assert_eq!(ids(&o.pending().unwrap()), ["e3", "e4"]);
    }

    #[test]
    fn dead_letters_are_kept_with_the_last_error_and_not_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_tool(dir.path()).unwrap();
        let o = StoreOutbox::open(store.clone(), "apns:0").unwrap();
        o.put(vec![entry("x", "d"), entry("y", "d")]).unwrap();
        o.dead_letter("x", "max_age reached; last error: HTTP 503", 7).unwrap();
        drop(o);
        let o = StoreOutbox::open(store.clone(), "apns:0").unwrap();
        let dead = o.dead_letters().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].entry, entry("x", "d"));
        assert_eq!(dead[0].error, "max_age reached; last error: HTTP 503");
        assert_eq!(dead[0].attempts, 7);
        assert!(o.is_acknowledged("x").unwrap());
        assert!(o.put(vec![entry("x", "d")]).unwrap().is_empty());
        assert_eq!(ids(&o.pending().unwrap()), ["y"]);
        let s = summaries(&store).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].sink.as_str(), s[0].pending, s[0].dead_letters), ("apns:0", 1, 1));
    }

    #[test]
    fn dead_letters_retried_are_pending_again_and_dropped_ones_stay_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_tool(dir.path()).unwrap();
        let outbox = StoreOutbox::open(store.clone(), "webhook:0").unwrap();
        outbox
            .put(vec![
                entry("e1", "d1"),
                entry("e2", "d1"),
                entry("e3", "d2"),
                entry("e4", "d2"),
            ])
            .unwrap();
        for id in ["e1", "e2", "e3"] {
            outbox.dead_letter(id, "HTTP 400: bad payload", 1).unwrap();
        }
        assert_eq!(ids(&outbox.pending().unwrap()), ["e4"]);
        assert_eq!(outbox.meta().dead_letters, 3);

        // one by id, then the rest
        assert_eq!(
            outbox.retry_dead_letters(Some(&["e2".to_string()]), 5_000).unwrap(),
            ["e2"]
        );
        assert_eq!(ids(&outbox.pending().unwrap()), ["e4", "e2"], "after the pending ones");
        assert_eq!(
            outbox.pending().unwrap()[1].created_ms,
            5_000,
            "max_age counts from the retry"
        );
        assert!(!outbox.is_acknowledged("e2").unwrap(), "deliverable again");
        assert_eq!(outbox.drop_dead_letters(None).unwrap(), ["e1", "e3"]);
        assert!(outbox.dead_letters().unwrap().is_empty());
        assert_eq!(outbox.meta().dead_letters, 0);
        // a dropped id is not put again by a replay; a retried one is delivered once
        assert!(outbox.put(vec![entry("e1", "d1")]).unwrap().is_empty());
        assert!(outbox.is_acknowledged("e3").unwrap());
        outbox.acknowledge("e2").unwrap();
        drop(outbox);
        let reopened = StoreOutbox::open(store, "webhook:0").unwrap();
        assert_eq!(ids(&reopened.pending().unwrap()), ["e4"]);
        assert_eq!(reopened.meta().delivered, 1);
        assert!(reopened.retry_dead_letters(None, 6_000).unwrap().is_empty());
    }

    #[test]
    fn acknowledged_ids_beyond_the_retention_are_forgotten_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_tool(dir.path()).unwrap();
        let keep_all = AckRetention {
            max_ids: 3,
            max_age_ms: 3_600_000,
        };
        let o = StoreOutbox::with_retention(store.clone(), "webhook:0", keep_all).unwrap();
        for i in 0..6 {
            let id = format!("k{i}");
            o.put(vec![entry(&id, "d")]).unwrap();
            o.acknowledge(&id).unwrap();
        }
        // over the count but within the time window: all remembered
        assert_eq!(o.meta().acknowledged, 6);
        drop(o);
        let forget = AckRetention {
            max_ids: 3,
            max_age_ms: 0,
        };
        let o = StoreOutbox::with_retention(store.clone(), "webhook:0", forget).unwrap();
        o.put(vec![entry("k6", "d")]).unwrap();
        o.acknowledge("k6").unwrap();
        assert_eq!(o.meta().acknowledged, 3);
        for i in 0..4 {
            assert!(!o.is_acknowledged(&format!("k{i}")).unwrap(), "k{i} forgotten");
        }
        for i in 4..7 {
            assert!(o.is_acknowledged(&format!("k{i}")).unwrap(), "k{i} remembered");
        }
        assert_eq!(o.delivered().unwrap(), 7, "the delivered count is not pruned");
    }
}
