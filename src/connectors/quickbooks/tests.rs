use std::path::Path;
use std::str::FromStr;

use chrono::{FixedOffset, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::value::RawValue;

use super::map::{self, MapSettings};
use super::options::QuickbooksOptions;
use super::wire::{self, quote};
use super::*;
use crate::model::{InvoiceStatus, TransactionKind};

fn pacific() -> FixedOffset {
    FixedOffset::west_opt(8 * 3600).unwrap()
}

fn settings() -> MapSettings {
    MapSettings {
        offset: pacific(),
        home_currency: "USD".into(),
    }
}

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_string()).unwrap()
}

#[test]
fn literals_are_quoted_and_escaped() {
    assert_eq!(quote("Adam's Candy Shop"), r"'Adam\'s Candy Shop'");
    assert_eq!(quote(r"back\slash"), r"'back\\slash'");
    assert_eq!(quote("x' OR Id = '1"), r"'x\' OR Id = \'1'");
    assert_eq!(quote(""), "''");
}

#[test]
fn times_carry_the_company_offset_and_parse_back() {
    let t = Utc.with_ymd_and_hms(2015, 12, 23, 20, 55, 50).unwrap();
    assert_eq!(wire::datetime(t, pacific()), "2015-12-23T12:55:50-08:00");
    assert_eq!(
        wire::parse_time("2015-12-23T12:55:50-08:00", pacific()),
        Some(t)
    );
    // Without an offset: the company's.
    assert_eq!(wire::parse_time("2015-12-23T12:55:50", pacific()), Some(t));
    let with_ms = wire::parse_time("2015-12-23T12:56:06.196-08:00", pacific()).unwrap();
    assert_eq!(wire::floor_second(with_ms), t + TimeDelta::seconds(16));
    assert_eq!(wire::parse_time("yesterday", pacific()), None);
}

#[test]
fn query_envelopes_parse_including_empty_and_count() {
    let body = br#"{"QueryResponse":{"Invoice":[{"Id":"1"},{"Id":"2"}],"startPosition":1,"maxResults":2},"time":"2024-05-01T10:00:00.123-07:00"}"#;
    let p = wire::parse_query(body, "Invoice", pacific()).unwrap();
    assert_eq!(p.objects.len(), 2);
    assert_eq!(p.start_position, Some(1));
    assert_eq!(p.max_results, Some(2));
    assert_eq!(
        p.time,
        Some(Utc.with_ymd_and_hms(2024, 5, 1, 17, 0, 0).unwrap() + TimeDelta::milliseconds(123))
    );
    let empty = wire::parse_query(
        br#"{"QueryResponse":{},"time":"2024-05-01T10:00:00-07:00"}"#,
        "Invoice",
        pacific(),
    )
    .unwrap();
    assert!(empty.objects.is_empty());
    let count = wire::parse_query(
        br#"{"QueryResponse":{"totalCount":42},"time":"x"}"#,
        "Invoice",
        pacific(),
    )
    .unwrap();
    assert_eq!(count.total_count, Some(42));
    assert!(matches!(
        wire::parse_query(
            br#"{"QueryResponse":{"Invoice":[{"Id":"1"}"#,
            "Invoice",
            pacific()
        ),
        Err(ConnectorError::Protocol(_))
    ));
}

#[test]
fn faults_are_errors_even_in_200() {
    let system = br#"{"Fault":{"Error":[{"Message":"An application error has occurred while processing your request","Detail":"System Failure Error: boom","code":"10000"}],"type":"SystemFault"},"time":"2017-09-29T09:17:31.892-07:00"}"#;
    match wire::parse_query(system, "Invoice", pacific()) {
        Err(ConnectorError::Server {
            status: 200,
            message,
        }) => {
            assert!(message.contains("10000"), "{message}");
            assert!(message.contains("System Failure Error: boom"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let validation = br#"{"Fault":{"Error":[{"Message":"Invalid query","Detail":"QueryValidationError: value 1500 is too large. Max allowed value is 1000","code":"4001"}],"type":"ValidationFault"},"time":"x"}"#;
    match wire::classify_failure(400, None, validation) {
        ConnectorError::Rejected {
            status: 400,
            message,
        } => {
            assert_eq!(
                message,
                "4001: Invalid query: QueryValidationError: value 1500 is too large. Max allowed value is 1000 (ValidationFault)"
            )
        }
        other => panic!("{other:?}"),
    }
    // The gateway's lower-case envelope; the token in the detail is cut.
    let gateway = br#"{"fault":{"error":[{"message":"message=AuthenticationFailed; errorCode=003200; statusCode=401","detail":"Token expired: eyJsecretpart","code":"3200"}],"type":"AUTHENTICATION"},"time":"x"}"#;
    match wire::classify_failure(401, None, gateway) {
        ConnectorError::Auth(m) => {
            assert!(m.contains("003200"), "{m}");
            assert!(!m.contains("eyJsecretpart"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    let throttle = br#"{"Fault":{"Error":[{"Message":"message=ThrottleExceeded; errorCode=003001; statusCode=429","Detail":"The request limit was reached.","code":"3001"}],"type":"SERVICE"},"time":"x"}"#;
    assert!(matches!(
        wire::classify_failure(429, None, throttle),
        ConnectorError::RateLimited { retry_after: None }
    ));
    assert!(matches!(
        wire::classify_failure(503, None, b"<html>down</html>"),
        ConnectorError::Server { status: 503, .. }
    ));
}

#[test]
fn cdc_answers_parse_with_deleted_objects() {
    let body = br#"{"CDCResponse":[{"QueryResponse":[{"Invoice":[{"Id":"34","MetaData":{"LastUpdatedTime":"2015-12-23T12:50:00-08:00"}},{"status":"Deleted","domain":"QBO","Id":"979","MetaData":{"LastUpdatedTime":"2015-12-23T12:55:50-08:00"}}],"startPosition":1,"maxResults":2}]}],"time":"2015-12-23T12:56:06.196-08:00"}"#;
    let a = wire::parse_cdc(body, &["Invoice"], pacific()).unwrap();
    assert_eq!(a.total(), 2);
    let heads: Vec<_> = a.groups[0]
        .objects
        .iter()
        .map(|o| map::head(o, pacific()).unwrap())
        .collect();
    assert!(!heads[0].deleted);
    assert!(heads[1].deleted);
    assert_eq!(heads[1].id, "979");
    let none = wire::parse_cdc(
        br#"{"CDCResponse":[{"QueryResponse":[{}]}],"time":"x"}"#,
        &["Invoice"],
        pacific(),
    )
    .unwrap();
    assert_eq!(none.total(), 0);
}

#[test]
fn customers_map_with_inactive_and_jobs() {
    let c = map::customer(
        &raw(r#"{"Job":true,"Balance":1250.5,"BalanceWithJobs":1250.5,"CurrencyRef":{"value":"EUR","name":"Euro"},"domain":"QBO","Id":"58","SyncToken":"0","MetaData":{"CreateTime":"2024-01-02T03:04:05-08:00","LastUpdatedTime":"2024-01-02T03:04:05-08:00"},"FullyQualifiedName":"Acme:Roof job","DisplayName":"Roof job","Active":false,"ParentRef":{"value":"7"},"Level":1,"PrimaryEmailAddr":{"Address":"ap@acme.example"}}"#),
        &settings(),
    )
    .unwrap();
    assert_eq!(c.external_id, "58");
    assert_eq!(c.name, "Roof job");
    assert!(c.inactive);
    assert_eq!(c.balance, Decimal::from_str("1250.50").unwrap());
    assert_eq!(c.currency.as_deref(), Some("EUR"));
    assert_eq!(c.email.as_deref(), Some("ap@acme.example"));
    assert_eq!(c.custom["parent_id"], "7");
    assert_eq!(c.custom["job"], "true");
    assert_eq!(c.custom["fully_qualified_name"], "Acme:Roof job");
    assert_eq!(
        c.last_modified,
        Utc.with_ymd_and_hms(2024, 1, 2, 11, 4, 5).unwrap()
    );
    // No CurrencyRef: the home currency. No Active: active.
    let d = map::customer(
        &raw(r#"{"Id":"9","DisplayName":"Plain","MetaData":{"LastUpdatedTime":"2024-01-02T03:04:05-08:00"}}"#),
        &settings(),
    )
    .unwrap();
    assert_eq!(d.currency.as_deref(), Some("USD"));
    assert!(!d.inactive);
    assert!(!d.custom.contains_key("parent_id"));
}

#[test]
fn money_is_read_from_its_digits() {
    // 0.1 + 0.2 style values and large amounts survive exactly.
    let i = map::record(
        &raw(r#"{"Id":"130","DocNumber":"1037","TxnDate":"2014-11-06","DueDate":"2014-12-06","CustomerRef":{"value":"24"},"TotalAmt":12345678901234.07,"Balance":0.30000000000000004,"MetaData":{"LastUpdatedTime":"2014-11-06T10:00:00-08:00"}}"#),
        "Invoice",
        &settings(),
    )
    .unwrap();
    let Record::Invoice(i) = i else { panic!() };
    assert_eq!(i.total, Decimal::from_str("12345678901234.07").unwrap());
    assert_eq!(
        i.amount_due,
        Decimal::from_str("0.30000000000000004").unwrap()
    );
    assert_eq!(i.status, InvoiceStatus::Open);
    assert_eq!(i.number, "1037");
    assert_eq!(i.customer_id, "24");
}

#[test]
fn invoices_paid_voided_and_transactions_map() {
    let inv = |total: &str, bal: &str, note: &str| {
        let Record::Invoice(i) = map::record(
            &raw(&format!(r#"{{"Id":"1","TxnDate":"2024-03-01","CustomerRef":{{"value":"2"}},"TotalAmt":{total},"Balance":{bal},"PrivateNote":"{note}","MetaData":{{"LastUpdatedTime":"2024-03-01T00:00:00Z"}}}}"#)),
            "Invoice",
            &settings(),
        )
        .unwrap() else { panic!() };
        i
    };
    assert_eq!(inv("100", "0", "").status, InvoiceStatus::Paid);
    assert_eq!(inv("0", "0", "Voided").status, InvoiceStatus::Voided);
    assert_eq!(inv("0", "0", "").status, InvoiceStatus::Paid);
    // No DueDate: due on the transaction date; no DocNumber: the id.
    let i = inv("5", "5", "");
    assert_eq!(i.due_date, i.issue_date);
    assert_eq!(i.number, "1");
    for (entity, kind) in [
        ("Payment", TransactionKind::Payment),
        ("CreditMemo", TransactionKind::CreditNote),
    ] {
        let Record::Transaction(t) = map::record(
            &raw(r#"{"Id":"163","TxnDate":"2014-12-30","CustomerRef":{"value":"3"},"CurrencyRef":{"value":"GBP"},"TotalAmt":55.0,"MetaData":{"LastUpdatedTime":"2014-12-30T00:00:00Z"}}"#),
            entity,
            &settings(),
        )
        .unwrap() else { panic!() };
        assert_eq!(t.kind, kind);
        assert_eq!(t.amount, Decimal::new(55, 0));
        assert_eq!(t.currency, "GBP");
        assert_eq!(t.customer_id, "3");
    }
}

#[test]
fn malformed_records_are_quarantined_with_reason() {
    let cases = [
        (
            r#"{"Id":"1","TxnDate":"2024-03-01","CustomerRef":{"value":"2"},"TotalAmt":"12,5O","Balance":1,"MetaData":{"LastUpdatedTime":"2024-03-01T00:00:00Z"}}"#,
            "TotalAmt: `12,5O` is not an amount",
        ),
        (
            r#"{"Id":"1","TxnDate":"31/02/2024","CustomerRef":{"value":"2"},"TotalAmt":1,"Balance":1,"MetaData":{"LastUpdatedTime":"2024-03-01T00:00:00Z"}}"#,
            "TxnDate `31/02/2024` is not a date",
        ),
        (
            r#"{"Id":"1","TxnDate":"2024-03-01","TotalAmt":1,"Balance":1,"MetaData":{"LastUpdatedTime":"2024-03-01T00:00:00Z"}}"#,
            "Invoice has no CustomerRef",
        ),
        (
            r#"{"Id":"1","TxnDate":"2024-03-01","CustomerRef":{"value":"2"},"TotalAmt":1,"Balance":1,"MetaData":{"LastUpdatedTime":"2024-02-31T25:61:00"}}"#,
            "MetaData.LastUpdatedTime `2024-02-31T25:61:00` is not a time",
        ),
    ];
    for (text, reason) in cases {
        let q = map::record(&raw(text), "Invoice", &settings()).unwrap_err();
        assert_eq!(q.reason, reason);
        assert_eq!(q.external_id.as_deref(), Some("1"));
        assert_eq!(q.raw, text);
        assert_eq!(q.entity, Entity::Invoices);
    }
}

#[test]
fn cursors_round_trip_and_refuse_garbage() {
    let t = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let c = StreamCursor {
        since: Some(t),
        cdc_since: Some(t),
        pass: Some(Pass {
            until: Some(t + TimeDelta::hours(1)),
            step: 1,
            pos: Keyset {
                at: Some(t),
                strict: false,
                seen: vec!["5".into()],
                tie: None,
            },
            verify: true,
        }),
        verify: false,
    };
    let enc = encode(&c);
    assert_eq!(decode::<StreamCursor>(&enc).unwrap(), c);
    assert_eq!(
        decode::<StreamCursor>(&Cursor::start()).unwrap(),
        StreamCursor::default()
    );
    assert!(matches!(
        decode::<StreamCursor>(&Cursor("{nope".into())),
        Err(ConnectorError::Config(_))
    ));
}

fn options(dir: &Path, extra: &str) -> QuickbooksOptions {
    std::fs::write(dir.join("id"), "client\n").unwrap();
    std::fs::write(dir.join("secret"), "secret\n").unwrap();
    toml::from_str(&format!(
        "realm_id = \"9130347596312345\"\n{extra}\n[oauth]\nclient_id_file = \"id\"\nclient_secret_file = \"secret\"\n"
    ))
    .unwrap()
}

fn problems(o: &QuickbooksOptions, dir: &Path) -> Vec<String> {
    let mut c = crate::config::OptionsCheck::detached(dir);
    o.check(&mut c);
    c.messages()
}

#[test]
fn options_default_and_derive_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let o = options(dir.path(), "");
    assert_eq!(problems(&o, dir.path()), Vec::<String>::new());
    assert_eq!(o.page_size, 1000);
    assert_eq!(o.minor_version, 75);
    assert_eq!(o.api_base().unwrap(), "https://quickbooks.api.intuit.com");
    assert_eq!(
        options::TOKEN_URL,
        "https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer"
    );
    let s = options(dir.path(), "environment = \"sandbox\"");
    assert_eq!(
        s.api_base().unwrap(),
        "https://sandbox-quickbooks.api.intuit.com"
    );
    let p = options(dir.path(), "api_base_url = \"http://127.0.0.1:9/\"");
    assert_eq!(p.api_base().unwrap(), "http://127.0.0.1:9");
}

#[test]
fn options_check_reports_every_problem_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), "");
    o.realm_id = "12ab".into();
    o.page_size = 1500;
    o.minor_version = 65;
    o.timezone = "Pacific".into();
    o.home_currency = "usd".into();
    o.resync_batch_size = 0;
    o.api_base_url = Some("ftp://x".into());
    o.oauth.client_secret_file = Some("missing".into());
    o.oauth.token_url = Some("not a url".into());
    o.request_timeout = "0s".into();
    let all = problems(&o, dir.path()).join("\n");
    for needle in [
        "realm_id: `12ab` is not a QuickBooks company id",
        "page_size: 1500 is out of range",
        "minor_version: 65 is ignored",
        "timezone: `Pacific`",
        "home_currency: `usd`",
        "resync_batch_size: 0",
        "api_base_url: `ftp://x` must be an http:// or https:// URL",
        "oauth.client_secret_file:",
        "oauth.token_url:",
        "request_timeout:",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    let unknown: Result<QuickbooksOptions, _> =
        toml::from_str("realm_id = \"1\"\npage_sise = 5\n[oauth]\n");
    assert!(unknown.unwrap_err().to_string().contains("page_sise"));
}
