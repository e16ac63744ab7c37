//! A session whose details the caller may not see (another role's, without
//! pg_read_all_stats) is matched on NULLs, as the README promises: pg_stat_activity's
//! `<insufficient privilege>` placeholder is only what the result row shows, never what a filter
//! reads. The review of 0.1.0 found a signaller terminating every session it could not see with
//! `{"query": {"regex": "insufficient"}}`.

use pg_reaper_integration::*;

#[test]
fn a_hidden_session_never_matches_on_its_placeholder() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    cluster.create_role("signaller", "IN ROLE pg_signal_backend");
    let tag = tag("hidden");
    let idle = cluster.session("app", &tag);
    let (busy, busy_query) = cluster.session("app", &tag).busy(&cluster);
    let in_tx = cluster.session("app", &tag).idle_in_transaction();
    let mut signaller = cluster.connect("signaller");

    // What the signaller sees: the placeholder in `query`, NULL in every hidden column.
    let rows = preview(
        &mut signaller,
        &format!(r#"{{"application_name": "{tag}"}}"#),
    );
    assert_eq!(
        pids(&rows),
        sorted(vec![idle.pid, busy.pid, in_tx.pid]),
        "{rows:?}"
    );
    for r in &rows {
        assert_eq!(r.state, None, "{r:?}");
        assert_eq!(r.backend_type, None, "{r:?}");
        assert_eq!(r.client_addr, None, "{r:?}");
    }
    let shown: Vec<Option<String>> = signaller
        .query(
            "SELECT query FROM reaper.preview_matching($1::text::jsonb)",
            &[&format!(r#"{{"application_name": "{tag}"}}"#)],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        shown
            .iter()
            .all(|q| q.as_deref() == Some("<insufficient privilege>")),
        "{shown:?}"
    );

    // Nothing a filter can say about a hidden column matches a hidden session.
    for hidden in [
        r#""query": {"regex": "insufficient"}"#,
        r#""query": {"regex": "."}"#,
        r#""query": {"regex": ""}"#,
        r#""query": "<insufficient privilege>""#,
        r#""query": ["<insufficient privilege>", "x"]"#,
        r#""state": {"regex": "."}"#,
        r#""wait_event_type": {"regex": ""}"#,
        r#""wait_event": {"regex": ""}"#,
        r#""client_hostname": {"regex": ""}"#,
        r#""client_addr": ["0.0.0.0/0", "::/0", "local"]"#,
        r#""min_backend_age": 0"#,
        r#""min_state_age": 0"#,
        r#""min_query_age": 0"#,
        r#""min_xact_age": 0"#,
        r#""backend_type": {"regex": ""}"#,
    ] {
        let filter = format!(r#"{{"application_name": "{tag}", {hidden}}}"#);
        assert_eq!(preview(&mut signaller, &filter).len(), 0, "{filter}");
        assert_eq!(
            terminate(&mut signaller, &filter, 1000).len(),
            0,
            "{filter}"
        );
    }
    // The review's exact call, without the tag: nothing it cannot see is touched.
    let rows = call(
        &mut signaller,
        "reaper.terminate_matching($1::text::jsonb, 1000)",
        r#"{"query": {"regex": "insufficient"}}"#,
    )
    .unwrap();
    assert!(rows.is_empty(), "{rows:?}");
    assert_eq!(idle.run("SELECT 1"), Ended::Ok);
    assert!(busy_query.still_running_after(std::time::Duration::from_millis(50)));
    assert_eq!(in_tx.run("SELECT 1"), Ended::Ok);

    // What it may see, it may still match: usename, datname, application_name.
    let rows = terminate(
        &mut signaller,
        &format!(r#"{{"application_name": "{tag}", "usename": "app", "datname": "postgres"}}"#),
        5000,
    );
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r.outcome == "terminated"), "{rows:?}");
    // The audit row shows what the caller saw.
    let placeholders = count(
        &mut cluster.superuser(),
        "SELECT count(*) FROM reaper.log WHERE query = '<insufficient privilege>' AND state IS NULL",
    );
    assert_eq!(placeholders, 3);
}
