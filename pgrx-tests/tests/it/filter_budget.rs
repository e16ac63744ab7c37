//! What a filter may cost. Each regex is bounded, and so is the sum of all of a filter's
//! regexes with the caches they may grow: a role with no privileges at all cannot make a
//! backend (or, through a policy, the worker) take gigabytes. And whatever a filter costs to
//! match, none of it is spent while ProcArrayLock is held: the final check copies the victim's
//! live values under the lock and judges them outside it.

use pg_reaper_integration::*;

/// The peak memory a fresh backend may reach above its start for any filter (the goal of the
/// review that found 1.69 GB for 1,900 regexes).
const PEAK_BOUND_KB: i64 = 64 * 1024;

/// The most expensive filter the regex budget allows (see `src/filter/tests.rs`).
const FIXTURE: &str = include_str!("../../fixtures/regex_budget_filter.json");

/// The review's filter: `any` of `n` regexes, all the same (`\w{15}`) or all different.
fn regexes(n: usize, different: bool) -> String {
    let pattern = if different {
        "'\\w{15}' || g"
    } else {
        "'\\w{15}'"
    };
    format!(
        "SELECT reaper.validate_filter(jsonb_build_object('any', \
           (SELECT jsonb_agg(jsonb_build_object('query', jsonb_build_object('regex', {pattern}))) \
              FROM generate_series(1, {n}) g)))"
    )
}

#[test]
fn a_role_without_privileges_cannot_make_a_backend_take_gigabytes() {
    let cluster = Cluster::start();
    cluster.create_role("nobody", "");
    let mut report = String::new();
    let fixture = FIXTURE.replace('\'', "''");
    for (name, sql, accepted) in [
        (
            "1,900 copies of one regex (`\\w{15}`)",
            regexes(1900, false),
            true,
        ),
        ("200 different regexes", regexes(200, true), false),
        // As many as fit in the 64 KiB of a filter's text.
        ("1,700 different regexes", regexes(1700, true), false),
        (
            "the budget fixture (the most expensive filter it allows)",
            format!("SELECT reaper.validate_filter('{fixture}')"),
            true,
        ),
    ] {
        let (took, peak_kb, result) = cost_in_fresh_backend(&cluster, "nobody", &sql);
        match (&result, accepted) {
            (Ok(_), true) => {}
            (Err(e), false) => {
                assert_eq!(sqlstate(e), Some("22023"), "{name}: {e}");
                let message = e.as_db_error().unwrap().message();
                assert!(message.contains("budget of 16 MiB"), "{name}: {message}");
            }
            _ => panic!("{name}: {result:?}"),
        }
        assert!(
            peak_kb < PEAK_BOUND_KB,
            "{name}: the backend's peak memory rose {peak_kb} kB"
        );
        report += &format!(
            "| {name} | {} | {:.1} | {:.1} |\n",
            if accepted {
                "accepted"
            } else {
                "refused (22023)"
            },
            took.as_secs_f64() * 1000.0,
            peak_kb as f64 / 1024.0
        );
    }
    // The same bound for the worker: a policy over the budget is refused when written.
    let mut su = cluster.superuser();
    let over: String = su
        .query_one(
            &(regexes(200, true).replace("SELECT reaper.validate_filter(", "SELECT (") + "::text"),
            &[],
        )
        .unwrap()
        .get(0);
    let err = su
        .execute(
            "INSERT INTO reaper.policies (name, filter) VALUES ('over', $1::text::jsonb)",
            &[&over],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("22023"), "{err}");
    record_figures(
        "33-filter-budget",
        &format!(
            "## The regex budget\n\n`filter_budget.rs`: filters given to `reaper.validate_filter` by a role with no privileges, each in a \
             fresh backend; the peak is the rise of the backend's VmHWM during the call (0.4.0: 0.8 s / 1.69 GB for 1,900 regexes).\n\n\
             | filter | result | ms | peak MB |\n| --- | --- | ---: | ---: |\n{report}"
        ),
    );
}

/// Cancels what `filter` selects with `pg_reaper.log_pin_hold` on, and returns the rows with
/// what the LOG line says of the pin: (longest hold µs, holds, mean hold µs).
fn cancel_and_measure_the_pin(
    cluster: &Cluster,
    su: &mut Client,
    filter: &str,
) -> (Vec<Row>, (u64, u64, u64)) {
    su.batch_execute("SET pg_reaper.log_pin_hold = on").unwrap();
    let before = cluster
        .server_log()
        .matches("ProcArrayLock held at most")
        .count();
    let rows = cancel(su, filter);
    cluster.wait_for_log("ProcArrayLock held at most", before + 1);
    let log = cluster.server_log();
    let line = log
        .lines()
        .filter(|l| l.contains("ProcArrayLock held at most"))
        .nth(before)
        .unwrap()
        .to_string();
    let number_after = |marker: &str| -> u64 {
        line.split(marker)
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let figures = (
        number_after("held at most "),
        number_after(" in "),
        number_after("holds, "),
    );
    (rows, figures)
}

/// `len` bytes of "a" and "b" in no pattern: text on which the fixture's regexes fill their
/// lazy-DFA caches without matching.
fn a_and_b(len: usize, seed: u64) -> String {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(2) {
                'a'
            } else {
                'b'
            }
        })
        .collect()
}

#[test]
fn the_costliest_filter_is_matched_outside_proc_array_lock() {
    // Seventy sessions with 1 kB queries of "a" and "b": ten begin with "w8", which a trivial
    // filter cancels first; ten with "x7", which one branch of the fixture matches; fifty with
    // nothing, which no branch matches, so every regex is tried on them, and thrashes. The
    // fixture, scoped to these sessions, is previewed, then cancels its ten. The pin is held only
    // to copy and to check, whatever the filter.
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("costliest");
    let text = |start: &str, seed: u64| {
        // Within track_activity_query_size (1 kB).
        format!(
            "SELECT '{start} {}' AS q, pg_sleep(600)",
            a_and_b(940, seed)
        )
    };
    let mut groups: Vec<Vec<(Session, Pending)>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for i in 0..70 {
        let s = cluster.session("app", &tag);
        let (group, start) = match i {
            0..10 => (0, "w8"),
            10..20 => (1, "x7"),
            _ => (2, "ab"),
        };
        let pending = s.start(&text(start, i as u64 + 1));
        cluster.wait_until(s.pid, "a.wait_event = 'PgSleep'");
        groups[group].push((s, pending));
    }
    let pids_of = |g: &[(Session, Pending)]| sorted(g.iter().map(|(s, _)| s.pid).collect());
    let mut su = cluster.superuser();
    let pid = backend_pid(&mut su);

    let trivial = format!(r#"{{"application_name": "{tag}", "query": {{"regex": "'w8 "}}}}"#);
    let (rows, trivial_pin) = cancel_and_measure_the_pin(&cluster, &mut su, &trivial);
    assert_eq!(pids(&rows), pids_of(&groups[0]));
    for (_, pending) in &groups[0] {
        assert_eq!(pending.wait(), Ended::Error("57014".into()));
    }

    let mut filter: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    filter["application_name"] = serde_json::Value::String(tag.clone());
    filter["state"] = serde_json::Value::String("active".into());
    let filter = filter.to_string();
    let before = peak_memory_kb(pid);
    let started = std::time::Instant::now();
    su.query_one("SELECT reaper.validate_filter($1::text::jsonb)", &[&filter])
        .unwrap();
    let compiled = started.elapsed();
    let started = std::time::Instant::now();
    let rows = preview(&mut su, &filter);
    let previewed = started.elapsed();
    assert_eq!(pids(&rows), pids_of(&groups[1]));
    let (rows, fixture_pin) = cancel_and_measure_the_pin(&cluster, &mut su, &filter);
    let peak_kb = peak_memory_kb(pid) - before;
    assert_eq!(pids(&rows), pids_of(&groups[1]));
    assert!(rows.iter().all(|r| r.outcome == "cancelled"), "{rows:?}");
    for (_, pending) in &groups[1] {
        assert_eq!(pending.wait(), Ended::Error("57014".into()));
    }
    // The bystanders were not signalled: no LOG line names them (the lines are written before
    // the call returns).
    for (s, _) in &groups[2] {
        assert!(cluster.reaper_lines(s.pid).is_empty());
    }
    // Two holds per victim at the least (the copy, then the check and the signal).
    assert!(
        trivial_pin.1 >= 20 && fixture_pin.1 >= 20,
        "{trivial_pin:?} {fixture_pin:?}"
    );
    assert!(peak_kb < PEAK_BOUND_KB, "peak rose {peak_kb} kB");
    record_figures(
        "34-costliest-filter",
        &format!(
            "## The costliest filter, and ProcArrayLock\n\n`filter_budget.rs`: the budget fixture (the most expensive filter the regex \
             budget allows: {} bytes of JSON, 118 different regexes whose lazy DFAs fill their caches on text of \"a\" and \"b\" they \
             do not match) against 70 sessions with 1 kB queries of \"a\" and \"b\", 50 of which match no branch. Compiling it took \
             {:.1} ms; a preview of the 70 sessions {:.1} ms; the backend's peak memory rose {:.1} MB over compiling, previewing and \
             cancelling.\n\n\
             ProcArrayLock while cancelling 10 sessions: with a one-regex filter, {} holds, at most {} µs, {} µs on average; with the \
             fixture, {} holds, at most {} µs, {} µs on average. Under it there are only copies and comparisons of fixed size, and the \
             signal; the filter is matched outside it (test builds check that no filter is matched with the lock held).\n",
            FIXTURE.len(),
            compiled.as_secs_f64() * 1000.0,
            previewed.as_secs_f64() * 1000.0,
            peak_kb as f64 / 1024.0,
            trivial_pin.1,
            trivial_pin.0,
            trivial_pin.2,
            fixture_pin.1,
            fixture_pin.0,
            fixture_pin.2,
        ),
    );
}

#[test]
fn the_worker_keeps_its_policies_regexes_within_its_own_budget() {
    // Each scheduled policy's filter is compiled once and kept: seventeen at the regex budget
    // would be 272 MiB; the worker keeps sixteen (256 MiB) and says why the last one cannot run.
    let cluster = super::worker::worker_cluster(&[], true);
    let mut su = cluster.superuser();
    let worker = super::worker::running_worker(&mut su);
    let mut filter: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    filter["application_name"] = serde_json::Value::String("nobody_at_all".into());
    let filter = filter.to_string();
    for i in 1..=17 {
        su.execute(
            "INSERT INTO reaper.policies (name, filter, action, run_every) \
             VALUES ($1, $2::text::jsonb, 'cancel', '1 hour')",
            &[&format!("p{i:02}"), &filter],
        )
        .unwrap();
    }
    wait_for(
        &mut su,
        "SELECT count(*) = 17 AND count(*) FILTER (WHERE runs = 1) = 17 FROM reaper.worker_status()",
    );
    let failing: Vec<(String, String)> = su
        .query(
            "SELECT policy, last_error FROM reaper.worker_status() WHERE last_error IS NOT NULL",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(failing.len(), 1, "{failing:?}");
    assert_eq!(failing[0].0, "p17");
    assert!(
        failing[0].1.contains("the worker's budget of 256 MiB"),
        "{}",
        failing[0].1
    );
    assert_eq!(super::worker::worker_pid(&mut su), Some(worker));
    let worker_kb = rss_anon_kb(worker);
    assert!(worker_kb < 512 * 1024, "the worker holds {worker_kb} kB");
    record_figures(
        "35-worker-budget",
        &format!(
            "## The worker's regex budget\n\n`filter_budget.rs`: 17 scheduled policies whose filters are each the budget fixture: the worker \
             compiled and kept 16 (their regexes count 256 MiB together by the budget's reckoning) and refused the 17th with a clear \
             `last_error`; its private memory (RssAnon) was then {:.0} MB.\n",
            worker_kb as f64 / 1024.0
        ),
    );
}

#[test]
fn a_cancel_stops_the_costliest_matching_within_one_regex_scan() {
    // Three sessions whose 1 MB queries of "a" and "b" match none of the fixture's 118 regexes,
    // each of which thrashes on them: matching all of it would take about a minute. A
    // statement_timeout of a second stops the preview at the next regex, and the backend's memory
    // stays within the bound.
    // (Few connections: each has a 1 MB activity buffer in shared memory.)
    let cluster = Cluster::start_with(Options {
        max_connections: 20,
        settings: vec!["track_activity_query_size = 1048576".into()],
        ..Options::default()
    });
    cluster.create_role("app", "");
    let tag = tag("thrash_mib");
    let sessions: Vec<(Session, Pending)> = (0..3)
        .map(|i| {
            let s = cluster.session("app", &tag);
            let p = s.start(&format!(
                "SELECT '{}' AS q, pg_sleep(600)",
                a_and_b((1 << 20) - 100, i + 1)
            ));
            cluster.wait_until(s.pid, "a.wait_event = 'PgSleep'");
            (s, p)
        })
        .collect();
    let mut filter: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    filter["application_name"] = serde_json::Value::String(tag.clone());
    let mut su = cluster.superuser();
    let pid = backend_pid(&mut su);
    su.batch_execute("SET statement_timeout = '1s'").unwrap();
    let before = peak_memory_kb(pid);
    let started = std::time::Instant::now();
    let err = call(
        &mut su,
        "reaper.preview_matching($1::text::jsonb)",
        &filter.to_string(),
    )
    .unwrap_err();
    let took = started.elapsed();
    let peak_kb = peak_memory_kb(pid) - before;
    assert_eq!(sqlstate(&err), Some("57014"), "{err}");
    // A bound that only matching without cancel points could break (the whole would take a
    // minute); the figure itself is reported.
    assert!(took < std::time::Duration::from_secs(4), "took {took:?}");
    assert!(peak_kb < PEAK_BOUND_KB, "peak rose {peak_kb} kB");
    for (s, _) in &sessions {
        assert!(cluster.alive(s.pid));
    }
    record_figures(
        "36-cancel-in-matching",
        &format!(
            "## A cancel inside the costliest matching\n\n`filter_budget.rs`: the budget fixture against three sessions with 1 MB \
             queries of \"a\" and \"b\" (every one of its 118 regexes thrashes on them: about a minute in all), with \
             `statement_timeout = '1s'`: cancelled after {:.2} s; the backend's peak memory rose {:.1} MB.\n",
            took.as_secs_f64(),
            peak_kb as f64 / 1024.0
        ),
    );
}
