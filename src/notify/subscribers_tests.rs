//! Tests of the subscribers (`subscribers.rs`): the file, the store, token checks.

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn add_remove_and_wildcard_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subs.json");
        let s = FileSubscribers::open(&path).unwrap();
        assert!(s.add("lab-1", "tok-a").unwrap());
        assert!(!s.add("lab-1", "tok-a").unwrap());
        s.add("*", "tok-ops").unwrap();
        assert_eq!(s.tokens_for("lab-1").unwrap(), ["tok-a", "tok-ops"]);
        assert_eq!(s.tokens_for("lab-2").unwrap(), ["tok-ops"]);
        let again = FileSubscribers::open(&path).unwrap();
        assert_eq!(again.list().unwrap(), s.list().unwrap());
        assert!(again.remove("*", "tok-a").unwrap());
        assert_eq!(
            FileSubscribers::open(&path).unwrap().tokens_for("lab-1").unwrap(),
            ["tok-ops"]
        );
    }
}

#[cfg(test)]
mod store_tests {
    use super::super::*;

    #[test]
    fn subscriptions_persist_per_provider_and_unregistered_tokens_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open_tool(dir.path()).unwrap();
            let subs = SubscriberStore::open(store.clone()).unwrap();
            assert!(subs.add("fcm", "lab-1", "tok-a").unwrap());
            assert!(!subs.add("fcm", "lab-1", "tok-a").unwrap());
            subs.add("fcm", "*", "tok-ops").unwrap();
            subs.add("apns", "lab-1", "tok-apple").unwrap();
            assert!(subs.add("gcm", "lab-1", "x").is_err());
            let fcm = subs.for_provider("fcm").unwrap();
            assert_eq!(fcm.tokens_for("lab-1").unwrap(), ["tok-a", "tok-ops"]);
            fcm.forget_unregistered("tok-ops", "fcm");
            drop((fcm, subs));
            StateStore::close(store);
        }
        let store = StateStore::open_tool(dir.path()).unwrap();
        let subs = SubscriberStore::open(store).unwrap();
        assert_eq!(subs.tokens_for("fcm", "lab-2"), Vec::<String>::new());
        assert_eq!(subs.tokens_for("fcm", "lab-1"), ["tok-a"]);
        assert_eq!(subs.tokens_for("apns", "lab-1"), ["tok-apple"]);
        assert_eq!(subs.removed_count("fcm"), 1);
        assert_eq!(subs.removed_count("apns"), 0);
        assert!(subs.remove("apns", "*", "tok-apple").unwrap());
        assert!(subs.list("apns").is_empty());
    }

    #[test]
    fn queued_requests_are_applied_once_and_the_file_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_tool(dir.path()).unwrap();
        let subs = SubscriberStore::open(store).unwrap();
        let req = |op, device: &str, token: &str| SubscriberRequest {
            op,
            provider: "apns".into(),
            device: device.into(),
            token: token.into(),
        };
        queue_request(dir.path(), &req(RequestOp::Add, "d1", "t1")).unwrap();
        queue_request(dir.path(), &req(RequestOp::Add, "d2", "t2")).unwrap();
        queue_request(dir.path(), &req(RequestOp::Remove, "d1", "t1")).unwrap();
        assert_eq!(queued_requests(dir.path()).len(), 3);
        assert_eq!(subs.apply_requests(dir.path()).unwrap(), 3);
        assert!(queued_requests(dir.path()).is_empty());
        assert_eq!(subs.apply_requests(dir.path()).unwrap(), 0);
        assert_eq!(
            subs.list("apns"),
            BTreeMap::from([("d2".to_string(), vec!["t2".to_string()])])
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(requests_path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "the file holds tokens");
        }
    }

    #[test]
    fn a_token_hint_never_holds_the_whole_token() {
        let hint = token_hint("dGhpcyBpcyBhIHZlcnkgbG9uZyB0b2tlbg");
        assert!(hint.starts_with("dGhp…"));
        assert!(!hint.contains("pcyBp"));
    }
}

#[cfg(test)]
mod token_tests {
    use super::super::*;

    #[test]
    fn tokens_that_could_change_a_request_are_refused() {
        assert!(check_token("apns", &"ab12".repeat(16)).is_ok());
        for bad in ["", "../../3/device/x", "abc?x=1", "ab cd", &"a".repeat(201)] {
            let e = check_token("apns", bad).unwrap_err().to_string();
            assert!(e.starts_with("not a valid apns token"), "{bad}: {e}");
        }
        assert!(check_token("fcm", "dGVzdA:APA91b-x_y").is_ok());
        for bad in ["", "a b", "a/b", "a\"b", &"a".repeat(4097)] {
            assert!(check_token("fcm", bad).is_err(), "{bad}");
        }
    }
}
