//! Tests for the condition language. Almost every case goes through one of
//! three helpers: [`check`] (a condition against a customer), [`check_err`]
//! (a condition's parse error) and [`check_rule_err`] (a rule's parse error).

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::*;
use crate::model::Customer;

fn ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// A customer with every field set; tests change what they are about.
fn acme() -> Customer {
    Customer {
        external_id: "C-0042".into(),
        name: "Acme Test Ltd".into(),
        email: Some("Billing@Acme.example".into()),
        subsidiary: Some("Acme EU".into()),
        currency: Some("EUR".into()),
        balance: dec("10.50"),
        inactive: false,
        intercompany: false,
        last_modified: ts("2024-03-01T12:00:00Z"),
        custom: BTreeMap::from([
            ("segment".to_string(), "Enterprise".to_string()),
            ("score".to_string(), "7.25".to_string()),
            ("blank".to_string(), String::new()),
            ("tier".to_string(), "gold".to_string()),
        ]),
    }
}

/// A customer with no optional field and no custom field.
fn bare() -> Customer {
    Customer {
        email: None,
        subsidiary: None,
        currency: None,
        custom: BTreeMap::new(),
        ..acme()
    }
}

fn with(f: impl FnOnce(&mut Customer)) -> Customer {
    let mut c = acme();
    f(&mut c);
    c
}

/// Parses `cond` with `opts`, evaluates it against `c`, and checks that its
/// canonical JSON parses back (with default options) to the same verdict and
/// the same JSON.
fn check_opts(opts: ParseOptions, cond: Value, c: &Customer, expected: bool) {
    let parsed =
        Condition::parse(&cond, opts).unwrap_or_else(|e| panic!("{cond} should parse, got {e}"));
    assert_eq!(
        parsed.matches(c),
        expected,
        "{cond} (case_sensitive default {}) against {c:?}",
        opts.case_sensitive
    );
    let canonical = parsed.to_json();
    let again = Condition::parse(&canonical, ParseOptions::default())
        .unwrap_or_else(|e| panic!("canonical {canonical} of {cond} should parse, got {e}"));
    assert_eq!(
        again.matches(c),
        expected,
        "canonical {canonical} of {cond}"
    );
    assert_eq!(
        again.to_json(),
        canonical,
        "canonical form of {cond} is stable"
    );
    assert_eq!(serde_json::to_value(&parsed).unwrap(), canonical);
}

fn check(cond: Value, c: &Customer, expected: bool) {
    check_opts(ParseOptions::default(), cond, c, expected);
}

fn check_err(cond: Value, path: &str, message: &str) {
    match Condition::parse(&cond, ParseOptions::default()) {
        Ok(parsed) => panic!("{cond} should not parse, got {parsed:?}"),
        Err(e) => assert_eq!(
            (e.path.as_str(), e.message.as_str()),
            (path, message),
            "error for {cond}"
        ),
    }
}

fn check_rule_err(rule: Value, path: &str, message: &str) {
    match parse_rule(&rule) {
        Ok(parsed) => panic!("{rule} should not parse, got {parsed:?}"),
        Err(e) => assert_eq!(
            (e.path.as_str(), e.message.as_str()),
            (path, message),
            "error for {rule}"
        ),
    }
}

fn leaf(field: &str, op: &str, value: Value) -> Value {
    json!({ "field": field, "op": op, "value": value })
}

const ALL_OPS: &str = "is, is_not, contains, not_contains, starts_with, ends_with, matches, \
                       in, not_in, is_empty, is_not_empty, gt, gte, lt, lte";
const TEXT_OPS: &str = "is, is_not, contains, not_contains, starts_with, ends_with, matches, \
                        in, not_in, is_empty, is_not_empty";

// ---- text operators ----------------------------------------------------------

#[test]
fn is_and_is_not() {
    let c = acme();
    check(leaf("name", "is", json!("Acme Test Ltd")), &c, true);
    check(leaf("name", "is", json!("acme test ltd")), &c, true);
    check(leaf("name", "is", json!("Acme Test")), &c, false);
    check(leaf("name", "is_not", json!("ACME TEST LTD")), &c, false);
    check(leaf("name", "is_not", json!("Other")), &c, true);
    check(leaf("external_id", "is", json!("c-0042")), &c, true);
    check(leaf("currency", "is", json!("eur")), &c, true);
    check(leaf("subsidiary", "is", json!("ACME EU")), &c, true);
    check(leaf("email", "is", json!("billing@acme.example")), &c, true);
}

#[test]
fn contains_and_not_contains() {
    let c = acme();
    check(leaf("name", "contains", json!("test")), &c, true);
    check(leaf("name", "contains", json!("TEST")), &c, true);
    check(leaf("name", "contains", json!("demo")), &c, false);
    check(leaf("name", "not_contains", json!("test")), &c, false);
    check(leaf("name", "not_contains", json!("demo")), &c, true);
    check(leaf("email", "contains", json!("@acme.")), &c, true);
    check(leaf("name", "contains", json!("")), &c, true);
}

#[test]
fn starts_with_and_ends_with() {
    let c = acme();
    check(leaf("name", "starts_with", json!("acme")), &c, true);
    check(leaf("name", "starts_with", json!("Test")), &c, false);
    check(leaf("name", "ends_with", json!("LTD")), &c, true);
    check(leaf("name", "ends_with", json!("Acme")), &c, false);
    check(leaf("email", "ends_with", json!(".example")), &c, true);
    check(leaf("external_id", "starts_with", json!("C-")), &c, true);
}

#[test]
fn matches_searches_anywhere_and_honours_anchors() {
    let c = acme();
    check(leaf("name", "matches", json!("test")), &c, true);
    check(leaf("name", "matches", json!("^test")), &c, false);
    check(leaf("name", "matches", json!("^acme\\s+test")), &c, true);
    check(
        leaf("external_id", "matches", json!("^C-\\d{4}$")),
        &c,
        true,
    );
    check(
        leaf("external_id", "matches", json!("^C-\\d{3}$")),
        &c,
        false,
    );
    check(
        leaf("email", "matches", json!("@(acme|globex)\\.")),
        &c,
        true,
    );
}

#[test]
fn in_and_not_in() {
    let c = acme();
    check(leaf("currency", "in", json!(["USD", "eur"])), &c, true);
    check(leaf("currency", "in", json!(["USD", "GBP"])), &c, false);
    check(leaf("currency", "not_in", json!(["USD", "GBP"])), &c, true);
    check(leaf("currency", "not_in", json!(["Eur"])), &c, false);
    // Whole values, not substrings.
    check(leaf("currency", "in", json!(["EU"])), &c, false);
    // An empty list matches nothing; its negation everything.
    check(leaf("currency", "in", json!([])), &c, false);
    check(leaf("currency", "not_in", json!([])), &c, true);
    check(leaf("email", "in", json!([""])), &bare(), true);
}

#[test]
fn is_empty_and_is_not_empty() {
    let c = acme();
    check(json!({"field": "email", "op": "is_empty"}), &c, false);
    check(json!({"field": "email", "op": "is_not_empty"}), &c, true);
    check(json!({"field": "email", "op": "is_empty"}), &bare(), true);
    check(
        json!({"field": "email", "op": "is_not_empty"}),
        &bare(),
        false,
    );
    check(
        json!({"field": "subsidiary", "op": "is_empty"}),
        &bare(),
        true,
    );
    check(
        json!({"field": "currency", "op": "is_empty"}),
        &bare(),
        true,
    );
    let unnamed = with(|c| c.name.clear());
    check(json!({"field": "name", "op": "is_empty"}), &unnamed, true);
    check(json!({"field": "name", "op": "is_empty"}), &c, false);
    // An empty string is empty, but not missing in any other sense.
    let empty_email = with(|c| c.email = Some(String::new()));
    check(
        json!({"field": "email", "op": "is_empty"}),
        &empty_email,
        true,
    );
}

#[test]
fn missing_optional_fields_read_as_empty() {
    let c = bare();
    check(leaf("email", "contains", json!("@")), &c, false);
    check(leaf("email", "not_contains", json!("@")), &c, true);
    check(leaf("email", "is", json!("x@y.z")), &c, false);
    check(leaf("email", "is_not", json!("x@y.z")), &c, true);
    check(leaf("email", "is", json!("")), &c, true);
    check(leaf("email", "starts_with", json!("")), &c, true);
    check(leaf("email", "starts_with", json!("a")), &c, false);
    check(leaf("subsidiary", "ends_with", json!("EU")), &c, false);
    check(leaf("currency", "not_in", json!(["EUR"])), &c, true);
    check(leaf("email", "matches", json!("^$")), &c, true);
    check(leaf("email", "matches", json!(".")), &c, false);
}

// ---- case sensitivity -----------------------------------------------------------

#[test]
fn case_sensitive_per_leaf() {
    let c = acme();
    let cs = |op: &str, value: Value| json!({"field": "name", "op": op, "value": value, "case_sensitive": true});
    check(cs("is", json!("acme test ltd")), &c, false);
    check(cs("is", json!("Acme Test Ltd")), &c, true);
    check(cs("is_not", json!("acme test ltd")), &c, true);
    check(cs("contains", json!("test")), &c, false);
    check(cs("contains", json!("Test")), &c, true);
    check(cs("not_contains", json!("test")), &c, true);
    check(cs("starts_with", json!("ACME")), &c, false);
    check(cs("ends_with", json!("ltd")), &c, false);
    check(cs("ends_with", json!("Ltd")), &c, true);
    check(cs("matches", json!("^acme")), &c, false);
    check(cs("matches", json!("^Acme")), &c, true);
    check(cs("in", json!(["acme test ltd"])), &c, false);
    check(cs("in", json!(["Acme Test Ltd"])), &c, true);
    check(cs("not_in", json!(["acme test ltd"])), &c, true);
}

#[test]
fn case_sensitive_default_comes_from_options_and_leaf_overrides_it() {
    let c = acme();
    let sensitive = ParseOptions {
        case_sensitive: true,
    };
    check_opts(
        sensitive,
        leaf("name", "contains", json!("test")),
        &c,
        false,
    );
    check_opts(sensitive, leaf("name", "contains", json!("Test")), &c, true);
    check_opts(
        sensitive,
        leaf("custom.tier", "is", json!("GOLD")),
        &c,
        false,
    );
    check_opts(sensitive, leaf("name", "matches", json!("ltd$")), &c, false);
    check_opts(
        sensitive,
        json!({"field": "name", "op": "contains", "value": "test", "case_sensitive": false}),
        &c,
        true,
    );
    check_opts(
        ParseOptions::default(),
        json!({"field": "name", "op": "contains", "value": "test", "case_sensitive": false}),
        &c,
        true,
    );
}

#[test]
fn case_folding_is_unicode_aware() {
    let c = with(|c| c.name = "Müller Ärzte GmbH".into());
    check(leaf("name", "contains", json!("ärzte")), &c, true);
    check(leaf("name", "starts_with", json!("MÜLLER")), &c, true);
    check(leaf("name", "matches", json!("^müller")), &c, true);
}

// ---- custom fields -----------------------------------------------------------

#[test]
fn custom_fields_support_text_operators() {
    let c = acme();
    check(leaf("custom.segment", "is", json!("enterprise")), &c, true);
    check(leaf("custom.segment", "contains", json!("PRISE")), &c, true);
    check(
        leaf("custom.segment", "in", json!(["smb", "enterprise"])),
        &c,
        true,
    );
    check(leaf("custom.segment", "matches", json!("^ent")), &c, true);
    check(json!({"field": "custom.blank", "op": "is_empty"}), &c, true);
    check(
        json!({"field": "custom.segment", "op": "is_not_empty"}),
        &c,
        true,
    );
}

#[test]
fn missing_custom_field_reads_as_empty() {
    let c = acme();
    check(json!({"field": "custom.nope", "op": "is_empty"}), &c, true);
    check(
        json!({"field": "custom.nope", "op": "is_not_empty"}),
        &c,
        false,
    );
    check(leaf("custom.nope", "contains", json!("x")), &c, false);
    check(leaf("custom.nope", "not_contains", json!("x")), &c, true);
    check(leaf("custom.nope", "is_not", json!("x")), &c, true);
    check(leaf("custom.nope", "gt", json!(0)), &c, false);
    check(leaf("custom.nope", "lte", json!(0)), &c, false);
}

#[test]
fn custom_field_names_may_contain_dots() {
    let c = with(|c| {
        c.custom.insert("a.b".into(), "yes".into());
    });
    check(leaf("custom.a.b", "is", json!("yes")), &c, true);
}

#[test]
fn custom_fields_order_numerically_when_both_sides_are_numbers() {
    let c = acme(); // score = "7.25"
    check(leaf("custom.score", "gt", json!(7)), &c, true);
    check(leaf("custom.score", "gt", json!("7.25")), &c, false);
    check(leaf("custom.score", "gte", json!("7.250")), &c, true);
    check(leaf("custom.score", "lt", json!(10)), &c, true);
    // Numeric, not lexicographic: "7.25" < "10" would be false as text.
    check(leaf("custom.score", "lt", json!("10")), &c, true);
    check(leaf("custom.score", "lte", json!(7.25)), &c, true);
    check(leaf("custom.score", "lte", json!(7.24)), &c, false);
    // Not a number on the customer's side: no ordering operator matches.
    for op in ["gt", "gte", "lt", "lte"] {
        check(leaf("custom.segment", op, json!(0)), &c, false);
        check(leaf("custom.blank", op, json!(0)), &c, false);
    }
    let padded = with(|c| {
        c.custom.insert("score".into(), " 12 ".into());
    });
    check(leaf("custom.score", "gt", json!(10)), &padded, true);
}

// ---- balance (decimal) -----------------------------------------------------------

#[test]
fn balance_compares_as_decimal() {
    let c = acme(); // balance = 10.50
    check(leaf("balance", "is", json!(10.5)), &c, true);
    check(leaf("balance", "is", json!("10.5")), &c, true);
    check(leaf("balance", "is", json!("10.500")), &c, true);
    check(leaf("balance", "is_not", json!("10.50")), &c, false);
    check(leaf("balance", "is", json!(10)), &c, false);
    check(leaf("balance", "gt", json!(10)), &c, true);
    check(leaf("balance", "gt", json!("10.50")), &c, false);
    check(leaf("balance", "gte", json!("10.50")), &c, true);
    check(leaf("balance", "lt", json!("10.51")), &c, true);
    check(leaf("balance", "lt", json!(10.5)), &c, false);
    check(leaf("balance", "lte", json!(10.5)), &c, true);
    check(leaf("balance", "in", json!([1, "10.5"])), &c, true);
    check(leaf("balance", "in", json!([1, 2])), &c, false);
    check(leaf("balance", "not_in", json!(["10.500"])), &c, false);
    check(leaf("balance", "gte", json!("1e1")), &c, true);
}

#[test]
fn balance_has_no_float_rounding() {
    // 0.1 + 0.2 is not 0.3 in binary floating point; in decimal it is.
    let c = with(|c| c.balance = dec("0.1") + dec("0.2"));
    check(leaf("balance", "is", json!(0.3)), &c, true);
    check(leaf("balance", "gt", json!(0.3)), &c, false);
    let big = with(|c| c.balance = dec("12345678901234567890.01"));
    check(
        leaf("balance", "gt", json!("12345678901234567890")),
        &big,
        true,
    );
    let negative = with(|c| c.balance = dec("-0.01"));
    check(leaf("balance", "lt", json!(0)), &negative, true);
    check(leaf("balance", "gte", json!("-0.01")), &negative, true);
}

// ---- last_modified (timestamp) ---------------------------------------------------

#[test]
fn last_modified_compares_instants() {
    let c = acme(); // 2024-03-01T12:00:00Z
    check(
        leaf("last_modified", "is", json!("2024-03-01T12:00:00Z")),
        &c,
        true,
    );
    // The same instant written with another offset.
    check(
        leaf("last_modified", "is", json!("2024-03-01T14:00:00+02:00")),
        &c,
        true,
    );
    check(
        leaf("last_modified", "is_not", json!("2024-03-01T12:00:00Z")),
        &c,
        false,
    );
    check(
        leaf("last_modified", "gt", json!("2024-03-01T11:59:59Z")),
        &c,
        true,
    );
    check(
        leaf("last_modified", "gt", json!("2024-03-01T13:00:00+02:00")),
        &c,
        true,
    );
    check(
        leaf("last_modified", "gt", json!("2024-03-01T13:00:00+01:00")),
        &c,
        false,
    );
    check(
        leaf("last_modified", "gte", json!("2024-03-01T12:00:00Z")),
        &c,
        true,
    );
    check(
        leaf("last_modified", "lt", json!("2024-03-01T12:00:00.001Z")),
        &c,
        true,
    );
    check(
        leaf("last_modified", "lt", json!("2024-03-01T12:00:00Z")),
        &c,
        false,
    );
    check(
        leaf("last_modified", "lte", json!("2024-03-01T12:00:00Z")),
        &c,
        true,
    );
    check(
        leaf("last_modified", "lte", json!("2023-12-31T23:59:59Z")),
        &c,
        false,
    );
}

// ---- booleans -------------------------------------------------------------------

#[test]
fn booleans_take_is_and_is_not() {
    let c = acme();
    let flagged = with(|c| {
        c.inactive = true;
        c.intercompany = true;
    });
    check(leaf("inactive", "is", json!(false)), &c, true);
    check(leaf("inactive", "is", json!(true)), &c, false);
    check(leaf("inactive", "is", json!(true)), &flagged, true);
    check(leaf("inactive", "is_not", json!(true)), &flagged, false);
    check(leaf("intercompany", "is", json!(true)), &flagged, true);
    check(leaf("intercompany", "is_not", json!(true)), &c, true);
}

// ---- combinators ----------------------------------------------------------------

#[test]
fn empty_all_is_true_and_empty_any_is_false() {
    let c = acme();
    check(json!({"all": []}), &c, true);
    check(json!({"any": []}), &c, false);
    check(json!({"not": {"all": []}}), &c, false);
    check(json!({"not": {"any": []}}), &c, true);
}

#[test]
fn all_any_not_nest() {
    let c = acme();
    let yes = leaf("name", "contains", json!("test"));
    let no = leaf("name", "contains", json!("demo"));
    check(json!({"all": [yes, yes]}), &c, true);
    check(json!({"all": [yes, no]}), &c, false);
    check(json!({"any": [no, yes]}), &c, true);
    check(json!({"any": [no, no]}), &c, false);
    check(json!({"not": yes}), &c, false);
    check(json!({"not": {"not": yes}}), &c, true);
    // Typical exclusion rule: test accounts that are not in the EU subsidiary,
    // or anything intercompany.
    let rule = json!({"any": [
        {"all": [
            {"any": [
                leaf("name", "contains", json!("test")),
                leaf("email", "ends_with", json!("@example.com")),
            ]},
            {"not": leaf("subsidiary", "is", json!("Acme US"))},
        ]},
        leaf("intercompany", "is", json!(true)),
    ]});
    check(rule.clone(), &c, true);
    check(
        rule.clone(),
        &with(|c| c.subsidiary = Some("acme us".into())),
        false,
    );
    check(
        rule,
        &with(|c| {
            c.subsidiary = Some("Acme US".into());
            c.intercompany = true;
        }),
        true,
    );
}

// ---- canonical JSON ---------------------------------------------------------------

#[test]
fn to_json_is_canonical() {
    let parse = |v: Value, cs: bool| {
        Condition::parse(&v, ParseOptions { case_sensitive: cs })
            .unwrap()
            .to_json()
    };
    // Decimals become strings that keep their scale.
    assert_eq!(
        parse(leaf("balance", "gt", json!(10.5)), false),
        leaf("balance", "gt", json!("10.5"))
    );
    assert_eq!(
        parse(leaf("balance", "in", json!([1, "2.50"])), false),
        leaf("balance", "in", json!(["1", "2.50"]))
    );
    // Timestamps are written in UTC.
    assert_eq!(
        parse(
            leaf("last_modified", "lt", json!("2024-03-01T14:00:00+02:00")),
            false
        ),
        leaf("last_modified", "lt", json!("2024-03-01T12:00:00Z"))
    );
    // case_sensitive appears only where it is true and changes the match.
    assert_eq!(
        parse(leaf("name", "contains", json!("Test")), true),
        json!({"field": "name", "op": "contains", "value": "Test", "case_sensitive": true})
    );
    assert_eq!(
        parse(leaf("name", "contains", json!("Test")), false),
        leaf("name", "contains", json!("Test"))
    );
    assert_eq!(
        parse(leaf("balance", "gt", json!(1)), true),
        leaf("balance", "gt", json!("1"))
    );
    assert_eq!(
        parse(json!({"field": "email", "op": "is_empty"}), true),
        json!({"field": "email", "op": "is_empty"})
    );
    let tree = json!({"all": [{"not": {"any": []}}, leaf("inactive", "is", json!(true))]});
    assert_eq!(parse(tree.clone(), false), tree);
}

// ---- errors -----------------------------------------------------------------------

#[test]
fn structural_errors() {
    check_err(
        json!({}),
        "",
        "a condition needs exactly one of `all`, `any`, `not` or `field`",
    );
    check_err(
        json!({"all": [], "any": []}),
        "",
        "a condition needs exactly one of `all`, `any`, `not` or `field`",
    );
    check_err(
        json!({"not": {"all": []}, "field": "name", "op": "is_empty"}),
        "",
        "a condition needs exactly one of `all`, `any`, `not` or `field`",
    );
    check_err(
        json!({"op": "is", "value": "x"}),
        "",
        "a condition needs exactly one of `all`, `any`, `not` or `field`",
    );
    check_err(
        json!("name"),
        "",
        "a condition must be an object, got \"name\"",
    );
    check_err(
        json!({"all": [1]}),
        "all[0]",
        "a condition must be an object, got 1",
    );
    check_err(
        json!({"all": {"field": "name"}}),
        "all",
        "`all` needs an array of conditions, got {\"field\":\"name\"}",
    );
    check_err(
        json!({"any": "x"}),
        "any",
        "`any` needs an array of conditions, got \"x\"",
    );
    check_err(
        json!({"not": []}),
        "not",
        "a condition must be an object, got []",
    );
    check_err(
        json!({"all": [], "op": "is"}),
        "op",
        "`op` belongs next to `field`, not beside `all`",
    );
    check_err(
        json!({"not": {"all": []}, "case_sensitive": true}),
        "case_sensitive",
        "`case_sensitive` belongs next to `field`, not beside `not`",
    );
}

#[test]
fn unknown_keys_are_named_with_their_path() {
    check_err(
        json!({"field": "name", "op": "is", "valu": "x"}),
        "valu",
        "unknown key `valu` in condition",
    );
    check_err(
        json!({"any": [{"all": []}, {"field": "name", "op": "is", "value": "x", "cases": true}]}),
        "any[1].cases",
        "unknown key `cases` in condition",
    );
    check_err(
        json!({"feild": "name", "op": "is", "value": "x"}),
        "feild",
        "unknown key `feild` in condition",
    );
}

#[test]
fn field_errors() {
    check_err(
        leaf("nme", "is", json!("x")),
        "field",
        "unknown field `nme`; expected one of external_id, name, email, subsidiary, currency, \
         balance, inactive, intercompany, last_modified or custom.<name>",
    );
    check_err(
        leaf("custom.", "is", json!("x")),
        "field",
        "unknown field `custom.`; expected one of external_id, name, email, subsidiary, \
         currency, balance, inactive, intercompany, last_modified or custom.<name>",
    );
    check_err(
        json!({"not": {"field": 3, "op": "is", "value": "x"}}),
        "not.field",
        "`field` must be a string, got 3",
    );
}

#[test]
fn operator_errors() {
    check_err(
        leaf("name", "foo", json!("x")),
        "op",
        &format!("unknown operator `foo`; expected one of {ALL_OPS}"),
    );
    check_err(
        json!({"all": [{"any": [{"field": "name", "value": "x"}]}]}),
        "all[0].any[0].op",
        &format!("missing `op`; expected one of {ALL_OPS}"),
    );
    check_err(
        json!({"field": "name", "op": ["is"], "value": "x"}),
        "op",
        "`op` must be a string, got [\"is\"]",
    );
}

#[test]
fn operators_are_checked_against_the_field_type() {
    for op in ["gt", "gte", "lt", "lte"] {
        for field in ["external_id", "name", "email", "subsidiary", "currency"] {
            check_err(
                leaf(field, op, json!(1)),
                "op",
                &format!(
                    "operator `{op}` does not apply to field `{field}`; expected one of \
                     {TEXT_OPS} (gt, gte, lt and lte work on balance, last_modified and \
                     custom.<name>)"
                ),
            );
        }
    }
    for op in [
        "contains",
        "not_contains",
        "starts_with",
        "ends_with",
        "matches",
    ] {
        check_err(
            leaf("balance", op, json!("1")),
            "op",
            &format!(
                "operator `{op}` does not apply to field `balance`; expected one of \
                 is, is_not, in, not_in, gt, gte, lt, lte"
            ),
        );
    }
    check_err(
        json!({"field": "balance", "op": "is_empty"}),
        "op",
        "operator `is_empty` does not apply to field `balance`; expected one of \
         is, is_not, in, not_in, gt, gte, lt, lte",
    );
    check_err(
        leaf("last_modified", "in", json!([])),
        "op",
        "operator `in` does not apply to field `last_modified`; expected one of \
         is, is_not, gt, gte, lt, lte",
    );
    check_err(
        leaf("last_modified", "contains", json!("2024")),
        "op",
        "operator `contains` does not apply to field `last_modified`; expected one of \
         is, is_not, gt, gte, lt, lte",
    );
    for field in ["inactive", "intercompany"] {
        for op in ["contains", "in", "gt", "is_empty", "matches"] {
            check_err(
                leaf(field, op, json!(true)),
                "op",
                &format!(
                    "operator `{op}` does not apply to field `{field}`; expected one of is, is_not"
                ),
            );
        }
    }
}

#[test]
fn value_errors() {
    check_err(
        leaf("balance", "gt", json!("abc")),
        "value",
        "`gt` needs a number or decimal string for field `balance`, got \"abc\"",
    );
    check_err(
        leaf("balance", "is", json!(true)),
        "value",
        "`is` needs a number or decimal string for field `balance`, got true",
    );
    check_err(
        leaf("balance", "in", json!("1")),
        "value",
        "`in` needs an array of numbers or decimal strings for field `balance`, got \"1\"",
    );
    check_err(
        leaf("balance", "not_in", json!([1, "x"])),
        "value[1]",
        "`not_in` needs a number or decimal string for field `balance`, got \"x\"",
    );
    check_err(
        leaf("custom.score", "lte", json!("high")),
        "value",
        "`lte` needs a number or decimal string for field `custom.score`, got \"high\"",
    );
    check_err(
        leaf("last_modified", "gt", json!("yesterday")),
        "value",
        "`gt` needs an RFC 3339 timestamp such as \"2024-01-31T00:00:00Z\" for field \
         `last_modified`, got \"yesterday\"",
    );
    check_err(
        leaf("last_modified", "lt", json!("2024-01-31T00:00:00")),
        "value",
        "`lt` needs an RFC 3339 timestamp such as \"2024-01-31T00:00:00Z\" for field \
         `last_modified`, got \"2024-01-31T00:00:00\"",
    );
    check_err(
        leaf("inactive", "is", json!("yes")),
        "value",
        "`is` needs true or false for field `inactive`, got \"yes\"",
    );
    check_err(
        leaf("name", "contains", json!(3)),
        "value",
        "`contains` needs a string for field `name`, got 3",
    );
    check_err(
        leaf("custom.tier", "is", json!(null)),
        "value",
        "`is` needs a string for field `custom.tier`, got null",
    );
    check_err(
        leaf("currency", "in", json!("EUR")),
        "value",
        "`in` needs an array of strings for field `currency`, got \"EUR\"",
    );
    check_err(
        json!({"any": [leaf("currency", "in", json!(["EUR", 1]))]}),
        "any[0].value[1]",
        "`in` needs a string for field `currency`, got 1",
    );
    check_err(
        json!({"field": "name", "op": "contains"}),
        "value",
        "`contains` needs a `value`",
    );
    check_err(
        json!({"field": "email", "op": "is_empty", "value": ""}),
        "value",
        "`is_empty` takes no `value`",
    );
    check_err(
        json!({"field": "email", "op": "is_not_empty", "value": null}),
        "value",
        "`is_not_empty` takes no `value`",
    );
    check_err(
        json!({"field": "name", "op": "is", "value": "x", "case_sensitive": "yes"}),
        "case_sensitive",
        "`case_sensitive` must be true or false, got \"yes\"",
    );
    let long = "x".repeat(200);
    check_err(
        leaf("balance", "gt", json!(long)),
        "value",
        &format!(
            "`gt` needs a number or decimal string for field `balance`, got \"{}…",
            "x".repeat(79)
        ),
    );
}

#[test]
fn regex_errors() {
    check_err(
        leaf("name", "matches", json!("[")),
        "value",
        "invalid regex `[`: unclosed character class",
    );
    check_err(
        json!({"not": leaf("custom.segment", "matches", json!("(a"))}),
        "not.value",
        "invalid regex `(a`: unclosed group",
    );
    check_err(
        leaf("name", "matches", json!(1)),
        "value",
        "`matches` needs a string for field `name`, got 1",
    );
}

#[test]
fn error_display_names_the_path() {
    let err =
        Condition::parse(&leaf("name", "foo", json!("x")), ParseOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("at `op`: unknown operator `foo`; expected one of {ALL_OPS}")
    );
}

// ---- rules ------------------------------------------------------------------------

fn rule_json(id: &str, when: Value) -> Value {
    json!({"id": id, "description": format!("rule {id}"), "when": when})
}

fn rule(id: &str, when: Value) -> Rule {
    parse_rule(&rule_json(id, when)).unwrap()
}

#[test]
fn parse_rule_reads_every_key_and_serialises_back() {
    let r = parse_rule(&json!({
        "id": "test-accounts",
        "description": "Test accounts",
        "case_sensitive": true,
        "when": leaf("name", "contains", json!("Test")),
    }))
    .unwrap();
    assert_eq!(r.id, "test-accounts");
    assert_eq!(r.description, "Test accounts");
    assert!(r.condition.matches(&acme()));
    assert!(!r
        .condition
        .matches(&with(|c| c.name = "acme test ltd".into())));
    let serialised = serde_json::to_value(&r).unwrap();
    assert_eq!(
        serialised,
        json!({
            "id": "test-accounts",
            "description": "Test accounts",
            "when": {"field": "name", "op": "contains", "value": "Test", "case_sensitive": true},
        })
    );
    // What a rule serialises to parses back to the same rule.
    let again = parse_rule(&serialised).unwrap();
    assert_eq!(serde_json::to_value(&again).unwrap(), serialised);
}

#[test]
fn parse_rule_is_case_insensitive_by_default() {
    let r = rule("t", leaf("name", "contains", json!("TEST")));
    assert!(r.condition.matches(&acme()));
}

#[test]
fn rule_errors() {
    let when = leaf("name", "contains", json!("test"));
    check_rule_err(json!([]), "", "a rule must be an object, got []");
    check_rule_err(
        json!({"id": "a", "description": "", "when": when, "whn": 1}),
        "whn",
        "unknown key `whn` in rule; expected id, description, case_sensitive, when",
    );
    check_rule_err(
        json!({"description": "", "when": when}),
        "id",
        "missing `id`",
    );
    check_rule_err(
        json!({"id": 7, "description": "", "when": when}),
        "id",
        "`id` must be a string, got 7",
    );
    check_rule_err(
        json!({"id": " ", "description": "", "when": when}),
        "id",
        "`id` must not be empty",
    );
    check_rule_err(
        json!({"id": "a", "when": when}),
        "description",
        "missing `description`",
    );
    check_rule_err(
        json!({"id": "a", "description": "", "case_sensitive": 1, "when": when}),
        "case_sensitive",
        "`case_sensitive` must be true or false, got 1",
    );
    check_rule_err(
        json!({"id": "a", "description": ""}),
        "when",
        "missing `when`, the rule's condition",
    );
    check_rule_err(
        rule_json("a", json!({"any": [when, leaf("nme", "is", json!("x"))]})),
        "when.any[1].field",
        "unknown field `nme`; expected one of external_id, name, email, subsidiary, currency, \
         balance, inactive, intercompany, last_modified or custom.<name>",
    );
    check_rule_err(
        rule_json("a", json!({})),
        "when",
        "a condition needs exactly one of `all`, `any`, `not` or `field`",
    );
}

#[test]
fn rule_set_keeps_declaration_order() {
    let set = RuleSet::new(vec![
        rule("inactive", leaf("inactive", "is", json!(true))),
        rule("tests", leaf("name", "contains", json!("test"))),
        rule("eur", leaf("currency", "is", json!("EUR"))),
        rule("usd", leaf("currency", "is", json!("USD"))),
    ])
    .unwrap();
    let c = acme();
    let ids: Vec<&str> = set.matching(&c).map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["tests", "eur"]);
    assert_eq!(set.first_match(&c).map(|r| r.id.as_str()), Some("tests"));
    let inactive = with(|c| c.inactive = true);
    assert_eq!(
        set.first_match(&inactive).map(|r| r.id.as_str()),
        Some("inactive")
    );
    let other = with(|c| {
        c.name = "Globex".into();
        c.currency = None;
    });
    assert!(set.first_match(&other).is_none());
    assert_eq!(set.rules().len(), 4);
    assert_eq!(
        set.get("eur").map(|r| r.description.as_str()),
        Some("rule eur")
    );
    assert!(set.get("nope").is_none());
}

#[test]
fn rule_set_rejects_duplicate_and_empty_ids() {
    let when = json!({"all": []});
    let err = RuleSet::new(vec![
        rule("a", when.clone()),
        rule("b", when.clone()),
        rule("a", when.clone()),
    ])
    .unwrap_err();
    assert_eq!(err, "duplicate rule id `a`");
    let mut empty = rule("x", when.clone());
    empty.id = String::new();
    let err = RuleSet::new(vec![rule("a", when), empty]).unwrap_err();
    assert_eq!(err, "rule #2 has an empty id");
}

#[test]
fn empty_rule_set_matches_nothing() {
    let set = RuleSet::default();
    assert!(set.first_match(&acme()).is_none());
    assert!(set.rules().is_empty());
    assert!(RuleSet::new(Vec::new()).unwrap().get("a").is_none());
}
