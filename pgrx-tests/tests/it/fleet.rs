//! A fleet from one control cluster, by PostgreSQL's own logical replication, as the README's
//! recipe says: the control publishes `reaper.policies`, each member subscribes and enforces it
//! with its own worker; each member publishes `reaper.log` (inserts only), and the control
//! subscribes to all of them: one audit, every row saying which node wrote it.

use pg_reaper_integration::*;

fn node(name: &str) -> Cluster {
    Cluster::preloaded(&[
        "wal_level = logical",
        &format!("pg_reaper.node_name = '{name}'"),
    ])
}

/// The control, sized as the README says: an apply worker per member and room for the table
/// copies of subscriptions that start together (the default 4 would keep a fourth member's
/// audit out, "out of logical replication worker slots").
fn control() -> Cluster {
    Cluster::preloaded(&[
        "wal_level = logical",
        "pg_reaper.node_name = 'control'",
        "max_logical_replication_workers = 8",
        "max_worker_processes = 16",
    ])
}

fn conninfo(c: &Cluster) -> String {
    format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        c.port
    )
}

#[test]
fn a_control_cluster_drives_three_members_and_gathers_their_audit() {
    let control = control();
    let members: Vec<(String, Cluster)> = ["m1", "m2", "m3"]
        .iter()
        .map(|n| (n.to_string(), node(n)))
        .collect();
    let mut c = control.superuser();
    c.batch_execute("CREATE PUBLICATION reaper_policies FOR TABLE reaper.policies")
        .unwrap();
    for (name, m) in &members {
        let mut su = m.superuser();
        su.batch_execute(&format!(
            // Each member's subscription names its own slot on the control.
            "CREATE SUBSCRIPTION reaper_policies_{name} CONNECTION '{}' PUBLICATION reaper_policies",
            conninfo(&control)
        ))
        .unwrap();
        su.batch_execute(
            "CREATE PUBLICATION reaper_log FOR TABLE reaper.log WITH (publish = 'insert')",
        )
        .unwrap();
        c.batch_execute(&format!(
            "CREATE SUBSCRIPTION reaper_log_{name} CONNECTION '{}' PUBLICATION reaper_log",
            conninfo(m)
        ))
        .unwrap();
    }
    // Every subscription copied and streaming before anything is written: the policies on
    // each member, every member's log on the control.
    for (_, m) in &members {
        wait_subscriptions_ready(&mut m.superuser(), 1);
    }
    wait_subscriptions_ready(&mut c, 3);
    // Two idle sessions of the application on every member.
    let sessions: Vec<Vec<Session>> = members
        .iter()
        .map(|(_, m)| (0..2).map(|_| m.session("app", "fleet-idle")).collect())
        .collect();
    c.batch_execute(
        "INSERT INTO reaper.policies (name, filter, action, timeout_ms, run_every) VALUES \
         ('fleet-idle', '{\"application_name\": \"fleet-idle\", \"state\": \"idle\"}', 'terminate', 5000, '200 ms')",
    )
    .unwrap();
    // Each member's worker ends its own two; the control's log gets every member's rows.
    wait_replicated(
        &mut c,
        "SELECT count(*) = 6 FROM reaper.log WHERE policy = 'fleet-idle' AND outcome = 'terminated'",
    );
    let by_node: Vec<(String, i64)> = c
        .query(
            "SELECT node, count(*) FROM reaper.log WHERE policy = 'fleet-idle' GROUP BY node ORDER BY node",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        by_node,
        vec![("m1".into(), 2), ("m2".into(), 2), ("m3".into(), 2)]
    );
    for ((_, m), ss) in members.iter().zip(&sessions) {
        for s in ss {
            assert!(!m.alive(s.pid));
        }
    }

    // A member's own write to its replicated policies is refused, with the way out.
    let (_, m1) = &members[0];
    let mut m1su = m1.superuser();
    let err = m1su
        .batch_execute("UPDATE reaper.policies SET enabled = false WHERE name = 'fleet-idle'")
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("55000"), "{err}");

    // Purging a member's log stays on the member; purging the control's stays there.
    let total = count(&mut c, "SELECT count(*) FROM reaper.log WHERE node = 'm1'");
    assert_eq!(
        m1su.query_one("SELECT reaper.purge_log('0')", &[])
            .unwrap()
            .get::<_, i64>(0),
        2
    );
    // The control still has m1's rows after m1's next row arrived (the purge would have come first).
    let _more = m1.session("app", "fleet-idle");
    wait_replicated(
        &mut c,
        "SELECT count(*) = 3 FROM reaper.log WHERE node = 'm1'",
    );
    assert_eq!(total, 2);
    // Purging the control's gathered log leaves the members' own logs, and the rows that come
    // after still arrive.
    c.query_one("SELECT reaper.purge_log('0')", &[]).unwrap();
    let (_, m2) = &members[1];
    assert_eq!(
        count(&mut m2.superuser(), "SELECT count(*) FROM reaper.log"),
        2
    );
    let _after_purge = m2.session("app", "fleet-idle");
    wait_replicated(
        &mut c,
        "SELECT count(*) = 1 FROM reaper.log WHERE node = 'm2'",
    );
    // m2's numbers start again (as after the extension is created anew there): the README's
    // setval before it writes, and its next row arrives.
    let mut m2su = m2.superuser();
    m2su.batch_execute("ALTER SEQUENCE reaper.log_id_seq RESTART")
        .unwrap();
    let held: i64 = c
        .query_one("SELECT max(id) FROM reaper.log WHERE node = 'm2'", &[])
        .unwrap()
        .get(0);
    m2su.execute("SELECT setval('reaper.log_id_seq', $1)", &[&held])
        .unwrap();
    let _after_restart = m2.session("app", "fleet-idle");
    wait_replicated(
        &mut c,
        "SELECT count(*) = 2 FROM reaper.log WHERE node = 'm2'",
    );

    // A policy whose owner a member lacks does not stop replication there: the member says why.
    c.batch_execute("CREATE ROLE control_only; GRANT pg_signal_backend TO control_only")
        .unwrap();
    c.batch_execute(
        "INSERT INTO reaper.policies (name, filter, owner, run_every) VALUES \
         ('owned-elsewhere', '{\"application_name\": \"nobody\"}', 'control_only', '200 ms'); \
         INSERT INTO reaper.policies (name, filter) VALUES ('after-it', '{\"application_name\": \"nobody\"}')",
    )
    .unwrap();
    let (_, m3) = &members[2];
    let mut m3su = m3.superuser();
    wait_replicated(
        &mut m3su,
        "SELECT count(*) = 1 FROM reaper.policies WHERE name = 'after-it'",
    );
    wait_for(
        &mut m3su,
        "SELECT last_error LIKE '%role \"control_only\", does not exist on this node%' \
           FROM reaper.worker_status() WHERE policy = 'owned-elsewhere'",
    );
    // Said once in the member's server log, however often the worker tries it since.
    let said_once = |m: &Cluster, su: &mut Client, policy: &str| {
        wait_for(
            su,
            &format!("SELECT runs >= 3 FROM reaper.worker_status() WHERE policy = '{policy}'"),
        );
        let said = format!("pg_reaper: policy \"{policy}\" failed");
        assert_eq!(m.server_log().matches(&said).count(), 1, "{said}");
    };
    said_once(m3, &mut m3su, "owned-elsewhere");
    // The role a policy was written for is each node's own: the control's oid does not travel.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM reaper.policies \
              WHERE name = 'owned-elsewhere' AND owner_oid = 'control_only'::regrole"
        ),
        1
    );
    assert_eq!(
        count(
            &mut m3su,
            "SELECT count(*) FROM reaper.policies \
              WHERE name = 'owned-elsewhere' AND owner_oid IS NULL"
        ),
        1
    );

    // Nor does a policy this member's major refuses (an io worker is 18's; written on the
    // control past its trigger, as a newer control would accept it).
    c.batch_execute(
        "SET session_replication_role = replica; \
         INSERT INTO reaper.policies (name, filter, run_every) VALUES \
           ('io-workers', '{\"backend_type\": \"io worker\"}', '200 ms'); \
         RESET session_replication_role; \
         INSERT INTO reaper.policies (name, filter) VALUES ('after-that', '{\"application_name\": \"nobody\"}')",
    )
    .unwrap();
    wait_replicated(
        &mut m3su,
        "SELECT count(*) = 1 FROM reaper.policies WHERE name = 'after-that'",
    );
    if server_major() < 18 {
        wait_for(
            &mut m3su,
            "SELECT last_error LIKE 'its filter is invalid%' \
               FROM reaper.worker_status() WHERE policy = 'io-workers'",
        );
        said_once(m3, &mut m3su, "io-workers");
    }
}

#[test]
fn a_members_dump_restores_with_the_recipe_and_its_log_published_again() {
    let member = node("m-dump");
    let mut su = member.superuser();
    su.batch_execute(
        "CREATE PUBLICATION reaper_log FOR TABLE reaper.log WITH (publish = 'insert')",
    )
    .unwrap();
    let out = as_postgres(
        "pg_dump",
        &[
            "-h",
            member.dir.to_str().unwrap(),
            "-p",
            &member.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ],
    );
    let dump = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(dump.contains("CREATE PUBLICATION reaper_log"), "{dump}");
    // Before 18, pg_dump leaves out what belongs to the extension, the table's membership in
    // a publication included; 18's keeps it.
    let kept = server_major() >= 18;
    assert_eq!(dump.contains("ADD TABLE ONLY reaper.log"), kept, "{dump}");

    // The recipe: the restored node named first (its log is published under that name).
    let restored = Cluster::start_with(Options {
        create_extension: false,
        settings: vec![
            "wal_level = logical".into(),
            "pg_reaper.node_name = 'm-dump'".into(),
        ],
        ..Options::default()
    });
    let file = std::env::temp_dir().join(format!("pg_reaper_member_{}.sql", std::process::id()));
    std::fs::write(&file, &dump).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    as_postgres(
        "psql",
        &[
            "-h",
            restored.dir.to_str().unwrap(),
            "-p",
            &restored.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-f",
            file.to_str().unwrap(),
        ],
    );
    let _ = std::fs::remove_file(&file);
    let mut r = restored.superuser();
    let published = "SELECT count(*) FROM pg_publication_tables \
                     WHERE pubname = 'reaper_log' AND schemaname = 'reaper' AND tablename = 'log'";
    if !kept {
        assert_eq!(count(&mut r, published), 0, "the membership is lost");
        // The README's recipe, after a restore from a dump made before 18.
        r.batch_execute("ALTER PUBLICATION reaper_log ADD TABLE reaper.log")
            .unwrap();
    }
    assert_eq!(count(&mut r, published), 1);
}

#[test]
fn members_on_two_majors_follow_one_control() {
    let test = "fleet::members_on_two_majors_follow_one_control";
    if server_major() != 17 {
        return skip(
            test,
            "runs on PostgreSQL 17, with a member on PostgreSQL 15 (make test-versions)",
        );
    }
    let Some(bin15) = std::env::var_os("PG_REAPER_UPGRADE_FROM").map(std::path::PathBuf::from)
    else {
        return skip(
            test,
            "no PostgreSQL 15 with this pg_reaper (make test-versions installs one)",
        );
    };
    let control = control();
    let m17 = node("m17");
    let m15 = Cluster::start_with(Options {
        bin_dir: Some(bin15),
        settings: vec![
            "shared_preload_libraries = 'pg_reaper'".into(),
            "wal_level = logical".into(),
            "pg_reaper.node_name = 'm15'".into(),
        ],
        ..Options::default()
    });
    m15.create_role("app", "");
    let mut c = control.superuser();
    c.batch_execute("CREATE PUBLICATION reaper_policies FOR TABLE reaper.policies")
        .unwrap();
    let members = [("m15", &m15), ("m17", &m17)];
    for (name, m) in members {
        let mut su = m.superuser();
        assert_eq!(
            count(
                &mut su,
                "SELECT current_setting('server_version_num')::int8 / 10000"
            ),
            name[1..].parse::<i64>().unwrap()
        );
        su.batch_execute(&format!(
            "CREATE SUBSCRIPTION reaper_policies_{name} CONNECTION '{}' PUBLICATION reaper_policies",
            conninfo(&control)
        ))
        .unwrap();
    }
    for (_, m) in members {
        wait_subscriptions_ready(&mut m.superuser(), 1);
    }
    let victims: Vec<(&Cluster, Session)> = members
        .iter()
        .map(|(_, m)| (*m, m.session("app", "fleet-two-majors")))
        .collect();
    // One policy both majors run; one neither accepts (an io worker is 18's), written past the
    // control's trigger as a newer control would accept it: each member skips it and says why.
    c.batch_execute(
        "SET session_replication_role = replica; \
         INSERT INTO reaper.policies (name, filter, run_every) VALUES \
           ('io-workers', '{\"backend_type\": \"io worker\"}', '200 ms'); \
         RESET session_replication_role; \
         INSERT INTO reaper.policies (name, filter, action, timeout_ms, run_every) VALUES \
           ('two-majors', '{\"application_name\": \"fleet-two-majors\"}', 'terminate', 5000, '200 ms')",
    )
    .unwrap();
    for (m, s) in &victims {
        assert!(
            m.wait_gone(s.pid),
            "the member on port {} did not enforce",
            m.port
        );
    }
    for (_, m) in members {
        wait_for(
            &mut m.superuser(),
            "SELECT last_error LIKE 'its filter is invalid%' \
               FROM reaper.worker_status() WHERE policy = 'io-workers'",
        );
    }
}
