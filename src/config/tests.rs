use super::*;

fn parse_ok(text: &str) -> Config {
    parse(
        Path::new("/etc/erpsync/erpsync.toml"),
        text,
        &crate::connectors::REGISTRY,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn parse_err(text: &str) -> String {
    parse(
        Path::new("/etc/erpsync/erpsync.toml"),
        text,
        &crate::connectors::REGISTRY,
    )
    .unwrap_err()
    .to_string()
}

const MIN: &str = "[[connectors]]\nid = \"d\"\nkind = \"demo\"\n";

#[test]
fn defaults_are_loopback_and_all_native_exclusions() {
    let c = parse_ok(MIN);
    assert_eq!(c.http.listen.to_string(), DEFAULT_LISTEN);
    assert!(c.http.admin_token.is_none());
    assert_eq!(
        c.connectors[0].native_exclusions,
        ["inactive", "intercompany"]
    );
    assert_eq!(c.connectors[0].poll_interval, Duration::from_secs(60));
    assert_eq!(c.exclusions.max_new_exclusion_ratio, 0.2);
    assert_eq!(c.daemon.state_dir, PathBuf::from("/var/lib/erpsync"));
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let c = parse_ok(&format!("[daemon]\nstate_dir = \"state\"\n{MIN}"));
    assert_eq!(c.daemon.state_dir, PathBuf::from("/etc/erpsync/state"));
}

#[test]
fn native_exclusions_can_be_switched_off() {
    let c = parse_ok(&format!("{MIN}native_exclusions = []\n"));
    assert!(c.connectors[0].native_exclusions.is_empty());
}

#[test]
fn credential_and_file_are_exclusive() {
    let e = parse_err(&format!(
        "[http]\nadmin_token_file = \"/nonexistent\"\nadmin_token_credential = \"admin-token\"\n{MIN}"
    ));
    assert!(e.contains("not both"), "{e}");
}

#[test]
fn rules_compile_with_case_sensitivity() {
    let c = parse_ok(&format!(
        "{MIN}[[rules]]\nid = \"t\"\ndescription = \"tests\"\ncase_sensitive = true\nwhen = {{ field = \"name\", op = \"contains\", value = \"Test\" }}\n"
    ));
    assert_eq!(c.rules.rules().len(), 1);
    assert_eq!(c.rules.rules()[0].id, "t");
}

#[test]
fn ratio_out_of_range_is_refused() {
    let e = parse_err(&format!(
        "[exclusions]\nmax_new_exclusion_ratio = 1.5\n{MIN}"
    ));
    assert!(e.contains("exclusions.max_new_exclusion_ratio"), "{e}");
}

#[test]
fn no_connectors_is_an_error() {
    let e = parse_err("[daemon]\nstate_dir = \"x\"\n");
    assert!(e.contains("no [[connectors]] configured"), "{e}");
}

#[test]
fn a_kinds_options_reach_it_typed_and_defaults_fill_the_rest() {
    let c = parse_ok(&format!(
        "{MIN}[connectors.demo]\nseed = 7\ncustomers = 10\n"
    ));
    let o = c.connectors[0]
        .options
        .get::<crate::connectors::demo::DemoOptions>()
        .expect("demo options");
    assert_eq!((o.seed, o.customers, o.page_size), (7, 10, 500));
    assert!(c.connectors[0]
        .options
        .get::<crate::connectors::netsuite::NetsuiteOptions>()
        .is_none());
    // No table: the kind's defaults.
    let c = parse_ok(MIN);
    assert_eq!(
        c.connectors[0]
            .options
            .get::<crate::connectors::demo::DemoOptions>()
            .unwrap()
            .seed,
        42
    );
}

#[test]
fn problems_in_a_kinds_table_name_its_key_at_its_line() {
    let e = parse_err(&format!(
        "{MIN}[connectors.demo]\nseed = 1\npage_size = 0\ninactive_ratio = 2.0\n"
    ));
    assert!(
        e.contains(
            "erpsync.toml:6: key `connectors[0].demo.page_size`: must be between 1 and 1000"
        ),
        "{e}"
    );
    assert!(
        e.contains("erpsync.toml:7: key `connectors[0].demo.inactive_ratio`"),
        "{e}"
    );
    let e = parse_err(&format!("{MIN}[connectors.demo]\nseed = 1\nseeds = 2\n"));
    assert!(
        e.contains("erpsync.toml:6: key `connectors[0].demo.seeds`: unknown field `seeds`"),
        "{e}"
    );
    let e = parse_err(&format!("{MIN}[connectors.netsuite]\naccount_id = \"1\"\n"));
    assert!(
        e.contains("key `connectors[0].netsuite`: a [connectors.netsuite] table does not apply to kind `demo`"),
        "{e}"
    );
    let e = parse_err("[[connectors]]\nid = \"n\"\nkind = \"netsuite\"\n");
    assert!(
        e.contains("erpsync.toml:2: key `connectors[0].netsuite`: kind `netsuite` needs a [connectors.netsuite] table: missing field `account_id`"),
        "{e}"
    );
}

#[test]
fn rate_limit_keys_override_the_kinds_defaults_one_by_one() {
    let c = parse_ok(&format!(
        "{MIN}rate_limit = {{ requests_per_second = 2.5, requests_per_day = 5000, max_retry_wait = \"90m\" }}\n"
    ));
    let l = c.connectors[0].limits;
    assert_eq!(l.requests_per_second, 2.5);
    assert_eq!(l.burst, 3, "one second's worth when only the rate is set");
    assert_eq!(l.max_concurrency, Limits::default().max_concurrency);
    assert_eq!(l.requests_per_day, Some(5000));
    assert_eq!(l.max_retry_wait, Duration::from_secs(5400));
    let e = parse_err(&format!(
        "{MIN}rate_limit = {{ max_retry_wait = \"2d\" }}\n"
    ));
    assert!(
        e.contains("rate_limit.max_retry_wait") && e.contains("at most 1day"),
        "{e}"
    );
}

#[test]
fn no_kind_is_named_like_a_common_connector_key() {
    for k in crate::connectors::REGISTRY.names() {
        assert!(
            ![
                "id",
                "kind",
                "poll_interval",
                "rate_limit",
                "resync_share",
                "native_exclusions"
            ]
            .contains(&k),
            "{k}"
        );
    }
}

#[test]
fn the_viewer_token_comes_from_a_file_or_a_credential_like_the_admin_token() {
    let c = parse_ok(&format!(
        "[http]\nviewer_token_credential = \"viewer-token\"\n{MIN}"
    ));
    assert_eq!(
        c.http.viewer_token,
        Some(SecretSource::Credential("viewer-token".into()))
    );
    assert!(c.summary().contains("viewer token: configured"));
    let err = parse_err(&format!(
        "[http]\nviewer_token_file = \"v\"\nviewer_token_credential = \"v\"\n{MIN}"
    ));
    assert!(
        err.contains("erpsync.toml:3: key `http.viewer_token_credential`: set either viewer_token_file or viewer_token_credential, not both"),
        "{err}"
    );
    let err = parse_err(&format!("[http]\nviewer_token_file = \"nope/v\"\n{MIN}"));
    assert!(
        err.contains("erpsync.toml:2: key `http.viewer_token_file`: credential file /etc/erpsync/nope/v does not exist"),
        "{err}"
    );
}

#[test]
fn lease_timeout_defaults_to_30s_and_is_bounded() {
    assert_eq!(parse_ok(MIN).daemon.lease_timeout, Duration::from_secs(30));
    let c = parse_ok(&format!("[daemon]\nlease_timeout = \"12s\"\n{MIN}"));
    assert_eq!(c.daemon.lease_timeout, Duration::from_secs(12));
    let e = parse_err(&format!("[daemon]\nlease_timeout = \"2s\"\n{MIN}"));
    assert!(
        e.contains("erpsync.toml:2: key `daemon.lease_timeout`: `2s` is too short; at least 5s"),
        "{e}"
    );
    let e = parse_err(&format!("[daemon]\nlease_timeout = \"30\"\n{MIN}"));
    assert!(
        e.contains("erpsync.toml:2: key `daemon.lease_timeout`:") && e.contains("no unit"),
        "{e}"
    );
    let e = parse_err(&format!("[daemon]\nlease_timeout = \"2h\"\n{MIN}"));
    assert!(e.contains("`2h` is too long; at most 1h"), "{e}");
}
