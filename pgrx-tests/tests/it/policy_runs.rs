//! Stored policies: actions, order, disabled ones, validation, owner privileges, failures.

use pg_reaper_integration::*;
use postgres::SimpleQueryMessage;

fn run_policies(client: &mut Client) -> Vec<Row> {
    call(client, "reaper.run_policies()", "").expect("run_policies")
}

fn insert_policy(client: &mut Client, name: &str, filter: &str, rest: &str) {
    client
        .execute(
            &format!(
                "INSERT INTO reaper.policies (name, filter{}) VALUES ($1, $2::text::jsonb{})",
                if rest.is_empty() {
                    ""
                } else {
                    ", action, timeout_ms, grace_ms, owner"
                },
                if rest.is_empty() {
                    String::new()
                } else {
                    format!(", {rest}")
                }
            ),
            &[&name, &filter],
        )
        .unwrap_or_else(|e| panic!("insert {name}: {e}"));
}

#[test]
fn each_action_runs_in_name_order_and_disabled_policies_do_nothing() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let cancel_me = cluster.session("app", "p_cancel").busy(&cluster);
    let terminate_me = cluster.session("app", "p_terminate");
    let escalate_me = cluster.session("app", "p_escalate").idle_in_transaction();
    let disabled_target = cluster.session("app", "p_disabled");
    let mut su = cluster.superuser();
    insert_policy(
        &mut su,
        "b-terminate",
        r#"{"application_name": "p_terminate"}"#,
        "'terminate', 5000, 0, 'postgres'",
    );
    insert_policy(
        &mut su,
        "a-cancel",
        r#"{"application_name": "p_cancel"}"#,
        "'cancel', 0, 0, 'postgres'",
    );
    insert_policy(
        &mut su,
        "c-escalate",
        r#"{"application_name": "p_escalate", "state": "idle in transaction"}"#,
        "'cancel_then_terminate', 5000, 200, 'postgres'",
    );
    insert_policy(
        &mut su,
        "d-disabled",
        r#"{"application_name": "p_disabled"}"#,
        "",
    );
    su.batch_execute("UPDATE reaper.policies SET enabled = false WHERE name = 'd-disabled'")
        .unwrap();

    let rows = run_policies(&mut su);
    let policies: Vec<&str> = rows.iter().map(|r| r.policy.as_deref().unwrap()).collect();
    assert_eq!(policies, vec!["a-cancel", "b-terminate", "c-escalate"]);
    let outcomes: Vec<&str> = rows.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes, vec!["cancelled", "terminated", "terminated"]);
    assert_eq!(cancel_me.1.wait(), Ended::Error("57014".into()));
    assert_eq!(cancel_me.0.run("SELECT 1"), Ended::Ok);
    assert!(!cluster.alive(terminate_me.pid));
    assert!(!cluster.alive(escalate_me.pid));
    assert_eq!(disabled_target.run("SELECT 1"), Ended::Ok);

    // run_policy runs one, by name; a disabled one is skipped.
    let again = cluster.session("app", "p_terminate");
    let rows = call(&mut su, "reaper.run_policy('b-terminate')", "").unwrap();
    assert_eq!(pids(&rows), vec![again.pid]);
    assert_eq!(rows[0].policy.as_deref(), Some("b-terminate"));
    assert!(call(&mut su, "reaper.run_policy('d-disabled')", "")
        .unwrap()
        .is_empty());
    assert_eq!(disabled_target.run("SELECT 1"), Ended::Ok);
}

#[test]
fn invalid_policies_are_refused() {
    let cluster = Cluster::start();
    let mut su = cluster.superuser();
    for (sql, needle) in [
        (
            "INSERT INTO reaper.policies (name, filter) VALUES ('x', '{\"aplication_name\": \"a\"}')",
            "did you mean \"application_name\"",
        ),
        ("INSERT INTO reaper.policies (name, filter) VALUES ('x', '{}')", "no criterion"),
        (
            "INSERT INTO reaper.policies (name, filter, action) VALUES ('x', '{\"all\": true}', 'kill')",
            "unknown policy action",
        ),
        (
            "INSERT INTO reaper.policies (name, filter, timeout_ms) VALUES ('x', '{\"all\": true}', -1)",
            "must not be negative",
        ),
    ] {
        let err = su.batch_execute(sql).unwrap_err();
        let db = err.as_db_error().unwrap();
        assert_eq!(db.code().code(), "22023", "{sql}");
        assert!(db.message().contains(needle), "{sql}: {}", db.message());
    }
    su.batch_execute(
        "INSERT INTO reaper.policies (name, filter) VALUES ('ok', '{\"usename\": \"a\"}')",
    )
    .unwrap();
    let err = su
        .batch_execute("UPDATE reaper.policies SET filter = '{\"usename\": 1}' WHERE name = 'ok'")
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22023"));
    let normalized: String = su
        .query_one(
            "SELECT reaper.validate_filter('{\"min_state_age\": \"1 min\", \"all\": true}')::text",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        normalized,
        r#"{"all": true, "order": "oldest_backend", "min_state_age": 60000, "include_protected": false, "include_superusers": false}"#
    );
}

#[test]
fn a_policy_signals_with_its_owners_privileges() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    cluster.create_role("weak", "");
    cluster.create_role("ops", "IN ROLE pg_signal_backend, pg_read_all_stats");
    let protected = cluster.session("app", "o_weak");
    let target = cluster.session("app", "o_ops");
    let mut su = cluster.superuser();
    insert_policy(
        &mut su,
        "weak-owned",
        r#"{"application_name": "o_weak"}"#,
        "'terminate', 2000, 0, 'weak'",
    );
    insert_policy(
        &mut su,
        "ops-owned",
        r#"{"application_name": "o_ops"}"#,
        "'terminate', 2000, 0, 'ops'",
    );
    // Run by a superuser, as pg_cron would.
    let rows = run_policies(&mut su);
    let by_policy = |p: &str| {
        rows.iter()
            .find(|r| r.policy.as_deref() == Some(p))
            .unwrap()
            .clone()
    };
    let weak = by_policy("weak-owned");
    assert_eq!(weak.outcome, "denied");
    assert!(weak.detail.unwrap().contains("pg_signal_backend"));
    assert_eq!(protected.run("SELECT 1"), Ended::Ok);
    assert_eq!(by_policy("ops-owned").outcome, "terminated");
    assert!(!cluster.alive(target.pid));
    let run_as: Vec<String> = su
        .query("SELECT run_as FROM reaper.log ORDER BY policy DESC", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(run_as, vec!["weak", "ops"]);
}

#[test]
fn nobody_writes_a_policy_for_a_role_they_are_not_a_member_of() {
    let cluster = Cluster::start();
    cluster.create_role("mallory", "");
    cluster.create_role("ops", "IN ROLE pg_signal_backend");
    let mut su = cluster.superuser();
    su.batch_execute("GRANT INSERT, UPDATE, SELECT ON reaper.policies TO mallory")
        .unwrap();
    insert_policy(
        &mut su,
        "ops-policy",
        r#"{"usename": "app"}"#,
        "'terminate', 0, 0, 'ops'",
    );
    let mut mallory = cluster.connect("mallory");
    let forged = mallory.batch_execute(
        "INSERT INTO reaper.policies (name, filter, owner) VALUES ('forged', '{\"all\": true}', 'ops')",
    );
    assert_eq!(forged.unwrap_err().code().map(|c| c.code()), Some("42501"));
    let hijack = mallory.batch_execute(
        "UPDATE reaper.policies SET filter = '{\"all\": true}' WHERE name = 'ops-policy'",
    );
    assert_eq!(hijack.unwrap_err().code().map(|c| c.code()), Some("42501"));
    let steal = mallory
        .batch_execute("UPDATE reaper.policies SET owner = 'mallory' WHERE name = 'ops-policy'");
    assert_eq!(steal.unwrap_err().code().map(|c| c.code()), Some("42501"));
    // Their own policy is fine, and defaults to them.
    mallory
        .batch_execute("INSERT INTO reaper.policies (name, filter) VALUES ('mine', '{\"usename\": \"mallory\"}')")
        .unwrap();
    let owner: String = su
        .query_one(
            "SELECT owner::text FROM reaper.policies WHERE name = 'mine'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(owner, "mallory");
    // PUBLIC has no rights on the table.
    cluster.create_role("nobody", "");
    let err = cluster
        .connect("nobody")
        .batch_execute("SELECT * FROM reaper.policies")
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
}

#[test]
fn a_failing_policy_warns_logs_and_stops_no_other() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    cluster.create_role("gone", "");
    let target = cluster.session("app", "f_target");
    let mut su = cluster.superuser();
    insert_policy(
        &mut su,
        "a-orphan",
        r#"{"all": true}"#,
        "'terminate', 0, 0, 'gone'",
    );
    insert_policy(
        &mut su,
        "b-works",
        r#"{"application_name": "f_target"}"#,
        "'terminate', 2000, 0, 'postgres'",
    );
    su.batch_execute("DROP ROLE gone").unwrap();

    let messages = su
        .simple_query("SELECT policy, pid, outcome FROM reaper.run_policies()")
        .unwrap();
    let rows: Vec<(String, String)> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((r.get(0).unwrap().to_string(), r.get(2).unwrap().to_string()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        rows,
        vec![("b-works".to_string(), "terminated".to_string())]
    );
    assert!(!cluster.alive(target.pid));
    assert!(cluster
        .server_log()
        .contains("WARNING:  pg_reaper: policy \"a-orphan\" failed"));
    let failed: (String, String) = {
        let r = su
            .query_one(
                "SELECT outcome, detail FROM reaper.log WHERE policy = 'a-orphan'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(failed.0, "failed");
    assert!(
        failed.1.contains("does not exist on this node"),
        "{}",
        failed.1
    );
}

#[test]
fn only_members_of_the_owner_may_run_a_policy() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    cluster.create_role("intern", "");
    let target = cluster.session("app", "r_target");
    let mut su = cluster.superuser();
    insert_policy(
        &mut su,
        "su-owned",
        r#"{"application_name": "r_target"}"#,
        "'terminate', 0, 0, 'postgres'",
    );
    su.batch_execute("GRANT SELECT ON reaper.policies TO intern")
        .unwrap();
    // The intern can read the policy, but running it would lend them the owner's rights.
    let mut intern = cluster.connect("intern");
    assert!(call(&mut intern, "reaper.run_policies()", "")
        .unwrap()
        .is_empty());
    assert_eq!(target.run("SELECT 1"), Ended::Ok);
    assert!(cluster.server_log().contains(
        r#"policy "su-owned" failed (it signalled nothing): role "intern" may not run it"#
    ));
    let failed = count(
        &mut su,
        "SELECT count(*) FROM reaper.log WHERE outcome = 'failed' AND caller = 'intern'",
    );
    assert_eq!(failed, 1);
    // Its owner (here a superuser, as under pg_cron) may.
    assert_eq!(
        call(&mut su, "reaper.run_policies()", "").unwrap()[0].outcome,
        "signalled"
    );
    assert!(cluster.wait_gone(target.pid));
}

#[test]
fn a_policy_failure_warning_carries_its_sqlstate() {
    let cluster = Cluster::start();
    cluster.create_role("owner_gone", "");
    cluster.create_role("intern", "");
    let mut su = cluster.superuser();
    insert_policy(
        &mut su,
        "a-orphan",
        r#"{"application_name": "nobody"}"#,
        "'terminate', 0, 0, 'owner_gone'",
    );
    su.batch_execute(
        "ALTER TABLE reaper.policies DISABLE TRIGGER policies_check; \
         INSERT INTO reaper.policies (name, filter, owner) \
           VALUES ('b-bad-filter', '{\"aplication_name\": \"x\"}', 'intern'); \
         ALTER TABLE reaper.policies ENABLE TRIGGER policies_check; \
         REASSIGN OWNED BY owner_gone TO postgres; DROP OWNED BY owner_gone; DROP ROLE owner_gone",
    )
    .unwrap();
    insert_policy(
        &mut su,
        "c-su-owned",
        r#"{"application_name": "nobody"}"#,
        "'terminate', 0, 0, 'postgres'",
    );
    su.batch_execute(
        "GRANT SELECT ON reaper.policies TO intern; GRANT INSERT ON reaper.log TO intern",
    )
    .unwrap();
    let (mut intern, notices) = cluster.collecting_client("intern");
    assert!(call(&mut intern, "reaper.run_policies()", "")
        .unwrap()
        .is_empty());
    let notices = notices.lock().unwrap().clone();
    let codes: Vec<&str> = notices
        .iter()
        .filter(|n| n.starts_with("WARNING"))
        .map(|n| &n[8..13])
        .collect();
    // Undefined owner, invalid filter, not allowed to act as the owner.
    assert_eq!(codes, vec!["42704", "22023", "42501"], "{notices:?}");
}

#[test]
fn only_what_a_policy_can_cause_is_caught_internal_errors_are_not() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let mut su = cluster.superuser();
    let tag = tag("internal");
    insert_policy(
        &mut su,
        "p-internal",
        &format!(r#"{{"application_name": "{tag}"}}"#),
        "",
    );
    // A trigger on the audit table stands in for a fault inside the run: an internal error, then
    // an out-of-memory error, then an ordinary one.
    for (code, fatal) in [("XX000", true), ("53200", true), ("22012", false)] {
        let victim = cluster.session("app", &tag);
        su.batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION public.fault() RETURNS trigger LANGUAGE plpgsql \
               AS $$BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{code}'; END$$; \
             DROP TRIGGER IF EXISTS fault ON reaper.log; \
             CREATE TRIGGER fault BEFORE INSERT ON reaper.log \
               FOR EACH STATEMENT EXECUTE FUNCTION public.fault()"
        ))
        .unwrap();
        let (mut me, notices) = cluster.collecting_client("postgres");
        let result = call(&mut me, "reaper.run_policies()", "");
        if fatal {
            let err = result.unwrap_err();
            assert_eq!(sqlstate(&err), Some(code), "{err}");
        } else {
            let rows = result.unwrap();
            assert_eq!(rows.len(), 1, "{rows:?}");
            assert_eq!(rows[0].policy.as_deref(), Some("p-internal"));
            assert_eq!(rows[0].outcome, "signalled");
        }
        // Either way the victim was signalled, and a WARNING said so.
        assert!(cluster.wait_gone(victim.pid), "{code}");
        let notices = notices.lock().unwrap().clone();
        assert!(
            notices
                .iter()
                .any(|n| n.contains("1 of 1 backends were signalled")),
            "{code}: {notices:?}"
        );
    }
}

#[test]
fn acting_as_a_policys_owner_means_what_set_role_means() {
    // From PostgreSQL 16 a membership can be granted WITH SET FALSE: the member inherits the
    // owner's privileges but may not SET ROLE to it, so it may neither write nor run a policy
    // owned by that role. Before 16 every membership allowed SET ROLE.
    let cluster = Cluster::start();
    cluster.create_role("owner", "IN ROLE pg_signal_backend");
    cluster.create_role("helper", "");
    cluster.create_role("app", "");
    let mut su = cluster.superuser();
    let set_option = server_major() >= 16;
    let grant = if set_option {
        "GRANT owner TO helper WITH SET FALSE"
    } else {
        "GRANT owner TO helper"
    };
    su.batch_execute(&format!(
        "{grant}; GRANT SELECT, INSERT, UPDATE ON reaper.policies TO helper"
    ))
    .unwrap();
    let mut helper = cluster.connect("helper");
    let can_set_role = helper.batch_execute("SET ROLE owner; RESET ROLE").is_ok();
    assert_eq!(can_set_role, !set_option, "SET ROLE itself");

    let tag = tag("set_option");
    let victim = cluster.session("app", &tag);
    let write = helper.execute(
        "INSERT INTO reaper.policies (name, filter, owner) VALUES ('by-helper', $1::text::jsonb, 'owner')",
        &[&format!(r#"{{"application_name": "{tag}"}}"#)],
    );
    assert_eq!(write.is_ok(), can_set_role, "writing: {write:?}");
    if !can_set_role {
        assert_eq!(sqlstate(&write.unwrap_err()), Some("42501"));
        insert_policy(
            &mut su,
            "by-helper",
            &format!(r#"{{"application_name": "{tag}"}}"#),
            "'terminate', 0, 0, 'owner'",
        );
    }
    let (mut helper, notices) = cluster.collecting_client("helper");
    let rows = call(&mut helper, "reaper.run_policy('by-helper')", "").unwrap();
    if can_set_role {
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert!(cluster.wait_gone(victim.pid));
    } else {
        assert!(rows.is_empty(), "{rows:?}");
        let notices = notices.lock().unwrap().clone();
        assert!(
            notices.iter().any(|n| n.starts_with("WARNING 42501: ")
                && n.contains("may not run it: only roles that may SET ROLE to its owner")),
            "{notices:?}"
        );
        assert_eq!(victim.run("SELECT 1"), Ended::Ok);
    }
}

/// The detail of the `failed` row a policy's last run left in reaper.log.
fn last_failure(su: &mut Client, policy: &str) -> String {
    su.query_one(
        "SELECT detail FROM reaper.log WHERE policy = $1 AND outcome = 'failed' \
          ORDER BY id DESC LIMIT 1",
        &[&policy],
    )
    .unwrap()
    .get(0)
}

#[test]
fn a_policy_stays_with_the_role_it_was_written_for() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    cluster.create_role("ops", "IN ROLE pg_signal_backend");
    let target = cluster.session("app", "owned_target");
    let mut su = cluster.superuser();
    insert_policy(
        &mut su,
        "owned",
        r#"{"application_name": "owned_target"}"#,
        "'terminate', 2000, 0, 'ops'",
    );
    let written: u32 = su
        .query_one(
            "SELECT owner_oid FROM reaper.policies WHERE name = 'owned'",
            &[],
        )
        .unwrap()
        .get(0);
    let ops: u32 = su
        .query_one("SELECT 'ops'::regrole::oid", &[])
        .unwrap()
        .get(0);
    assert_eq!(written, ops);
    // Whatever a writer puts there, the trigger keeps this node's role.
    su.batch_execute("UPDATE reaper.policies SET owner_oid = 1 WHERE name = 'owned'")
        .unwrap();
    assert_eq!(
        count(
            &mut su,
            "SELECT count(*) FROM reaper.policies WHERE owner_oid = 'ops'::regrole"
        ),
        1
    );

    // Renamed: the name is nobody's; the failure says what the role is called now.
    su.batch_execute("ALTER ROLE ops RENAME TO ops_renamed")
        .unwrap();
    let _ = call(&mut su, "reaper.run_policies()", "");
    let detail = last_failure(&mut su, "owned");
    assert!(
        detail.contains("does not exist on this node (the role it was written for is now named \"ops_renamed\")"),
        "{detail}"
    );
    assert!(cluster.alive(target.pid));

    // Dropped, and another role takes the name: refused, not handed to it.
    su.batch_execute("DROP ROLE ops_renamed; CREATE ROLE ops IN ROLE pg_signal_backend")
        .unwrap();
    let _ = call(&mut su, "reaper.run_policies()", "");
    let detail = last_failure(&mut su, "owned");
    assert!(
        detail.contains("is not the role the policy was written for on this node"),
        "{detail}"
    );
    assert!(cluster.alive(target.pid));
    // Writing the same name again changes nothing; owner_oid = NULL gives it to the new role.
    su.batch_execute("UPDATE reaper.policies SET owner = 'ops' WHERE name = 'owned'")
        .unwrap();
    let _ = call(&mut su, "reaper.run_policies()", "");
    assert!(cluster.alive(target.pid));
    su.batch_execute("UPDATE reaper.policies SET owner_oid = NULL WHERE name = 'owned'")
        .unwrap();
    let rows = call(&mut su, "reaper.run_policies()", "").unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].outcome, "terminated");
    assert!(!cluster.alive(target.pid));

    // A policy whose owner is gone can still be disabled; nothing else keeps the dead name.
    su.batch_execute("DROP ROLE ops").unwrap();
    su.batch_execute("UPDATE reaper.policies SET enabled = false WHERE name = 'owned'")
        .unwrap();
    let err = su
        .batch_execute("UPDATE reaper.policies SET enabled = true WHERE name = 'owned'")
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42704"), "{err}");
    let err = su
        .batch_execute(
            "INSERT INTO reaper.policies (name, filter, owner) VALUES ('x', '{\"all\": true}', 'nobody_by_that_name')",
        )
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42704"), "{err}");
    let message = err.as_db_error().unwrap().message();
    assert!(
        message.contains("its owner, role \"nobody_by_that_name\", does not exist"),
        "{message}"
    );
    // A name in double quotes is a 0.6.0 control's form of a role name, not a name.
    su.batch_execute("CREATE ROLE \"\"\"quoted\"\"\"").unwrap();
    let err = su
        .batch_execute(
            "INSERT INTO reaper.policies (name, filter, owner) VALUES ('q', '{\"all\": true}', '\"quoted\"')",
        )
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("22023"), "{err:?}");
}

/// Renaming a policy's owner does not open the policy to writers who may not act for that role,
/// and a policy whose owner is gone may be disabled, but not rewritten while it is.
#[test]
fn a_renamed_or_dropped_owner_does_not_open_the_policy_to_other_writers() {
    let cluster = Cluster::start();
    cluster.create_role("alice", "IN ROLE pg_signal_backend");
    cluster.create_role("mallory", "");
    let mut su = cluster.superuser();
    su.batch_execute("GRANT SELECT, UPDATE ON reaper.policies TO mallory")
        .unwrap();
    insert_policy(
        &mut su,
        "alices",
        r#"{"application_name": "alices_target"}"#,
        "'terminate', 0, 0, 'alice'",
    );
    su.batch_execute("ALTER ROLE alice RENAME TO alice_tmp")
        .unwrap();
    let mut m = cluster.connect("mallory");
    for change in [
        "UPDATE reaper.policies SET owner = 'mallory' WHERE name = 'alices'",
        "UPDATE reaper.policies SET enabled = false, filter = '{\"all\": true}' WHERE name = 'alices'",
    ] {
        let err = m.batch_execute(change).unwrap_err();
        assert_eq!(sqlstate(&err), Some("42501"), "{change}: {err:?}");
        let message = err.as_db_error().unwrap().message();
        assert!(
            message.contains("permission denied to change policy \"alices\" owned by role alice_tmp"),
            "{message}"
        );
    }
    su.batch_execute("DROP ROLE alice_tmp").unwrap();
    let err = m
        .batch_execute(
            "UPDATE reaper.policies SET enabled = false, filter = '{\"all\": true}' WHERE name = 'alices'",
        )
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42704"), "{err:?}");
    m.batch_execute("UPDATE reaper.policies SET enabled = false WHERE name = 'alices'")
        .unwrap();
    assert_eq!(
        count(
            &mut su,
            "SELECT count(*) FROM reaper.policies \
              WHERE name = 'alices' AND NOT enabled AND filter = '{\"application_name\": \"alices_target\"}'"
        ),
        1
    );
}
