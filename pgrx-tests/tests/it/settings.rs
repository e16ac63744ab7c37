//! pg_reaper's settings: the prefix is reserved, so that a misspelt setting is an error, as a
//! misspelt filter key is.

use pg_reaper_integration::*;

#[test]
fn a_misspelt_setting_is_an_error_once_the_library_is_loaded() {
    let cluster = Cluster::start();
    if server_major() == 14 {
        // MarkGUCPrefixReserved came with 15: 14 accepts any SET of a name with a dot once a
        // session runs, and can only warn about the placeholders it finds at load.
        return a_misspelt_setting_is_warned_about_at_load_on_14(&cluster);
    }
    let mut me = cluster.superuser();
    me.batch_execute("SELECT reaper.validate_filter('{\"all\": true}')")
        .unwrap();
    let err = me.batch_execute("SET pg_reaper.audti = off").unwrap_err();
    assert_eq!(sqlstate(&err), Some("42602"), "{err}");
    let message = err.as_db_error().unwrap().message().to_string();
    assert_eq!(
        message,
        r#"invalid configuration parameter name "pg_reaper.audti""#
    );
    assert_eq!(
        me.query_one("SHOW pg_reaper.audit", &[])
            .unwrap()
            .get::<_, String>(0),
        "on"
    );
    // Set before the library was loaded in a session, it is removed with a WARNING on load.
    let (mut fresh, notices) = cluster.collecting_client("postgres");
    fresh
        .batch_execute("SET pg_reaper.log_actoins = off")
        .unwrap();
    fresh
        .batch_execute("SELECT reaper.validate_filter('{\"all\": true}')")
        .unwrap();
    let notices = notices.lock().unwrap().clone();
    assert_eq!(
        notices,
        vec![
            r#"WARNING 42602: invalid configuration parameter name "pg_reaper.log_actoins", removing it"#
        ]
    );
}

fn a_misspelt_setting_is_warned_about_at_load_on_14(cluster: &Cluster) {
    skip(
        "settings::a_misspelt_setting_is_an_error_once_the_library_is_loaded (the error after load)",
        "PostgreSQL 14 cannot reserve a setting prefix (MarkGUCPrefixReserved came with 15); the WARNING at load is checked instead",
    );
    let (mut fresh, notices) = cluster.collecting_client("postgres");
    fresh
        .batch_execute("SET pg_reaper.log_actoins = off")
        .unwrap();
    fresh
        .batch_execute("SELECT reaper.validate_filter('{\"all\": true}')")
        .unwrap();
    let notices = notices.lock().unwrap().clone();
    assert_eq!(
        notices,
        vec![r#"WARNING 42704: unrecognized configuration parameter "pg_reaper.log_actoins""#]
    );
}
