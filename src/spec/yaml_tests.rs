//! Tests of the positioned YAML tree (`yaml.rs`).

use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "PORT" => Some("1884".into()),
        "EMPTY" => Some(String::new()),
        "HOST" => Some("broker.local".into()),
        _ => None,
    }
}

#[test]
fn nodes_remember_line_and_column() {
    let doc = parse("a: 1\nb:\n  - x\n  - { c: 'q' }\n").unwrap();
    assert_eq!(doc.position, Position { line: 1, column: 1 });
    let a = doc.entry("a").unwrap();
    assert_eq!(a.key.position, Position { line: 1, column: 1 });
    assert_eq!(a.value.position, Position { line: 1, column: 4 });
    let b = doc.get("b").unwrap();
    assert_eq!(b.index(0).unwrap().position, Position { line: 3, column: 5 });
    let c = b.index(1).unwrap().entry("c").unwrap();
    assert_eq!(c.key.position, Position { line: 4, column: 7 });
    assert_eq!(c.value.position, Position { line: 4, column: 10 });
    assert_eq!(c.value.as_scalar().unwrap().style, Style::Quoted);
}

#[test]
fn plain_scalars_follow_the_core_schema() {
    let plain = |t: &'static str| resolve_plain(t);
    assert_eq!(plain("12"), Resolved::Integer(12));
    assert_eq!(plain("-3"), Resolved::Integer(-3));
    assert_eq!(plain("0x1f"), Resolved::Integer(31));
    assert_eq!(plain("1.5"), Resolved::Float(1.5));
    assert_eq!(plain("1e3"), Resolved::Float(1000.0));
    assert_eq!(plain("true"), Resolved::Bool(true));
    assert_eq!(plain("~"), Resolved::Null);
    assert_eq!(plain(""), Resolved::Null);
    assert_eq!(plain("60s"), Resolved::Text("60s"));
    assert_eq!(plain("3.1.1"), Resolved::Text("3.1.1"));
    assert_eq!(plain("yes"), Resolved::Text("yes"));
    assert_eq!(
        Scalar {
            text: "12".into(),
            style: Style::Quoted
        }
        .resolve(),
        Resolved::Text("12")
    );
}

#[test]
fn alias_bombs_deep_nesting_and_many_keys_are_refused_or_linear() {
    // "billion laughs": nine levels of ten aliases each would be 10^9 values
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..9 {
        let prev = level - 1;
        bomb.push_str(&format!(
            "a{level}: &a{level} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
        ));
    }
    let e = parse(&bomb).unwrap_err();
    assert!(e.message.contains("more than 100000 values"), "{e}");
    assert_eq!(e.position.line, 5, "refused where the count passes the limit: {e}");
    // a few aliases of a small anchor are fine
    let ok = parse("base: &b { every: 60s }\nw1: *b\nw2: *b\n").unwrap();
    assert_eq!(ok.get("w2").unwrap().get("every").unwrap().as_text(), Some("60s"));
    // 200 levels of lists: refused at level 65, not a stack overflow later
    let deep = "[".repeat(200) + &"]".repeat(200);
    let e = parse(&deep).unwrap_err();
    assert!(e.message.contains("nested more than 64 levels"), "{e}");
    assert_eq!(e.position.column, 65);
    // 50,000 keys in one map, half of them repeated: every repeat reported
    let mut many = String::new();
    for i in 0..25_000 {
        many.push_str(&format!("k{i}: 1\nk{i}: 2\n"));
    }
    let node = parse(&many).unwrap();
    assert_eq!(duplicate_keys(&node).len(), 25_000);
}

#[test]
fn aliases_clone_the_anchored_node() {
    let doc = parse("base: &b { x: 1 }\ncopy: *b\n").unwrap();
    assert_eq!(doc.get("copy").unwrap().get("x").unwrap().as_text(), Some("1"));
}

#[test]
fn syntax_errors_have_the_parser_position() {
    let err = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
    assert!(err.message.starts_with("YAML syntax error"), "{err}");
    assert!(err.position.line >= 2, "{err}");
    let err = parse("a: b: c\n").unwrap_err();
    assert_eq!(err.position.line, 1, "{err}");
    assert!(parse("").unwrap_err().message.contains("empty"));
    assert!(
        parse("a: 1\n---\nb: 2\n")
            .unwrap_err()
            .message
            .contains("one YAML document")
    );
    assert!(parse("a: !custom 1\n").unwrap_err().message.contains("tag"));
}

#[test]
fn duplicate_keys_point_at_the_second() {
    let doc = parse("a: 1\nb: 2\na: 3\n").unwrap();
    let errors = duplicate_keys(&doc);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].position, Position { line: 3, column: 1 });
    assert!(errors[0].message.contains("first at line 1"));
}

#[test]
fn interpolation_forms() {
    assert_eq!(interpolate_text("${PORT}", &env).unwrap(), "1884");
    assert_eq!(interpolate_text("${MISSING:-1883}", &env).unwrap(), "1883");
    assert_eq!(interpolate_text("${EMPTY:-x}", &env).unwrap(), "x");
    assert_eq!(interpolate_text("${EMPTY}", &env).unwrap(), "");
    assert_eq!(
        interpolate_text("mqtt://${HOST}:${PORT}", &env).unwrap(),
        "mqtt://broker.local:1884"
    );
    assert_eq!(interpolate_text("cost: $$5", &env).unwrap(), "cost: $5");
    assert_eq!(interpolate_text("$share/g/t", &env).unwrap(), "$share/g/t");
    assert_eq!(interpolate_text("${MISSING:-}", &env).unwrap(), "");
    let err = interpolate_text("${MISSING}", &env).unwrap_err();
    assert!(err.contains("`MISSING` is not set"), "{err}");
    assert!(interpolate_text("${PORT", &env).unwrap_err().contains("closing"));
    assert!(
        interpolate_text("${1X}", &env)
            .unwrap_err()
            .contains("not a valid reference")
    );
}

#[test]
fn interpolation_keeps_plain_style_so_values_are_typed_after_it() {
    let mut doc = parse("port: ${PORT:-1883}\nquoted: \"${PORT}\"\n${KEY}: x\nbad: ${NOPE}\n").unwrap();
    let errors = interpolate(&mut doc, &env);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].position, Position { line: 4, column: 6 });
    assert_eq!(
        doc.get("port").unwrap().as_scalar().unwrap().resolve(),
        Resolved::Integer(1884)
    );
    assert_eq!(
        doc.get("quoted").unwrap().as_scalar().unwrap().resolve(),
        Resolved::Text("1884")
    );
    assert!(doc.get("${KEY}").is_some(), "keys are not interpolated");
}
