use super::*;

fn parse_ok(text: &str) -> Config {
    parse(Path::new("/etc/erpsync/erpsync.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

fn parse_err(text: &str) -> String {
    parse(Path::new("/etc/erpsync/erpsync.toml"), text)
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
fn durations_parse() {
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
    assert!(parse_duration("5 parsecs")
        .unwrap_err()
        .contains("unknown unit"));
    assert!(parse_duration("abc")
        .unwrap_err()
        .contains("not a duration"));
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
