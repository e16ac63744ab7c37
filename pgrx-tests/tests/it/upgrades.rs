//! Upgrades. In place: every earlier release, built from its tag, installed on a private copy
//! of Debian's PostgreSQL 15 with policies and audit rows in it, then this tree's version
//! installed beside it and `ALTER EXTENSION pg_reaper UPDATE`: the catalog equals a fresh
//! `CREATE EXTENSION`, and every policy and log row is kept. Across majors: `pg_upgrade` from 15
//! to 17 with pg_reaper in use, after which it works on the new server.

use pg_reaper_integration::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Everything a DBA or pg_dump could tell apart in the extension's objects, one line each:
/// functions (signature, result, volatility, parallel safety, strictness, security, settings,
/// source, privileges, comment), tables and their columns (in order, types, defaults, NOT NULL,
/// comments, privileges), indexes, constraints, triggers, the schema, the config-dump entries.
/// Privileges are compared as what roles other than the owner hold (17 added MAINTAIN to an
/// owner's default, so the owner's own acl entry reads differently across majors).
const CATALOG: &str = r#"
WITH ext AS (SELECT e.oid, e.extconfig, e.extcondition FROM pg_catalog.pg_extension e
              WHERE e.extname OPERATOR(pg_catalog.=) 'pg_reaper'),
     member AS (SELECT d.classid, d.objid FROM pg_catalog.pg_depend d, ext
                 WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
                   AND d.refobjid OPERATOR(pg_catalog.=) ext.oid AND d.deptype OPERATOR(pg_catalog.=) 'e'),
     rel AS (SELECT c.oid FROM pg_catalog.pg_class c JOIN member m ON m.objid OPERATOR(pg_catalog.=) c.oid
              WHERE m.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass)
SELECT line FROM (
  SELECT pg_catalog.format('function %s returns %s volatile=%s parallel=%s strict=%s secdef=%s config=%s lang=%s src=%s bin=%s acl=%s comment=%s',
           p.oid::pg_catalog.regprocedure, pg_catalog.pg_get_function_result(p.oid), p.provolatile,
           p.proparallel, p.proisstrict, p.prosecdef, p.proconfig, l.lanname,
           pg_catalog.md5(p.prosrc), p.probin,
           (SELECT pg_catalog.string_agg(a.grantee::pg_catalog.regrole::pg_catalog.text || ':' || a.privilege_type, ',' ORDER BY 1)
              FROM pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) a
             WHERE a.grantee OPERATOR(pg_catalog.<>) p.proowner),
           pg_catalog.obj_description(p.oid, 'pg_proc')) AS line
    FROM pg_catalog.pg_proc p JOIN member m ON m.objid OPERATOR(pg_catalog.=) p.oid
    JOIN pg_catalog.pg_language l ON l.oid OPERATOR(pg_catalog.=) p.prolang
   WHERE m.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
  UNION ALL
  SELECT pg_catalog.format('relation %s kind=%s acl=%s comment=%s', c.oid::pg_catalog.regclass, c.relkind,
           (SELECT pg_catalog.string_agg(a.grantee::pg_catalog.regrole::pg_catalog.text || ':' || a.privilege_type, ',' ORDER BY 1)
              FROM pg_catalog.aclexplode(coalesce(c.relacl, pg_catalog.acldefault('r', c.relowner))) a
             WHERE a.grantee OPERATOR(pg_catalog.<>) c.relowner),
           pg_catalog.obj_description(c.oid, 'pg_class'))
    FROM pg_catalog.pg_class c JOIN rel ON rel.oid OPERATOR(pg_catalog.=) c.oid
  UNION ALL
  SELECT pg_catalog.format('column %s.%s #%s %s notnull=%s default=%s acl=%s comment=%s', a.attrelid::pg_catalog.regclass,
           a.attname, a.attnum, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
           pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), a.attacl, pg_catalog.col_description(a.attrelid, a.attnum))
    FROM pg_catalog.pg_attribute a JOIN rel ON rel.oid OPERATOR(pg_catalog.=) a.attrelid
    LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid OPERATOR(pg_catalog.=) a.attrelid AND ad.adnum OPERATOR(pg_catalog.=) a.attnum
   WHERE a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
  UNION ALL
  SELECT pg_catalog.format('index %s', pg_catalog.pg_get_indexdef(i.indexrelid))
    FROM pg_catalog.pg_index i JOIN rel ON rel.oid OPERATOR(pg_catalog.=) i.indrelid
  UNION ALL
  SELECT pg_catalog.format('constraint %s.%s %s', co.conrelid::pg_catalog.regclass, co.conname, pg_catalog.pg_get_constraintdef(co.oid))
    FROM pg_catalog.pg_constraint co JOIN rel ON rel.oid OPERATOR(pg_catalog.=) co.conrelid
  UNION ALL
  SELECT pg_catalog.format('trigger %s enabled=%s', pg_catalog.pg_get_triggerdef(t.oid), t.tgenabled)
    FROM pg_catalog.pg_trigger t JOIN rel ON rel.oid OPERATOR(pg_catalog.=) t.tgrelid WHERE NOT t.tgisinternal
  UNION ALL
  SELECT pg_catalog.format('event trigger %s on %s tags=%s enabled=%s function=%s', e.evtname, e.evtevent,
           e.evttags, e.evtenabled, e.evtfoid::pg_catalog.regprocedure)
    FROM pg_catalog.pg_event_trigger e
  UNION ALL
  SELECT pg_catalog.format('schema %s acl=%s comment=%s', n.nspname,
           (SELECT pg_catalog.string_agg(a.grantee::pg_catalog.regrole::pg_catalog.text || ':' || a.privilege_type, ',' ORDER BY 1)
              FROM pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))) a
             WHERE a.grantee OPERATOR(pg_catalog.<>) n.nspowner),
           pg_catalog.obj_description(n.oid, 'pg_namespace'))
    FROM pg_catalog.pg_namespace n WHERE n.nspname OPERATOR(pg_catalog.=) 'reaper'
  UNION ALL
  SELECT pg_catalog.format('config-dump %s where=%s', cfg.rel::pg_catalog.regclass, cfg.cond)
    FROM ext, LATERAL ROWS FROM (pg_catalog.unnest(ext.extconfig), pg_catalog.unnest(ext.extcondition)) AS cfg(rel, cond)
  UNION ALL
  SELECT pg_catalog.format('member %s', pg_catalog.pg_describe_object(m.classid, m.objid, 0)) FROM member m
) described ORDER BY line"#;

/// The columns of reaper.policies and reaper.log, as a select list each.
fn columns(client: &mut Client) -> (String, String) {
    let mut of = |table: &str| -> String {
        client
            .query_one(
                "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute \
                  WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped",
                &[&table],
            )
            .unwrap()
            .get(0)
    };
    (of("reaper.policies"), of("reaper.log"))
}

/// The rows that must survive an upgrade, as text, in the given columns (those before the
/// upgrade: it may add columns, whose defaults are checked apart).
fn data(client: &mut Client, (policies, log): &(String, String)) -> String {
    let sql = format!(
        "SELECT (SELECT coalesce(pg_catalog.string_agg(ROW({policies})::text, E'\\n' ORDER BY name), '') \
                   FROM reaper.policies) || E'\\n--\\n' || \
                (SELECT coalesce(pg_catalog.string_agg(ROW({log})::text, E'\\n' ORDER BY logged_at, pid), '') \
                   FROM reaper.log)"
    );
    client.query_one(&sql, &[]).unwrap().get(0)
}

fn lines(client: &mut Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A private, relocated copy of Debian's PostgreSQL 15 (its programs find their libraries and
/// extension files relative to themselves), with no pg_reaper in it.
fn private_postgres_15(dir: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    for part in ["usr/lib/postgresql", "usr/share/postgresql"] {
        std::fs::create_dir_all(dir.join(part)).unwrap();
        let status = Command::new("cp")
            .arg("-a")
            .arg(Path::new("/").join(part).join("15"))
            .arg(dir.join(part))
            .status()
            .unwrap();
        assert!(status.success(), "copy {part}");
    }
    remove_pg_reaper(dir);
    let status = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
    dir.join("usr/lib/postgresql/15/bin")
}

fn remove_pg_reaper(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("usr/lib/postgresql/15/lib/pg_reaper.so"));
    let ext = dir.join("usr/share/postgresql/15/extension");
    for entry in std::fs::read_dir(&ext).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("pg_reaper")
        {
            std::fs::remove_file(path).unwrap();
        }
    }
}

/// Copies a `cargo pgrx package` (or .deb staging) tree's pg_reaper files into `dir`, over
/// whatever version is there (the old scripts stay, as a package upgrade leaves them). Each
/// file is written beside its place and renamed into it, as dpkg does: a running server keeps
/// the library it mapped (overwriting that file in place would change code under it).
fn install_from(tree: &Path, dir: &Path) {
    let replace = |from: &Path, to: &Path| {
        let new = to.with_extension("dpkg-new");
        std::fs::copy(from, &new).unwrap();
        std::fs::rename(&new, to).unwrap();
    };
    let lib = "usr/lib/postgresql/15/lib/pg_reaper.so";
    replace(&tree.join(lib), &dir.join(lib));
    let ext = "usr/share/postgresql/15/extension";
    for entry in std::fs::read_dir(tree.join(ext)).unwrap() {
        let path = entry.unwrap().path();
        replace(&path, &dir.join(ext).join(path.file_name().unwrap()));
    }
    let status = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Policies and audit rows made by the running version itself: a terminated session, a
/// cancel_then_terminate, a failed policy.
fn make_history(cluster: &Cluster, su: &mut Client) {
    cluster.create_role("app", "");
    cluster.create_role("ops", "IN ROLE pg_signal_backend, pg_read_all_stats");
    su.batch_execute(
        "INSERT INTO reaper.policies (name, filter, action, timeout_ms, grace_ms, owner, note) VALUES \
           ('idle-tx', '{\"state\": \"idle in transaction\", \"application_name\": \"upgrade_victim\"}', \
            'terminate', 5000, 0, 'ops', 'kept across upgrades'), \
           ('reports', '{\"application_name\": {\"regex\": \"^report\"}, \"min_query_age\": \"1 hour\"}', \
            'cancel_then_terminate', 5000, 2000, 'ops', NULL), \
           ('off', '{\"usename\": \"nobody\"}', 'cancel', 0, 0, 'ops', 'disabled'); \
         UPDATE reaper.policies SET enabled = false WHERE name = 'off'",
    )
    .unwrap();
    let victim = cluster
        .session("app", "upgrade_victim")
        .idle_in_transaction();
    let rows = call(su, "reaper.run_policies()", "").unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(cluster.wait_gone(victim.pid));
    let other = cluster.session("app", "upgrade_other");
    terminate(su, r#"{"application_name": "upgrade_other"}"#, 5000);
    assert!(cluster.wait_gone(other.pid));
    // A policy whose owner is gone leaves a `failed` row.
    cluster.create_role("gone", "");
    su.batch_execute(
        "INSERT INTO reaper.policies (name, filter, owner) VALUES ('orphan', '{\"usename\": \"nobody\"}', 'gone'); \
         DROP ROLE gone",
    )
    .unwrap();
    let _ = call(su, "reaper.run_policies()", "");
    let logged = count(su, "SELECT count(*) FROM reaper.log");
    assert!(logged >= 3, "{logged} log rows");
}

fn current_tree(test: &str) -> Option<(PathBuf, PathBuf)> {
    let releases = std::env::var_os("PG_REAPER_RELEASES");
    let deb = std::env::var_os("PG_REAPER_DEB");
    if server_major() != 15 {
        skip(
            test,
            "the earlier releases support PostgreSQL 15 only; they are upgraded there",
        );
        return None;
    }
    match (releases, deb) {
        (Some(r), Some(d)) => {
            // The package's staging root: this tree's release build, without test settings.
            let root = PathBuf::from(d).parent().unwrap().join("root");
            Some((PathBuf::from(r), root))
        }
        _ => {
            skip(test, "the releases and the package are built by make test");
            None
        }
    }
}

#[test]
fn every_earlier_release_upgrades_in_place_to_a_fresh_install() {
    let test = "upgrades::every_earlier_release_upgrades_in_place_to_a_fresh_install";
    let Some((releases, current)) = current_tree(test) else {
        return;
    };
    let listed =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("releases.txt"))
            .unwrap();
    let versions: Vec<&str> = listed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert!(versions.len() >= 2, "{versions:?}");
    let target = pg_reaper_version();
    let mut report = String::new();
    for version in versions {
        let dir = PathBuf::from(format!(
            "/tmp/pg_reaper_upgrade_{}_{version}",
            std::process::id()
        ));
        let bin = private_postgres_15(&dir);
        install_from(&releases.join(version).join("pkg"), &dir);
        let cluster = Cluster::start_with(Options {
            bin_dir: Some(bin),
            create_extension: false,
            ..Options::default()
        });
        let mut su = cluster.superuser();
        su.batch_execute(&format!("CREATE EXTENSION pg_reaper VERSION '{version}'"))
            .unwrap();
        make_history(&cluster, &mut su);
        drop(su);

        // The new version beside the old one, as a package upgrade leaves them.
        cluster.stop_server();
        install_from(&current, &dir);
        cluster.start_server();
        let mut su = cluster.superuser();
        // Until ALTER EXTENSION UPDATE, the new library serves the old SQL: pg_cron's calls
        // of the old functions go on working.
        let victim = cluster
            .session("app", "upgrade_victim")
            .idle_in_transaction();
        let rows = call(&mut su, "reaper.run_policies()", "")
            .unwrap_or_else(|e| panic!("{version}'s SQL with the new library: {e}"));
        assert_eq!(pids(&rows), vec![victim.pid], "from {version}");
        assert!(cluster.wait_gone(victim.pid));
        let other = cluster.session("app", "upgrade_other");
        assert_eq!(
            pids(&preview(
                &mut su,
                r#"{"application_name": "upgrade_other"}"#
            )),
            vec![other.pid]
        );
        drop(other);
        let old_columns = columns(&mut su);
        let before = data(&mut su, &old_columns);
        su.batch_execute("ALTER EXTENSION pg_reaper UPDATE")
            .unwrap();
        let now: String = su
            .query_one(
                "SELECT extversion FROM pg_extension WHERE extname = 'pg_reaper'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(now, target, "from {version}");
        let upgraded = lines(&mut su, CATALOG);
        let after = data(&mut su, &old_columns);
        assert_eq!(after, before, "from {version}: policies and log rows kept");
        // Columns added since (0.3.0: run_every, run_on) hold their defaults: no policy an
        // upgrade made a scheduled one.
        assert_eq!(
            count(
                &mut su,
                "SELECT count(*) FROM reaper.policies WHERE run_every IS NOT NULL OR run_on <> 'any'"
            ),
            0,
            "from {version}"
        );

        su.batch_execute("CREATE DATABASE fresh").unwrap();
        let mut fresh = cluster.connect_to("postgres", "fresh");
        fresh.batch_execute("CREATE EXTENSION pg_reaper").unwrap();
        let installed = lines(&mut fresh, CATALOG);
        assert!(upgraded.len() > 40, "{upgraded:#?}");
        let only_upgraded: Vec<&String> =
            upgraded.iter().filter(|l| !installed.contains(l)).collect();
        let only_fresh: Vec<&String> = installed.iter().filter(|l| !upgraded.contains(l)).collect();
        assert!(
            only_upgraded.is_empty() && only_fresh.is_empty(),
            "from {version}: the upgraded catalog differs from a fresh install\n\
             only after the upgrade: {only_upgraded:#?}\nonly in a fresh install: {only_fresh:#?}"
        );

        // It works: the policies run, a session is terminated.
        let victim = cluster
            .session("app", "upgrade_victim")
            .idle_in_transaction();
        let rows = call(&mut su, "reaper.run_policy('idle-tx')", "").unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].outcome, "terminated");
        assert!(cluster.wait_gone(victim.pid));
        report += &format!(
            "| {version} | {target} | {} | {} | kept |\n",
            upgraded.len(),
            before.lines().count() - 1
        );
        drop(su);
        drop(fresh);
        drop(cluster);
        let _ = std::fs::remove_dir_all(&dir);
    }
    record_figures(
        "60-upgrades",
        &format!(
            "## Upgrades in place\n\nEach earlier release built from its tag, installed on a private copy of PostgreSQL 15 with \
             policies and audit rows made by that release, then `ALTER EXTENSION pg_reaper UPDATE` to this tree's version. \
             Every catalog line (functions with their source, volatility, privileges and comments; tables, columns, defaults, \
             indexes, constraints, triggers, grants, comments, config-dump entries, members) equals a fresh \
             `CREATE EXTENSION`, and the policies and log rows are unchanged.\n\n\
             | from | to | catalog lines compared | policy and log rows | rows |\n| --- | --- | ---: | ---: | --- |\n{report}"
        ),
    );
}

#[test]
fn pg_upgrade_from_15_to_17_keeps_pg_reaper_and_its_rows() {
    let test = "upgrades::pg_upgrade_from_15_to_17_keeps_pg_reaper_and_its_rows";
    if server_major() != 17 {
        return skip(
            test,
            "runs on PostgreSQL 17, upgrading a PostgreSQL 15 cluster to it (make test-versions)",
        );
    }
    let target = pg_reaper_version();
    // A stock PostgreSQL 15 with this tree's pg_reaper (make test-versions installs it): this
    // machine's Debian 15 is a build that stores an attribute option stock 17 rejects, so
    // pg_upgrade from it fails for any table at all.
    let Some(old_bin) = std::env::var_os("PG_REAPER_UPGRADE_FROM").map(PathBuf::from) else {
        return skip(
            test,
            "no PostgreSQL 15 to upgrade from (make test-versions installs one)",
        );
    };
    let old_share = Command::new(old_bin.join("pg_config"))
        .arg("--sharedir")
        .output()
        .expect("pg_config of the old server");
    let old_control = PathBuf::from(String::from_utf8_lossy(&old_share.stdout).trim())
        .join("extension/pg_reaper.control");
    let installed = std::fs::read_to_string(&old_control).unwrap_or_default();
    assert!(
        installed.contains(&format!("default_version = '{target}'")),
        "the PostgreSQL 15 at {} has no pg_reaper {target}",
        old_bin.display()
    );
    let new_bin = PathBuf::from(pg_config_value("bindir"));

    let old = Cluster::start_with(Options {
        bin_dir: Some(old_bin.clone()),
        ..Options::default()
    });
    let mut su = old.superuser();
    make_history(&old, &mut su);
    let old_columns = columns(&mut su);
    let before = data(&mut su, &old_columns);
    drop(su);
    old.stop_server();

    // The new cluster, empty, with the same encoding and locale; then pg_upgrade, as postgres,
    // from a directory it may write its logs to.
    let work = PathBuf::from(format!("/tmp/pg_reaper_pg_upgrade_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let status = Command::new("chown")
        .arg("postgres")
        .arg(&work)
        .status()
        .unwrap();
    assert!(status.success());
    let new_data = work.join("data");
    as_postgres_from(
        &new_bin,
        "initdb",
        &[
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "-D",
            new_data.to_str().unwrap(),
        ],
    );
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(new_bin.join("pg_upgrade"))
        .arg("-b")
        .arg(&old_bin)
        .arg("-B")
        .arg(&new_bin)
        .arg("-d")
        .arg(old.data_dir())
        .arg("-D")
        .arg(&new_data)
        .args(["-U", "postgres", "-p", "50432", "-P", "50433", "--no-sync"])
        .current_dir(&work)
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "pg_upgrade failed:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let new = Cluster::start_with(Options {
        bin_dir: Some(new_bin),
        data_dir: Some(new_data),
        create_extension: false,
        ..Options::default()
    });
    let mut su = new.superuser();
    let version: String = su
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_reaper'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, target);
    let after = data(&mut su, &old_columns);
    assert_eq!(after, before, "policies and log rows kept by pg_upgrade");
    let upgraded = lines(&mut su, CATALOG);
    su.batch_execute("CREATE DATABASE fresh").unwrap();
    let mut fresh = new.connect_to("postgres", "fresh");
    fresh.batch_execute("CREATE EXTENSION pg_reaper").unwrap();
    assert_eq!(
        upgraded,
        lines(&mut fresh, CATALOG),
        "the catalog after pg_upgrade"
    );
    // It works on the new server: a policy runs, a session is terminated.
    let victim = new.session("app", "upgrade_victim").idle_in_transaction();
    let rows = call(&mut su, "reaper.run_policy('idle-tx')", "").unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].outcome, "terminated");
    assert!(new.wait_gone(victim.pid));
    let _ = std::fs::remove_dir_all(&work);
    record_figures_per_major(
        "61-pg-upgrade",
        &format!(
            "## pg_upgrade 15 to 17\n\nA PostgreSQL 15 cluster with pg_reaper {target}, policies and audit rows \
             ({} rows), upgraded with PostgreSQL 17's pg_upgrade: the rows are unchanged, the catalog equals a fresh \
             install on 17 ({} lines), and a policy terminated a real session on the new server.\n",
            before.lines().count() - 1,
            upgraded.len()
        ),
    );
}

#[test]
fn every_release_with_the_worker_upgrades_with_the_library_preloaded() {
    // With shared_preload_libraries = 'pg_reaper', every backend keeps the library the server
    // loaded at start. The steps: install the new files, restart, ALTER EXTENSION UPDATE. An
    // update before the restart is refused and changes nothing; the old worker goes on.
    let test = "upgrades::every_release_with_the_worker_upgrades_with_the_library_preloaded";
    let Some((releases, current)) = current_tree(test) else {
        return;
    };
    let listed =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("releases.txt"))
            .unwrap();
    let with_worker: Vec<&str> = listed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().next().unwrap())
        .filter(|v| !v.starts_with("0.1.") && !v.starts_with("0.2."))
        .collect();
    assert!(with_worker.contains(&"0.4.0"), "{with_worker:?}");
    let target = pg_reaper_version();
    let version_of = |su: &mut Client| -> String {
        su.query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_reaper'",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let mut report = String::new();
    for version in with_worker {
        let dir = PathBuf::from(format!(
            "/tmp/pg_reaper_preloaded_{}_{version}",
            std::process::id()
        ));
        let bin = private_postgres_15(&dir);
        install_from(&releases.join(version).join("pkg"), &dir);
        let cluster = Cluster::start_with(Options {
            bin_dir: Some(bin),
            create_extension: false,
            settings: vec!["shared_preload_libraries = 'pg_reaper'".into()],
            ..Options::default()
        });
        cluster.create_role("app", "");
        let mut su = cluster.superuser();
        su.batch_execute(&format!(
            "CREATE EXTENSION pg_reaper VERSION '{version}'; \
             INSERT INTO reaper.policies (name, filter, run_every) VALUES \
               ('idle-tx', '{{\"application_name\": \"preloaded_victim\", \"state\": \"idle in transaction\"}}', '200 ms')"
        ))
        .unwrap();
        let enforced = |cluster: &Cluster| {
            let victim = cluster
                .session("app", "preloaded_victim")
                .idle_in_transaction();
            assert!(cluster.wait_gone(victim.pid), "from {version}: enforced");
            victim.pid
        };
        enforced(&cluster);

        // The new files, no restart: the update is refused, nothing changes, the old worker
        // goes on enforcing.
        install_from(&current, &dir);
        let err = su
            .batch_execute("ALTER EXTENSION pg_reaper UPDATE")
            .unwrap_err();
        let refused = err
            .as_db_error()
            .map(|e| e.message().to_string())
            .unwrap_or_default();
        if version == "0.3.0" {
            // Its update to 0.4.0 adds a C function the loaded 0.3.0 library lacks.
            assert!(refused.contains("could not find function"), "{err}");
        } else {
            assert_eq!(sqlstate(&err), Some("55000"), "{err}");
            // 0.4.0 has no pg_reaper.library_version to name itself with; later ones do.
            let runs = if version == "0.4.0" {
                format!("runs the pg_reaper library {version} or older, not the installed {target}")
            } else {
                format!("runs the pg_reaper library {version}, not the installed {target}")
            };
            assert!(refused.contains(&runs), "{refused}");
            let hint = err.as_db_error().and_then(|e| e.hint()).unwrap_or_default();
            assert!(hint.contains("restart the server"), "{hint}");
        }
        assert_eq!(
            version_of(&mut su),
            version,
            "the refused update changed nothing"
        );
        // Nor may the new version be created anywhere while the old library runs.
        su.batch_execute("CREATE DATABASE other").unwrap();
        let err = cluster
            .connect_to("postgres", "other")
            .batch_execute("CREATE EXTENSION pg_reaper")
            .unwrap_err();
        assert_eq!(sqlstate(&err), Some("55000"), "{err}");
        enforced(&cluster);
        drop(su);

        // Restart: the new library, which waits for the update, then enforces again.
        cluster.stop_server();
        cluster.start_server();
        let mut su = cluster.superuser();
        let loaded: String = su
            .query_one("SHOW pg_reaper.library_version", &[])
            .unwrap()
            .get(0);
        assert_eq!(loaded, target);
        cluster.wait_for_log(
            &format!("is version {version}, the library {target}; the worker waits for ALTER EXTENSION pg_reaper UPDATE"),
            1,
        );
        su.batch_execute("ALTER EXTENSION pg_reaper UPDATE")
            .unwrap();
        assert_eq!(version_of(&mut su), target);
        let pid = enforced(&cluster);
        wait_for(
            &mut su,
            &format!(
                "SELECT count(*) = 1 FROM reaper.log WHERE pid = {pid} AND caller = 'pg_reaper worker'"
            ),
        );
        report += &format!(
            "| {version} | {target} | refused: {} | enforced |\n",
            refused.lines().next().unwrap_or("")
        );
        drop(su);
        drop(cluster);
        let _ = std::fs::remove_dir_all(&dir);
    }
    record_figures(
        "62-upgrades-preloaded",
        &format!(
            "## Upgrades with the library preloaded\n\nEach release that has the worker, running with `shared_preload_libraries = 'pg_reaper'` and a \
             scheduled policy: the new files installed, `ALTER EXTENSION pg_reaper UPDATE` before the restart is refused and changes \
             nothing while the old worker goes on enforcing; after the restart the new library reports itself \
             (`pg_reaper.library_version`), the worker waits for the update, and after it enforces again and writes its audit rows.\n\n\
             | from | to | before the restart | after it |\n| --- | --- | --- | --- |\n{report}"
        ),
    );
}

#[test]
fn another_packages_broken_control_file_does_not_stop_create_extension() {
    // The library check reads pg_available_extensions, which reads every control file: one
    // that another package left broken must not stop pg_reaper's install.
    let test = "upgrades::another_packages_broken_control_file_does_not_stop_create_extension";
    let Some((_, current)) = current_tree(test) else {
        return;
    };
    let dir = PathBuf::from(format!(
        "/tmp/pg_reaper_broken_control_{}",
        std::process::id()
    ));
    let bin = private_postgres_15(&dir);
    install_from(&current, &dir);
    std::fs::write(
        dir.join("usr/share/postgresql/15/extension/broken.control"),
        "default_version = '1.0\ncomment = \n",
    )
    .unwrap();
    let cluster = Cluster::start_with(Options {
        bin_dir: Some(bin),
        create_extension: false,
        ..Options::default()
    });
    let mut su = cluster.superuser();
    assert!(su
        .batch_execute("SELECT * FROM pg_available_extensions")
        .is_err());
    su.batch_execute("CREATE EXTENSION pg_reaper").unwrap();
    let version: String = su
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_reaper'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, pg_reaper_version());
    drop(su);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's order for a fleet (a control cluster whose `reaper.policies` its members
/// subscribe to): members first, then the control. A member still on 0.6.0 when the control
/// updates stops applying (0.7.0's policies have a column it lacks) and catches up, with
/// nothing lost, once it updates too.
#[test]
fn a_fleet_updates_members_first_and_a_member_left_behind_catches_up() {
    let test = "upgrades::a_fleet_updates_members_first_and_a_member_left_behind_catches_up";
    let Some((releases, current)) = current_tree(test) else {
        return;
    };
    let from = "0.6.0";
    // Two installations: the control's, and the one both members run from.
    let node = |dir: &Path, name: &str| {
        let cluster = Cluster::start_with(Options {
            bin_dir: Some(dir.join("usr/lib/postgresql/15/bin")),
            create_extension: false,
            settings: vec![
                "wal_level = logical".into(),
                format!("pg_reaper.node_name = '{name}'"),
            ],
            ..Options::default()
        });
        cluster.create_role("ops", "IN ROLE pg_signal_backend");
        cluster.create_role("app", "");
        let mut su = cluster.superuser();
        su.batch_execute(&format!(
            "CREATE ROLE \"App-Ops\" IN ROLE pg_signal_backend; \
             CREATE EXTENSION pg_reaper VERSION '{from}'"
        ))
        .unwrap();
        cluster
    };
    let dirs: Vec<PathBuf> = ["control", "members"]
        .iter()
        .map(|d| {
            let dir = PathBuf::from(format!(
                "/tmp/pg_reaper_fleet_upgrade_{}_{d}",
                std::process::id()
            ));
            private_postgres_15(&dir);
            install_from(&releases.join(from).join("pkg"), &dir);
            dir
        })
        .collect();
    let control = node(&dirs[0], "control");
    let m1 = node(&dirs[1], "m1");
    let m2 = node(&dirs[1], "m2");
    let mut c = control.superuser();
    c.batch_execute("CREATE PUBLICATION reaper_policies FOR TABLE reaper.policies")
        .unwrap();
    for (name, m) in [("m1", &m1), ("m2", &m2)] {
        m.superuser()
            .batch_execute(&format!(
                "CREATE SUBSCRIPTION reaper_policies_{name} \
                   CONNECTION 'host=127.0.0.1 port={} user=postgres dbname=postgres' \
                   PUBLICATION reaper_policies",
                control.port
            ))
            .unwrap();
        wait_subscriptions_ready(&mut m.superuser(), 1);
    }
    let add = |c: &mut Client, name: &str| {
        c.execute(
            "INSERT INTO reaper.policies (name, filter, action, timeout_ms, owner) \
             VALUES ($1, $2::text::jsonb, 'terminate', 5000, 'ops')",
            &[&name, &format!(r#"{{"application_name": "{name}"}}"#)],
        )
        .unwrap();
    };
    let has = |m: &Cluster, name: &str| {
        wait_replicated(
            &mut m.superuser(),
            &format!("SELECT count(*) = 1 FROM reaper.policies WHERE name = '{name}'"),
        )
    };
    // The policy runs on the member with the member's role named by the row.
    let enforces = |m: &Cluster, name: &str| {
        let victim = m.session("app", name);
        let mut su = m.superuser();
        let rows = call(&mut su, &format!("reaper.run_policy('{name}')"), "").unwrap();
        assert_eq!(pids(&rows), vec![victim.pid], "{name}");
        assert!(m.wait_gone(victim.pid));
    };
    add(&mut c, "before");
    has(&m1, "before");
    has(&m2, "before");

    // m1 first: new files, a restart, ALTER EXTENSION UPDATE; the 0.6.0 control's rows apply.
    // (m2 shares m1's files, so it restarts onto the new library too, with 0.6.0's SQL.)
    let update = |m: &Cluster| {
        m.superuser()
            .batch_execute("ALTER EXTENSION pg_reaper UPDATE")
            .unwrap();
    };
    m1.stop_server();
    m2.stop_server();
    install_from(&current, &dirs[1]);
    m1.start_server();
    m2.start_server();
    update(&m1);
    add(&mut c, "after-member");
    has(&m1, "after-member");
    has(&m2, "after-member");
    enforces(&m1, "after-member");
    enforces(&m2, "after-member");
    // The 0.6.0 control sends an owner as regrole writes it, quoted where the name needs it:
    // the updated member keeps the name.
    c.batch_execute(
        "INSERT INTO reaper.policies (name, filter, action, timeout_ms, owner) VALUES \
           ('mixed', '{\"application_name\": \"mixed\"}', 'terminate', 5000, '\"App-Ops\"')",
    )
    .unwrap();
    has(&m1, "mixed");
    assert_eq!(
        count(
            &mut m1.superuser(),
            "SELECT count(*) FROM reaper.policies \
              WHERE name = 'mixed' AND owner = 'App-Ops' AND owner_oid = '\"App-Ops\"'::regrole"
        ),
        1
    );
    enforces(&m1, "mixed");
    has(&m2, "mixed");
    enforces(&m2, "mixed");

    // Then the control. m2, left behind on 0.6.0's SQL, stops applying, and says why.
    control.stop_server();
    install_from(&current, &dirs[0]);
    control.start_server();
    update(&control);
    let mut c = control.superuser();
    add(&mut c, "after-control");
    has(&m1, "after-control");
    enforces(&m1, "after-control");
    let mut m2su = m2.superuser();
    m2.wait_for_log_within("missing replicated column", 1, REPLICATION_PATIENCE);
    assert_eq!(
        count(
            &mut m2su,
            "SELECT count(*) FROM reaper.policies WHERE name = 'after-control'"
        ),
        0
    );
    drop(m2su);
    // Its update (it runs the new library since the restart) lets it catch up.
    update(&m2);
    has(&m2, "after-control");
    enforces(&m2, "after-control");
    for m in [&m1, &m2] {
        assert_eq!(
            count(
                &mut m.superuser(),
                "SELECT count(*) FROM reaper.policies WHERE owner_oid = 'ops'::regrole"
            ),
            3
        );
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}
