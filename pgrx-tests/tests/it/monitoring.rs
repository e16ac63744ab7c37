//! The shipped monitoring configurations (`monitoring/`): each one parses, names every series
//! `pg_reaper_*`, and its queries run as a member of `pg_monitor` in a read-only transaction,
//! returning the columns the file declares, with no two rows of a family sharing labels (which
//! makes postgres_exporter fail the whole scrape). Then Debian's real
//! `prometheus-postgres-exporter` scrapes a server with the shipped file, and a policy's
//! terminate counter goes up by exactly the sessions it ended.

use pg_reaper_integration::*;
use serde_yaml::Value;
use std::io::{Read, Write};
use std::path::PathBuf;

fn monitoring(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../monitoring")
        .join(path)
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(monitoring(path)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One query a configuration runs: the series it makes, its SQL, the label columns and the
/// value column it declares.
#[derive(Debug)]
struct Query {
    series: String,
    sql: String,
    labels: Vec<String>,
    value: String,
}

/// postgres_exporter's and CloudNativePG's format: `<key>: {query, metrics: [{column: {usage,
/// name?}}]}`, the series `<key>_<name or column>`.
fn exporter_queries(doc: &Value) -> Vec<Query> {
    doc.as_mapping()
        .unwrap()
        .iter()
        .map(|(key, entry)| {
            let key = key.as_str().unwrap();
            let mut labels = Vec::new();
            let mut value = None;
            let mut series = None;
            for m in entry["metrics"].as_sequence().unwrap() {
                let (column, spec) = m.as_mapping().unwrap().iter().next().unwrap();
                let column = column.as_str().unwrap().to_string();
                match spec["usage"].as_str().unwrap() {
                    "LABEL" => labels.push(column),
                    "COUNTER" | "GAUGE" => {
                        let name = spec["name"].as_str().unwrap_or(&column).to_string();
                        series = Some(format!("{key}_{name}"));
                        value = Some(column);
                    }
                    other => panic!("{key}: unknown usage {other}"),
                }
            }
            Query {
                series: series.unwrap(),
                sql: entry["query"].as_str().unwrap().to_string(),
                labels,
                value: value.unwrap(),
            }
        })
        .collect()
}

fn all_queries() -> Vec<(&'static str, Vec<Query>)> {
    let postgres_exporter = exporter_queries(&yaml("postgres_exporter/queries.yaml"));
    let cnpg_map = yaml("cloudnative-pg/pg-reaper-monitoring.yaml");
    let cnpg: Value =
        serde_yaml::from_str(cnpg_map["data"]["custom-queries"].as_str().unwrap()).unwrap();
    let cnpg = exporter_queries(&cnpg);
    let sql_exporter = yaml("sql_exporter/pg_reaper.collector.yml")["metrics"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| Query {
            series: m["metric_name"].as_str().unwrap().to_string(),
            sql: m["query"].as_str().unwrap().to_string(),
            labels: strings(&m["key_labels"]),
            value: strings(&m["values"]).remove(0),
        })
        .collect();
    let pg_exporter = yaml("pg_exporter/pg_reaper.yml")
        .as_mapping()
        .unwrap()
        .values()
        .map(|b| {
            let mut labels = Vec::new();
            let mut value = None;
            let mut series = None;
            for m in b["metrics"].as_sequence().unwrap() {
                let (column, spec) = m.as_mapping().unwrap().iter().next().unwrap();
                let column = column.as_str().unwrap().to_string();
                if spec["usage"].as_str() == Some("LABEL") {
                    labels.push(column);
                } else {
                    let rename = spec["rename"].as_str().unwrap_or(&column).to_string();
                    series = Some(format!("{}_{rename}", b["name"].as_str().unwrap()));
                    value = Some(column);
                }
            }
            Query {
                series: series.unwrap(),
                sql: b["query"].as_str().unwrap().to_string(),
                labels,
                value: value.unwrap(),
            }
        })
        .collect();
    let pgwatch = yaml("pgwatch/pg_reaper.yml")["metrics"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(name, m)| {
            let sql = m["sqls"][11].as_str().unwrap().to_string();
            // Labels are the tag_ columns; the value the one left (epoch_ns is the time).
            let value = sql
                .split("value AS ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
            let labels = sql
                .split("AS tag_")
                .skip(1)
                .map(|s| format!("tag_{}", s.split([',', ' ']).next().unwrap()))
                .collect();
            Query {
                // With the sink's namespace "pg".
                series: format!("pg_{}_{value}", name.as_str().unwrap()),
                sql,
                labels,
                value,
            }
        })
        .collect();
    vec![
        ("postgres_exporter", postgres_exporter),
        ("cloudnative-pg", cnpg),
        ("sql_exporter", sql_exporter),
        ("pg_exporter", pg_exporter),
        ("pgwatch", pgwatch),
    ]
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_shipped_query_runs_read_only_as_pg_monitor_and_names_pg_reaper_series() {
    let cluster = Cluster::preloaded(&["pg_reaper.worker = off"]);
    cluster.create_role("watcher", "IN ROLE pg_monitor");
    let mut su = cluster.superuser();
    // Series to find: a direct call and a policy run that signalled.
    let t = tag("monitoring");
    let _s = cluster.session("app", &t);
    assert_eq!(
        cancel(&mut su, &format!(r#"{{"application_name": "{t}"}}"#)).len(),
        1
    );
    su.execute(
        "INSERT INTO reaper.policies (name, filter, action) VALUES ('mon', $1::text::jsonb, 'cancel')",
        &[&format!(r#"{{"application_name": "{t}"}}"#)],
    )
    .unwrap();
    call(&mut su, "reaper.run_policy('mon')", "").unwrap();

    let mut watcher = cluster.connect("watcher");
    let mut families = 0;
    for (tool, queries) in all_queries() {
        assert!(!queries.is_empty(), "{tool}");
        for q in queries {
            assert!(q.series.starts_with("pg_reaper_"), "{tool}: {q:?}");
            let mut tx = watcher.build_transaction().read_only(true).start().unwrap();
            let rows = tx
                .query(q.sql.as_str(), &[])
                .unwrap_or_else(|e| panic!("{tool}: {q:?}: {e}"));
            tx.commit().unwrap();
            let mut seen = std::collections::HashSet::new();
            for row in &rows {
                let labels: Vec<String> = q
                    .labels
                    .iter()
                    .map(|l| {
                        row.try_get::<_, String>(l.as_str())
                            .unwrap_or_else(|e| panic!("{tool}: {q:?}: {e}"))
                    })
                    .collect();
                let _: f64 = row
                    .try_get(q.value.as_str())
                    .unwrap_or_else(|e| panic!("{tool}: {q:?}: {e}"));
                assert!(
                    seen.insert(labels.clone()),
                    "{tool}: {} twice: {labels:?}",
                    q.series
                );
            }
            families += 1;
        }
    }
    assert!(families >= 5 * 8, "{families}");
}

/// The Debian package's exporter, if installed (the Makefile installs it).
const EXPORTER: &str = "/usr/bin/prometheus-postgres-exporter";

/// The exporter's process, stopped however the test ends.
struct Exporter(std::process::Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `/metrics`, or None while the exporter does not listen yet.
fn scrape(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The value of the series line that starts with `name{` and has every label of `labels`.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_real_postgres_exporter_counts_a_policys_terminations() {
    if !std::path::Path::new(EXPORTER).exists() {
        panic!("{EXPORTER} is missing: make deps installs prometheus-postgres-exporter");
    }
    let cluster =
        Cluster::preloaded(&["pg_reaper.worker = off", "pg_reaper.node_name = 'scraped'"]);
    cluster.create_role("exporter", "IN ROLE pg_monitor");
    let mut su = cluster.superuser();
    let t = tag("scrape");
    su.execute(
        "INSERT INTO reaper.policies (name, filter, action, timeout_ms) \
         VALUES ('idle-scraped', $1::text::jsonb, 'terminate', 5000)",
        &[&format!(r#"{{"application_name": "{t}"}}"#)],
    )
    .unwrap();
    // The exporter's own port: a free one, as the cluster's.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _exporter = Exporter(
        std::process::Command::new(EXPORTER)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!(
                "--extend.query-path={}",
                monitoring("postgres_exporter/queries.yaml").display()
            ))
            .arg("--disable-default-metrics")
            .arg("--disable-settings-metrics")
            .env(
                "DATA_SOURCE_NAME",
                format!(
                    "postgresql://exporter@127.0.0.1:{}/postgres?sslmode=disable",
                    cluster.port
                ),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let labels = [
        ("policy", "idle-scraped"),
        ("action", "terminate"),
        ("outcome", "terminated"),
        ("node", "scraped"),
    ];
    // Wait for the exporter to answer (it may take a moment to listen).
    let mut before = None;
    for _ in 0..300 {
        if let Some(body) = scrape(port).filter(|b| b.contains("pg_reaper_worker_up")) {
            before = Some(sample(&body, "pg_reaper_signals_total", &labels).unwrap_or(0.0));
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let before = before.expect("the exporter never served pg_reaper's series");
    let sessions: Vec<Session> = (0..4).map(|_| cluster.session("app", &t)).collect();
    let rows = call(&mut su, "reaper.run_policy('idle-scraped')", "").unwrap();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows.iter().all(|r| r.outcome == "terminated"), "{rows:?}");
    for s in &sessions {
        wait_for(
            &mut su,
            &format!(
                "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = {}",
                s.pid
            ),
        );
    }
    let after = sample(&scrape(port).unwrap(), "pg_reaper_signals_total", &labels)
        .expect("the policy's terminate counter");
    assert_eq!(after - before, 4.0);
}
