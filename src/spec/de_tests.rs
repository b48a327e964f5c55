//! Tests of the positioned deserializer.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::*;
use crate::spec::yaml::parse;

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Inner {
    every: String,
    #[serde(default)]
    lateness: Option<String>,
    #[serde(default)]
    count: u32,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Window(Inner),
    Stdin(BTreeMap<String, String>),
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Unit {
    Seconds,
    Millis,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Top {
    ops: Vec<Kind>,
    #[serde(default)]
    unit: Option<Unit>,
    #[serde(default)]
    ratio: f64,
    #[serde(default)]
    on: bool,
}

fn load(text: &str) -> Result<Top, Error> {
    let node = parse(text).unwrap();
    from_node(&node, None)
}

fn err(text: &str) -> String {
    load(text).unwrap_err().to_string()
}

#[test]
fn reads_structs_enums_lists_options_numbers() {
    let top =
        load("ops:\n  - window: { every: 60s, count: 3 }\n  - stdin\nunit: millis\nratio: 2\non: true\n").unwrap();
    assert_eq!(top.ops.len(), 2);
    assert_eq!(
        top.ops[0],
        Kind::Window(Inner {
            every: "60s".into(),
            lateness: None,
            count: 3
        })
    );
    assert_eq!(top.ops[1], Kind::Stdin(BTreeMap::new()));
    assert_eq!(top.unit, Some(Unit::Millis));
    assert_eq!(top.ratio, 2.0);
    assert!(top.on);
}

#[test]
fn unknown_key_points_at_the_key_and_suggests() {
    assert_eq!(
        err("ops:\n  - window:\n      every: 1s\n      latenes: 2s\n"),
        "4:7: unknown key `latenes` in window; did you mean `lateness`? (valid keys: every, lateness, count)"
    );
    assert_eq!(
        err("opz: []\n"),
        "1:1: unknown key `opz` at the top level; did you mean `ops`? (valid keys: ops, unit, ratio, on)"
    );
}

#[test]
fn unknown_variant_says_what_kind_of_thing() {
    let e = err("ops:\n  - windw: { every: 1s }\n");
    assert!(
        e.starts_with("2:5: unknown value `windw` for `ops`; did you mean `window`?"),
        "{e}"
    );
    let e = err("ops: []\nunit: secs\n");
    assert!(
        e.starts_with("2:7: unknown value `secs` for `unit`; did you mean `seconds`?"),
        "{e}"
    );
    assert!(e.ends_with("(valid values: seconds, millis)"), "{e}");
}

#[test]
fn wrong_types_say_what_was_expected_in_words() {
    assert_eq!(
        err("ops: []\nratio: high\n"),
        "2:8: expected a number, found the string `high`"
    );
    assert_eq!(
        err("ops: []\nratio: \"2\"\n"),
        "2:8: expected a number, found the string `2` (remove the quotes to make it a number)"
    );
    assert_eq!(
        err("ops: []\non: yes\n"),
        "2:5: expected true or false, found the string `yes`"
    );
    assert_eq!(
        err("ops: 3\n"),
        "1:6: expected a list (`[a, b]`, or one `- item` per line), found the number 3"
    );
    assert_eq!(
        err("ops:\n  - window: { every: 1s, count: -1 }\n"),
        "2:33: expected a whole number (0 or more), found the number -1"
    );
    assert_eq!(
        err("ops:\n  - window: { every: 1s, count: 5000000000 }\n"),
        "2:33: expected a whole number from 0 to 4294967295, found 5000000000"
    );
}

#[test]
fn missing_keys_point_at_the_map() {
    assert_eq!(
        err("ops:\n  - window: { count: 1 }\n"),
        "2:13: missing required key `every` in window"
    );
    assert_eq!(
        err("unit: seconds\n"),
        "1:1: missing required key `ops` at the top level"
    );
}

#[test]
fn an_enum_needs_exactly_one_key() {
    let e = err("ops:\n  - { window: { every: 1s }, stdin: {} }\n");
    assert!(e.starts_with("2:5: expected one of: window, stdin; found"), "{e}");
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(untagged)]
enum NumberOrWords {
    Number(f64),
    Words(Vec<String>),
    Flag(bool),
}

#[test]
fn untagged_enums_go_through_deserialize_any() {
    let read = |text: &str| {
        let node = parse(text).unwrap();
        from_node::<BTreeMap<String, NumberOrWords>>(&node, None).map_err(|e| e.to_string())
    };
    let got = read("a: 1.5\nb: [x, y]\nc: true\nd: 7\n").unwrap();
    assert_eq!(got["a"], NumberOrWords::Number(1.5));
    assert_eq!(got["b"], NumberOrWords::Words(vec!["x".into(), "y".into()]));
    assert_eq!(got["c"], NumberOrWords::Flag(true));
    assert_eq!(got["d"], NumberOrWords::Number(7.0));
    let e = read("a: { x: 1 }\n").unwrap_err();
    assert!(e.starts_with("1:4: data did not match any variant"), "{e}");
}

#[test]
fn suggestions_only_when_close() {
    assert_eq!(suggest("latenes", ["every", "lateness"]), Some("lateness"));
    assert_eq!(suggest("Window", ["window", "baseline"]), Some("window"));
    assert_eq!(suggest("zzz", ["window", "baseline"]), None);
}
