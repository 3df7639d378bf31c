//! Unit tests of the Xero connector's pure parts: options, MS-JSON dates,
//! money, mapping, queries, cursors and the mapping of Xero's answers to
//! errors.

use std::time::Duration;

use chrono::{NaiveDate, TimeZone, Utc};
use reqwest::header::{HeaderMap, HeaderValue};
use rust_decimal::Decimal;
use serde_json::value::RawValue;

use super::options::{is_guid, XeroOptions};
use super::query::{self, advance, Endpoint, Position, ResyncCursor, TransactionsCursor};
use super::wire::{self, Mapped};
use super::*;
use crate::model::{InvoiceStatus, TransactionKind};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

// ---------------------------------------------------------------------------
// Options

fn options(dir: &std::path::Path, extra: &str) -> XeroOptions {
    std::fs::write(dir.join("id"), "client\n").unwrap();
    std::fs::write(dir.join("secret"), "secret\n").unwrap();
    toml::from_str(&format!(
        "{extra}\n[oauth]\nclient_id_file = \"id\"\nclient_secret_file = \"secret\"\n"
    ))
    .unwrap()
}

fn problems(o: &XeroOptions, dir: &std::path::Path) -> Vec<String> {
    let mut c = OptionsCheck::detached(dir);
    o.check(&mut c);
    c.messages()
}

#[test]
fn options_default_and_check_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let o = options(
        dir.path(),
        "tenant_id = \"fe79f7dd-b6d4-4a92-ba7b-538af6289c58\"",
    );
    assert!(problems(&o, dir.path()).is_empty());
    assert_eq!(o.page_size, 1000);
    assert_eq!(o.resync_batch_size, 40);
    assert_eq!(o.request_timeout, "60s");
    assert_eq!(
        o.effective_base_url().unwrap().as_str(),
        "https://api.xero.com/"
    );

    let o = options(
        dir.path(),
        "tenant_id = \"Demo Company\"\nbase_url = \"http://xero.example.com\"\npage_size = 1001\nresync_batch_size = 0\nrequest_timeout = \"60\"",
    );
    let all = problems(&o, dir.path()).join("\n");
    assert!(
        all.contains("tenant_id: `Demo Company` is not a Xero tenant id"),
        "{all}"
    );
    assert!(
        all.contains("leave tenant_id out and the connector lists"),
        "{all}"
    );
    assert!(
        all.contains("base_url: `http://xero.example.com` must use https"),
        "{all}"
    );
    assert!(
        all.contains("page_size: 1001 is out of range; use 1..=1000"),
        "{all}"
    );
    assert!(
        all.contains("resync_batch_size: 0 is out of range; use 1..=40"),
        "{all}"
    );
    assert!(all.contains("request_timeout: `60` has no unit"), "{all}");

    let o = options(
        dir.path(),
        "base_url = \"https://api.xero.com/api.xro/2.0\"",
    );
    let all = problems(&o, dir.path()).join("\n");
    assert!(all.contains("must be the host only"), "{all}");
    // No tenant: accepted (the connector lists the organisations).
    let o = options(dir.path(), "");
    assert!(problems(&o, dir.path()).is_empty());
    // Unknown keys are refused by serde, naming the key.
    let e = toml::from_str::<XeroOptions>("tenant = \"x\"\n[oauth]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("tenant"), "{e}");
    // The oauth table's problems are reported under `oauth.`.
    let o: XeroOptions = toml::from_str("[oauth]\nclient_id_file = \"nope\"\n").unwrap();
    let all = problems(&o, dir.path()).join("\n");
    assert!(all.contains("oauth.client_id_file:"), "{all}");
    assert!(all.contains("oauth.client_secret_file: missing"), "{all}");
}

#[test]
fn guids_are_recognised() {
    assert!(is_guid("fe79f7dd-b6d4-4a92-ba7b-538af6289c58"));
    assert!(is_guid("FE79F7DD-B6D4-4A92-BA7B-538AF6289C58"));
    assert!(!is_guid("fe79f7dd-b6d4-4a92-ba7b-538af6289c5"));
    assert!(!is_guid("fe79f7dd-b6d4-4a92-ba7b-538af6289c5g"));
    assert!(!is_guid("fe79f7ddxb6d4-4a92-ba7b-538af6289c58"));
    assert!(!is_guid("\") OR (Name==\"x"));
}

#[test]
fn default_limits_are_xeros() {
    let l = Xero::default_limits();
    assert_eq!(l.requests_per_second, 1.0);
    assert_eq!(l.burst, 1);
    assert_eq!(l.max_concurrency, 5);
    assert_eq!(l.requests_per_day, Some(5000));
}

// ---------------------------------------------------------------------------
// MS-JSON dates and money

#[test]
fn ms_json_times_are_parsed_exactly() {
    let check = |s: &str, want: &str| assert_eq!(wire::parse_timestamp(s), Ok(ts(want)), "{s}");
    check("/Date(1573755038314)/", "2019-11-14T18:10:38.314Z");
    check("/Date(1573755038314+0000)/", "2019-11-14T18:10:38.314Z");
    // The offset says where the value was written; the instant is the number.
    check("/Date(1573755038314+1300)/", "2019-11-14T18:10:38.314Z");
    check("/Date(1573755038314-0530)/", "2019-11-14T18:10:38.314Z");
    check("/Date(0)/", "1970-01-01T00:00:00Z");
    check("/Date(-86400000)/", "1969-12-31T00:00:00Z");
    check("/Date(-86400001+0100)/", "1969-12-30T23:59:59.999Z");
    for bad in [
        "2019-11-14T18:10:38Z",
        "/Date()/",
        "/Date(abc)/",
        "/Date(1573755038314+000)/",
        "/Date(1573755038314+2500)/",
        "/Date(1573755038314+0060)/",
        "/Date(1573755038314+00:00)/",
        "/Date(1573755038314)",
        "Date(1573755038314)/",
        "/Date(99999999999999999999)/",
        "/Date(--5)/",
    ] {
        let e = wire::parse_timestamp(bad).unwrap_err();
        assert!(
            e.contains("MS-JSON") || e.contains("out of range"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn ms_json_dates_are_the_day_at_their_offset() {
    let d = |y, m, dd| NaiveDate::from_ymd_opt(y, m, dd).unwrap();
    // Xero writes dates as midnight UTC with +0000.
    assert_eq!(
        wire::parse_date("/Date(1546128000000+0000)/"),
        Ok(d(2018, 12, 30))
    );
    assert_eq!(
        wire::parse_date("/Date(1539993600000+0000)/"),
        Ok(d(2018, 10, 20))
    );
    // Midnight in Auckland (+13:00) is 11:00 the day before in UTC.
    let nz_midnight = Utc.with_ymd_and_hms(2018, 10, 19, 11, 0, 0).unwrap();
    let s = format!("/Date({}+1300)/", nz_midnight.timestamp_millis());
    assert_eq!(wire::parse_date(&s), Ok(d(2018, 10, 20)));
    // Without an offset, the UTC day.
    let s = format!("/Date({})/", nz_midnight.timestamp_millis());
    assert_eq!(wire::parse_date(&s), Ok(d(2018, 10, 19)));
    // West of UTC.
    let s = format!(
        "/Date({}-0800)/",
        Utc.with_ymd_and_hms(2020, 3, 1, 7, 59, 0)
            .unwrap()
            .timestamp_millis()
    );
    assert_eq!(wire::parse_date(&s), Ok(d(2020, 2, 29)));
}

fn raw(s: &str) -> Option<Box<RawValue>> {
    Some(RawValue::from_string(s.to_string()).unwrap())
}

#[test]
fn money_is_read_from_its_text() {
    let inv = |total: &str| {
        let json = format!(
            r#"{{"Type":"ACCREC","InvoiceID":"i1","Contact":{{"ContactID":"c1"}},"Date":"/Date(1546128000000+0000)/","Status":"AUTHORISED","CurrencyCode":"NZD","Total":{total},"AmountDue":{total},"UpdatedDateUTC":"/Date(1573755038314+0000)/"}}"#
        );
        let w: wire::WireInvoice = serde_json::from_str(&json).unwrap();
        wire::map_invoice(w)
    };
    let total = |m: Result<Mapped<Record>, String>| match m {
        Ok(Mapped::Item(Record::Invoice(i))) => Ok(i.total),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e),
    };
    // Never through a float: 0.1 + 0.2 stays exact, long values keep digits.
    assert_eq!(total(inv("0.1")), Ok(Decimal::new(1, 1)));
    assert_eq!(
        total(inv("12345678901234.56")),
        Ok("12345678901234.56".parse().unwrap())
    );
    assert_eq!(total(inv("760.00")), Ok(Decimal::new(76000, 2)));
    assert_eq!(total(inv("-5")), Ok(Decimal::from(-5)));
    assert_eq!(total(inv("1.5E+3")), Ok(Decimal::from(1500)));
    assert_eq!(total(inv(r#""50.00""#)), Ok(Decimal::new(5000, 2)));
    let e = total(inv(r#""twelve""#)).unwrap_err();
    assert_eq!(e, "Total: `twelve` is not a decimal number");
    let e = total(inv("null")).unwrap_err();
    assert_eq!(e, "Total missing");
    assert!(raw("1").is_some());
}

// ---------------------------------------------------------------------------
// Mapping

fn contact_json(status: &str) -> String {
    format!(
        r#"{{"ContactID":"5cc8cf28-567e-4d43-b287-687cfcaec47c","ContactNumber":"C-1","AccountNumber":"AC-9","ContactStatus":"{status}","Name":"Katherine Warren","FirstName":"Katherine","LastName":"Warren","EmailAddress":"kat.warren@clampett.com","Addresses":[{{"AddressType":"STREET","AddressLine1":"1 Queen St"}}],"Phones":[{{"PhoneType":"DEFAULT","PhoneNumber":"847-1294"}}],"UpdatedDateUTC":"/Date(1503348546760+0000)/","IsSupplier":false,"IsCustomer":true,"DefaultCurrency":"NZD","Balances":{{"AccountsReceivable":{{"Outstanding":760.00,"Overdue":920.00}}}}}}"#
    )
}

fn map_contact_json(s: &str) -> Result<Mapped<Customer>, String> {
    wire::map_contact(serde_json::from_str(s).unwrap())
}

#[test]
fn contacts_map_with_their_status_and_gdpr_contacts_lose_personal_fields() {
    let Mapped::Item(c) = map_contact_json(&contact_json("ACTIVE")).unwrap() else {
        panic!()
    };
    assert_eq!(c.external_id, "5cc8cf28-567e-4d43-b287-687cfcaec47c");
    assert_eq!(c.name, "Katherine Warren");
    assert_eq!(c.email.as_deref(), Some("kat.warren@clampett.com"));
    assert_eq!(c.currency.as_deref(), Some("NZD"));
    assert_eq!(c.balance, Decimal::new(76000, 2));
    assert!(!c.inactive);
    assert_eq!(c.last_modified, ts("2017-08-21T20:49:06.760Z"));
    assert_eq!(c.custom["contact_status"], "ACTIVE");
    assert_eq!(c.custom["is_customer"], "true");
    assert_eq!(c.custom["account_number"], "AC-9");
    assert_eq!(c.custom["contact_number"], "C-1");
    assert!(!(NATIVE_ARCHIVED.applies)(&c) && !(NATIVE_GDPR_REQUEST.applies)(&c));

    let Mapped::Item(c) = map_contact_json(&contact_json("ARCHIVED")).unwrap() else {
        panic!()
    };
    assert!(c.inactive && (NATIVE_ARCHIVED.applies)(&c));
    assert_eq!(c.name, "Katherine Warren");

    let Mapped::Item(c) = map_contact_json(&contact_json("GDPRREQUEST")).unwrap() else {
        panic!()
    };
    assert!((NATIVE_GDPR_REQUEST.applies)(&c) && !(NATIVE_ARCHIVED.applies)(&c));
    assert_eq!(c.name, wire::GDPR_NAME);
    assert_eq!(c.email, None);
    assert_eq!(c.currency, None);
    assert_eq!(c.balance, Decimal::ZERO);
    let stored = serde_json::to_string(&c).unwrap();
    for personal in [
        "Katherine",
        "Warren",
        "clampett",
        "847-1294",
        "Queen",
        "AC-9",
        "C-1",
    ] {
        assert!(!stored.contains(personal), "{personal} in {stored}");
    }
    assert_eq!(
        c.custom.keys().collect::<Vec<_>>(),
        ["contact_status", "is_customer", "is_supplier"]
    );

    let e = map_contact_json(&contact_json("DELETED")).unwrap_err();
    assert_eq!(e, "unknown ContactStatus `DELETED`");
    let e = map_contact_json(r#"{"ContactID":"x","ContactStatus":"ACTIVE"}"#).unwrap_err();
    assert_eq!(e, "UpdatedDateUTC missing");
}

fn invoice_json(kind: &str, status: &str, extra: &str) -> String {
    format!(
        r#"{{"Type":"{kind}","InvoiceID":"d4956132-ed94-4dd7-9eaa-aa22dfdf06f2","InvoiceNumber":"INV-0001","Contact":{{"ContactID":"a3675fc4-f8dd-4f03-ba5b-f1870566bcd7","Name":"Barney Rubble"}},"Date":"/Date(1539993600000+0000)/","DueDate":"/Date(1546128000000+0000)/","Status":"{status}","CurrencyCode":"NZD","Total":40.0,"AmountDue":12.5,"UpdatedDateUTC":"/Date(1541176290160+0000)/"{extra}}}"#
    )
}

fn map_invoice_json(s: &str) -> Result<Mapped<Record>, String> {
    wire::map_invoice(serde_json::from_str(s).unwrap())
}

#[test]
fn sales_invoices_map_bills_are_skipped_deleted_and_voided_are_deletions() {
    let Mapped::Item(Record::Invoice(i)) =
        map_invoice_json(&invoice_json("ACCREC", "AUTHORISED", "")).unwrap()
    else {
        panic!()
    };
    assert_eq!(i.external_id, "d4956132-ed94-4dd7-9eaa-aa22dfdf06f2");
    assert_eq!(i.number, "INV-0001");
    assert_eq!(i.customer_id, "a3675fc4-f8dd-4f03-ba5b-f1870566bcd7");
    assert_eq!(i.issue_date, NaiveDate::from_ymd_opt(2018, 10, 20).unwrap());
    assert_eq!(i.due_date, NaiveDate::from_ymd_opt(2018, 12, 30).unwrap());
    assert_eq!(i.total, Decimal::new(400, 1));
    assert_eq!(i.amount_due, Decimal::new(125, 1));
    assert_eq!(i.currency, "NZD");
    assert_eq!(i.status, InvoiceStatus::Open);
    assert_eq!(i.last_modified, ts("2018-11-02T16:31:30.160Z"));
    for (status, want) in [
        ("PAID", InvoiceStatus::Paid),
        ("DRAFT", InvoiceStatus::Draft),
        ("SUBMITTED", InvoiceStatus::Draft),
    ] {
        match map_invoice_json(&invoice_json("ACCREC", status, "")) {
            Ok(Mapped::Item(Record::Invoice(i))) => assert_eq!(i.status, want),
            other => panic!("{status}: {other:?}"),
        }
    }
    for status in ["DELETED", "VOIDED"] {
        assert_eq!(
            map_invoice_json(&invoice_json("ACCREC", status, "")),
            Ok(Mapped::Deleted(
                "d4956132-ed94-4dd7-9eaa-aa22dfdf06f2".into()
            ))
        );
    }
    for kind in ["ACCPAY", "ACCPAYCREDIT", "APPREPAYMENT"] {
        assert_eq!(
            map_invoice_json(&invoice_json(kind, "AUTHORISED", "")),
            Ok(Mapped::Skipped)
        );
    }
    // A draft may have no date yet; an approved invoice may not.
    let no_date = |status: &str| {
        invoice_json("ACCREC", status, "").replace(r#""Date":"/Date(1539993600000+0000)/","#, "")
    };
    match map_invoice_json(&no_date("DRAFT")) {
        Ok(Mapped::Item(Record::Invoice(i))) => {
            assert_eq!(i.issue_date, NaiveDate::from_ymd_opt(2018, 11, 2).unwrap())
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        map_invoice_json(&no_date("PAID")),
        Err("Date missing".into())
    );
    assert_eq!(
        map_invoice_json(&invoice_json("ACCREC", "ARCHIVED", "")),
        Err("unknown Status `ARCHIVED`".into())
    );
    let e = map_invoice_json(
        &invoice_json("ACCREC", "PAID", "").replace("+0000)/\",\"DueDate", "+00)/\",\"DueDate"),
    )
    .unwrap_err();
    assert!(e.starts_with("Date: "), "{e}");
    let e = map_invoice_json(
        &invoice_json("ACCREC", "PAID", "")
            .replace(r#""ContactID":"a3675fc4-f8dd-4f03-ba5b-f1870566bcd7","#, ""),
    )
    .unwrap_err();
    assert_eq!(e, "invoice Contact.ContactID missing");
}

#[test]
fn customer_credit_notes_and_payments_map_supplier_ones_are_skipped() {
    let cn = |kind: &str, status: &str| {
        let json = format!(
            r#"{{"Type":"{kind}","CreditNoteID":"cn-1","Contact":{{"ContactID":"c-1"}},"Date":"/Date(1552521600000+0000)/","Status":"{status}","CurrencyCode":"AUD","Total":"18.90","RemainingCredit":0,"UpdatedDateUTC":"/Date(1552521600123+0000)/"}}"#
        );
        wire::map_credit_note(serde_json::from_str(&json).unwrap())
    };
    match cn("ACCRECCREDIT", "AUTHORISED") {
        Ok(Mapped::Item(Record::Transaction(t))) => {
            assert_eq!(t.kind, TransactionKind::CreditNote);
            assert_eq!(t.external_id, "cn-1");
            assert_eq!(t.customer_id, "c-1");
            assert_eq!(t.amount, Decimal::new(1890, 2));
            assert_eq!(t.currency, "AUD");
            assert_eq!(t.date, NaiveDate::from_ymd_opt(2019, 3, 14).unwrap());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(cn("ACCRECCREDIT", "PAID"), Ok(Mapped::Item(_))));
    assert_eq!(
        cn("ACCRECCREDIT", "VOIDED"),
        Ok(Mapped::Deleted("cn-1".into()))
    );
    assert_eq!(
        cn("ACCRECCREDIT", "DELETED"),
        Ok(Mapped::Deleted("cn-1".into()))
    );
    assert_eq!(cn("ACCRECCREDIT", "DRAFT"), Ok(Mapped::Skipped));
    assert_eq!(cn("ACCPAYCREDIT", "AUTHORISED"), Ok(Mapped::Skipped));

    let pay = |ptype: &str, inv_type: &str, status: &str| {
        let json = format!(
            r#"{{"PaymentID":"p-1","Date":"/Date(1543449600000+0000)/","Amount":46.0,"PaymentType":"{ptype}","Status":"{status}","UpdatedDateUTC":"/Date(1541176592690)/","Invoice":{{"Type":"{inv_type}","InvoiceID":"i-1","Contact":{{"ContactID":"c-2"}},"CurrencyCode":"NZD"}}}}"#
        );
        wire::map_payment(serde_json::from_str(&json).unwrap())
    };
    match pay("ACCRECPAYMENT", "ACCREC", "AUTHORISED") {
        Ok(Mapped::Item(Record::Transaction(t))) => {
            assert_eq!(t.kind, TransactionKind::Payment);
            assert_eq!(t.customer_id, "c-2");
            assert_eq!(t.amount, Decimal::new(460, 1));
            assert_eq!(t.currency, "NZD");
            assert_eq!(t.date, NaiveDate::from_ymd_opt(2018, 11, 29).unwrap());
            assert_eq!(t.last_modified, ts("2018-11-02T16:36:32.690Z"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        pay("ACCRECPAYMENT", "ACCREC", "DELETED"),
        Ok(Mapped::Deleted("p-1".into()))
    );
    for (ptype, inv) in [
        ("ACCPAYPAYMENT", "ACCPAY"),
        ("APCREDITPAYMENT", "ACCPAY"),
        ("ARCREDITPAYMENT", "ACCREC"),
        ("ACCRECPAYMENT", "ACCPAY"),
    ] {
        assert_eq!(
            pay(ptype, inv, "AUTHORISED"),
            Ok(Mapped::Skipped),
            "{ptype}"
        );
    }
    assert_eq!(
        pay("ACCRECPAYMENT", "ACCREC", "VOIDED"),
        Err("unknown Status `VOIDED`".into())
    );
}

#[test]
fn a_page_maps_records_one_by_one_and_quarantines_the_bad_ones() {
    let body = format!(
        r#"{{"Id":"x","Status":"OK","ProviderName":"p","DateTimeUTC":"/Date(1552326816230)/","pagination":{{"page":1,"pageSize":100,"pageCount":1,"itemCount":5}},"Invoices":[{},{},{},{},{}]}}"#,
        invoice_json("ACCREC", "AUTHORISED", ""),
        invoice_json("ACCPAY", "AUTHORISED", "").replace("d4956132", "00000002"),
        invoice_json("ACCREC", "VOIDED", "").replace("d4956132", "00000003"),
        invoice_json("ACCREC", "PAID", "")
            .replace("d4956132", "00000004")
            .replace("40.0", "\"forty\"")
            .replace("1541176290160", "1741176290160"),
        r#"{"InvoiceID":7,"UpdatedDateUTC":"/Date(1641176290160)/"}"#,
    );
    let env = wire::parse_envelope(body.as_bytes(), "Invoices").unwrap();
    assert_eq!(env.pagination.unwrap().item_count, 5);
    assert!(!query::has_more(&env, 100));
    let page = wire::map_page::<wire::WireInvoice, _>(&env.records, wire::map_invoice);
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.deleted, ["00000003-ed94-4dd7-9eaa-aa22dfdf06f2"]);
    assert_eq!(page.skipped, 1);
    assert_eq!(page.quarantined.len(), 2);
    let q = &page.quarantined[0];
    assert_eq!(
        q.external_id.as_deref(),
        Some("00000004-ed94-4dd7-9eaa-aa22dfdf06f2")
    );
    assert_eq!(q.reason, "Total: `forty` is not a decimal number");
    assert!(q.raw.contains("\"forty\""));
    assert!(page.quarantined[1].reason.starts_with("unreadable record:"));
    // Every record's time counts for the cursor, the bad ones too.
    assert_eq!(page.max_updated, Some(ts("2025-03-05T12:04:50.160Z")));
    assert!(!page.in_order, "2025, then 2022");

    // Contacts never keep personal fields in quarantine.
    let body = format!(
        r#"{{"Status":"OK","Contacts":[{}, {}]}}"#,
        contact_json("GDPRREQUEST").replace("760.00", "\"lots\""),
        contact_json("ACTIVE").replace("\"IsCustomer\":true", "\"IsCustomer\":\"Warren\"")
    );
    let env = wire::parse_envelope(body.as_bytes(), "Contacts").unwrap();
    let page = wire::map_page::<wire::WireContact, _>(&env.records, wire::map_contact);
    assert_eq!(page.items.len(), 1, "the GDPR contact needs no balance");
    assert_eq!(page.quarantined.len(), 1);
    let q = &page.quarantined[0];
    assert!(
        !q.raw.contains("Warren") && !q.reason.contains("Warren"),
        "{q:?}"
    );
    assert!(
        q.raw.contains("5cc8cf28-567e-4d43-b287-687cfcaec47c"),
        "{q:?}"
    );
}

#[test]
fn envelopes_are_checked() {
    let e =
        wire::parse_envelope(b"<Response><Status>OK</Status></Response>", "Invoices").unwrap_err();
    assert!(e.contains("not Xero's JSON envelope"), "{e}");
    let e = wire::parse_envelope(br#"{"Status":"OK","Contacts":[]}"#, "Invoices").unwrap_err();
    assert_eq!(e, "the answer has no `Invoices` list");
    let e = wire::parse_envelope(br#"{"Status":"ERROR","Invoices":[]}"#, "Invoices").unwrap_err();
    assert_eq!(e, "the Invoices answer has Status `ERROR`");
    let env = wire::parse_envelope(br#"{"Invoices":[]}"#, "Invoices").unwrap();
    assert!(env.records.is_empty() && !query::has_more(&env, 10));
    let list = wire::parse_connections(
        br#"[{"id":"7cb59f93-2964-421d-bb5e-a0f7a4572a44","tenantId":"fe79f7dd-b6d4-4a92-ba7b-538af6289c58","tenantName":"Demo Company (NZ)","tenantType":"ORGANISATION","createdDateUtc":"2019-12-07T18:46:19.5165400"}]"#,
    )
    .unwrap();
    assert_eq!(list[0].tenant_id, "fe79f7dd-b6d4-4a92-ba7b-538af6289c58");
    assert_eq!(list[0].tenant_name.as_deref(), Some("Demo Company (NZ)"));
}

// ---------------------------------------------------------------------------
// Queries and cursors

fn param<'a>(p: &'a [(&'static str, String)], k: &str) -> Option<&'a str> {
    p.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str())
}

#[test]
fn incremental_queries_ask_for_the_receivables_side_only() {
    let p = query::incremental_params(Endpoint::Contacts, 3, 500);
    assert_eq!(param(&p, "includeArchived"), Some("true"));
    assert_eq!(param(&p, "where"), None);
    assert_eq!(param(&p, "order"), Some("UpdatedDateUTC ASC"));
    assert_eq!(param(&p, "page"), Some("3"));
    assert_eq!(param(&p, "pageSize"), Some("500"));
    let p = query::incremental_params(Endpoint::Invoices, 1, 10);
    assert_eq!(param(&p, "where"), Some(r#"Type=="ACCREC""#));
    assert_eq!(
        param(&p, "Statuses"),
        Some("DRAFT,SUBMITTED,AUTHORISED,PAID,VOIDED,DELETED")
    );
    let p = query::incremental_params(Endpoint::CreditNotes, 1, 10);
    assert_eq!(param(&p, "where"), Some(r#"Type=="ACCRECCREDIT""#));
    let p = query::incremental_params(Endpoint::Payments, 1, 10);
    assert_eq!(param(&p, "where"), Some(r#"PaymentType=="ACCRECPAYMENT""#));
    assert_eq!(
        query::if_modified_since(ts("2026-01-05T10:11:12.999Z")),
        "2026-01-05T10:11:12"
    );
}

#[test]
fn resync_queries_name_many_contacts_and_stay_short() {
    let ids: Vec<String> = (0..40)
        .map(|i| format!("{i:08x}-b6d4-4a92-ba7b-538af6289c58"))
        .collect();
    let url = |p: Vec<(&'static str, String)>| {
        let mut u = reqwest::Url::parse("https://api.xero.com/api.xro/2.0/Invoices").unwrap();
        u.query_pairs_mut()
            .extend_pairs(p.iter().map(|(k, v)| (*k, v.as_str())));
        u.query().unwrap().len()
    };
    let p = query::resync_params(Endpoint::Invoices, &ids, 1, 1000);
    assert_eq!(param(&p, "ContactIDs"), Some(ids.join(",").as_str()));
    assert_eq!(param(&p, "order"), Some("InvoiceID ASC"));
    assert!(url(p) < 2000);
    let chunk = &ids[..query::WHERE_CHUNK];
    let p = query::resync_params(Endpoint::CreditNotes, chunk, 2, 1000);
    let w = param(&p, "where").unwrap();
    assert!(
        w.starts_with(r#"Type=="ACCRECCREDIT" AND (Contact.ContactID==Guid("00000000-"#),
        "{w}"
    );
    assert_eq!(w.matches(" OR ").count(), query::WHERE_CHUNK - 1);
    assert_eq!(param(&p, "order"), Some("CreditNoteID ASC"));
    assert!(url(p) < 2000);
    let p = query::resync_params(Endpoint::Payments, chunk, 1, 1000);
    let w = param(&p, "where").unwrap();
    assert!(
        w.starts_with(r#"PaymentType=="ACCRECPAYMENT" AND (Invoice.Contact.ContactID==Guid("#),
        "{w}"
    );
    assert!(url(p) < 2000);
}

#[test]
fn positions_advance_by_time_and_by_page_within_one_second() {
    let start = Position::default();
    // From the beginning: a full page moves `since` to the second before
    // the latest record.
    let p = advance(&start, Some(ts("2026-01-05T10:00:07.250Z")), true, true);
    assert_eq!(
        p,
        Position {
            since: Some(ts("2026-01-05T10:00:06Z")),
            page: 1
        }
    );
    // Further on.
    let p2 = advance(&p, Some(ts("2026-01-05T10:00:09.001Z")), true, true);
    assert_eq!(p2.since, Some(ts("2026-01-05T10:00:08Z")));
    assert_eq!(p2.page, 1);
    // A whole page within the second after `since`: the next page number.
    let p3 = advance(&p2, Some(ts("2026-01-05T10:00:09.999Z")), true, true);
    assert_eq!(
        p3,
        Position {
            since: p2.since,
            page: 2
        }
    );
    let p4 = advance(&p3, Some(ts("2026-01-05T10:00:09.500Z")), true, true);
    assert_eq!(p4.page, 3);
    // The end: caught up, the next pass starts before the latest second.
    let end = advance(&p4, Some(ts("2026-01-05T10:00:30.100Z")), true, false);
    assert_eq!(
        end,
        Position {
            since: Some(ts("2026-01-05T10:00:29Z")),
            page: 1
        }
    );
    // An empty last page keeps `since`, back to page 1.
    let end = advance(&p4, None, true, false);
    assert_eq!(
        end,
        Position {
            since: p2.since,
            page: 1
        }
    );
    // An older record than `since` (clock skew upstream) never moves it back.
    let end = advance(&p2, Some(ts("2026-01-01T00:00:00Z")), true, false);
    assert_eq!(end.since, p2.since);
    // Nothing at all from the start: still from the start.
    assert_eq!(advance(&start, None, true, false), start);
    // Out of order: never a later `since` while pages follow.
    let p5 = advance(&p2, Some(ts("2026-01-05T11:00:00Z")), false, true);
    assert_eq!(
        p5,
        Position {
            since: p2.since,
            page: 2
        }
    );
}

#[test]
fn cursors_round_trip_and_garbage_is_a_clear_error() {
    let c = TransactionsCursor {
        phase: query::TxPhase::Payments,
        credit_notes: Position {
            since: Some(ts("2026-01-05T10:00:06Z")),
            page: 1,
        },
        payments: Position::default(),
    };
    let enc = query::encode(&c);
    assert_eq!(
        enc.0,
        r#"{"phase":"payments","credit_notes":{"since":"2026-01-05T10:00:06Z","page":1},"payments":{"page":1}}"#
    );
    assert_eq!(query::decode::<TransactionsCursor>(&enc).unwrap(), c);
    assert_eq!(
        query::decode::<ResyncCursor>(&Cursor::start()).unwrap(),
        ResyncCursor::default()
    );
    assert_eq!(
        query::decode::<Position>(&Cursor("{}".into())).unwrap(),
        Position::default()
    );
    match query::decode::<Position>(&Cursor("nope".into())) {
        Err(ConnectorError::Config(m)) => {
            assert!(m.contains("stored Xero cursor is unreadable"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Errors

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

#[test]
fn answers_map_to_budget_and_oauth_decisions() {
    let day = headers(&[("retry-after", "3600"), ("x-rate-limit-problem", "day")]);
    assert!(matches!(
        classify_failure(429, Some(Refusal::of(&day)), b""),
        ConnectorError::DailyQuota { retry_after: Some(d) } if d == Duration::from_secs(3600)
    ));
    let daily = headers(&[("retry-after", "20"), ("x-rate-limit-problem", "Daily")]);
    assert!(matches!(
        classify_failure(429, Some(Refusal::of(&daily)), b""),
        ConnectorError::DailyQuota { .. }
    ));
    for problem in ["minute", "Minute", "appminute", "concurrent", ""] {
        let h = headers(&[("retry-after", "7"), ("x-rate-limit-problem", problem)]);
        assert!(
            matches!(
                classify_failure(429, Some(Refusal::of(&h)), b""),
                ConnectorError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(7)
            ),
            "{problem}"
        );
    }
    let expired = br#"{"Type":null,"Title":"Unauthorized","Status":401,"Detail":"TokenExpired: token expired at 12/01/2020 23:37:57","Instance":"x","Extensions":{}}"#;
    match classify_failure(401, None, expired) {
        ConnectorError::Unauthorized(m) => {
            assert_eq!(
                m,
                "Unauthorized: TokenExpired: token expired at 12/01/2020 23:37:57"
            )
        }
        e => panic!("{e:?}"),
    }
    let tenant = br#"{"Type":null,"Title":"Forbidden","Status":403,"Detail":"AuthenticationUnsuccessful","Instance":"x","Extensions":{}}"#;
    match classify_failure(403, None, tenant) {
        ConnectorError::Auth(m) => {
            assert!(m.starts_with(TENANT_REFUSED), "{m}");
            assert!(m.contains("Forbidden: AuthenticationUnsuccessful"), "{m}");
            assert!(m.contains("tenant_id is wrong"), "{m}");
        }
        e => panic!("{e:?}"),
    }
    let scope = br#"{"Title":"Forbidden","Status":403,"Detail":"AuthorizationUnsuccessful"}"#;
    match classify_failure(403, None, scope) {
        ConnectorError::Auth(m) => {
            assert!(
                !m.starts_with(TENANT_REFUSED) && m.contains("scopes"),
                "{m}"
            )
        }
        e => panic!("{e:?}"),
    }
    let query = br#"{"ErrorNumber":16,"Type":"QueryParseException","Message":"No property or field 'Foo' exists in type 'Invoice'"}"#;
    match classify_failure(400, None, query) {
        ConnectorError::Rejected {
            status: 400,
            message,
        } => assert_eq!(
            message,
            "QueryParseException: No property or field 'Foo' exists in type 'Invoice'"
        ),
        e => panic!("{e:?}"),
    }
    let validation = br#"{"ErrorNumber":10,"Type":"ValidationException","Message":"A validation exception occurred","Elements":[{"ValidationErrors":[{"Message":"Bad thing"}]}]}"#;
    match classify_failure(400, None, validation) {
        ConnectorError::Rejected { message, .. } => assert_eq!(
            message,
            "ValidationException: A validation exception occurred: Bad thing"
        ),
        e => panic!("{e:?}"),
    }
    match classify_failure(
        503,
        None,
        b"<html>\n<body>Service\tUnavailable</body></html>",
    ) {
        ConnectorError::Server {
            status: 503,
            message,
        } => {
            assert_eq!(message, "<html> <body>Service Unavailable</body></html>")
        }
        e => panic!("{e:?}"),
    }
    assert!(
        matches!(classify_failure(302, None, b""), ConnectorError::Protocol(m) if m.contains("unexpected HTTP 302: (no body)"))
    );
    assert!(classify_failure(429, None, b"").is_retryable());
}

#[test]
fn only_json_answers_are_read() {
    let a = |ct: &str, body: &str| Answer {
        headers: if ct.is_empty() {
            HeaderMap::new()
        } else {
            headers(&[("content-type", ct)])
        },
        body: body.as_bytes().to_vec(),
    };
    assert!(a("application/json; charset=utf-8", "{}")
        .check_json("x")
        .is_ok());
    assert!(a("", " [ ]").check_json("x").is_ok());
    let e = a("text/xml; charset=utf-8", "<Response/>")
        .check_json("Invoices")
        .unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Protocol(m) if m == "the Invoices answer is not JSON (Content-Type `text/xml; charset=utf-8`)"),
        "{e:?}"
    );
    assert!(a("", "<Response/>").check_json("x").is_err());
}
