//! `make demo` shows what it announces: the script is run against the build the suite
//! installed, and every step that announces an effect must show it, on a fast machine or a slow
//! one, with nothing a newcomer would take for an error but the one error it announces.

use pg_reaper_integration::*;
use std::process::Command;

/// The demo's steps: each "-- title" line and the output under it.
fn steps(output: &str) -> Vec<(String, String)> {
    let mut steps: Vec<(String, String)> = Vec::new();
    for line in output.lines() {
        if let Some(title) = line.strip_prefix("-- ") {
            steps.push((title.to_string(), String::new()));
        } else if let Some((_, body)) = steps.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    steps
}

/// The output of the step whose title starts with `title`.
fn step<'a>(steps: &'a [(String, String)], title: &str) -> &'a str {
    steps
        .iter()
        .find(|(t, _)| t.starts_with(title))
        .map(|(_, body)| body.as_str())
        .unwrap_or_else(|| panic!("no step {title:?}"))
}

/// The result rows of a step (psql's aligned table lines), as their cells.
fn rows(body: &str) -> Vec<Vec<String>> {
    body.lines()
        .skip_while(|l| !l.starts_with("--") && !l.contains("-+-"))
        .skip(1)
        .take_while(|l| !l.starts_with('('))
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
        .collect()
}

#[test]
fn the_demo_shows_every_effect_it_announces() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("demo.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("PG_CONFIG", pg_config())
        .env("DEMO_PORT", free_port().to_string())
        .env(
            "DEMO_MEMBER_PORTS",
            format!("{} {}", free_port(), free_port()),
        )
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "the demo failed:\n{stdout}\n{stderr}");
    let all = format!("{stdout}\n{stderr}");
    // No noise: the ERRORs are the typo the demo announces and the report it cancels.
    for noise in [
        "could not change directory",
        "Permission denied",
        "WARNING",
        "FATAL",
    ] {
        assert!(
            !all.contains(noise),
            "{noise:?} in the demo's output:\n{all}"
        );
    }
    // The typo's error, and the cancelled report's, as its client printed it, with why.
    let errors: Vec<&str> = all.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("idle in transation")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.trim() == "ERROR:  canceling statement due to user request"),
        "{errors:?}"
    );
    assert!(
        stdout.contains(
            "DETAIL:  pg_reaper: cancelled by role \"postgres\": running a query for 00:00:"
        ),
        "the victim's error says why:\n{stdout}"
    );

    let steps = steps(&stdout);
    let has = |title: &str, cells: &[&str]| {
        let found = rows(step(&steps, title))
            .iter()
            .any(|row| cells.iter().all(|c| row.iter().any(|cell| cell == c)));
        assert!(
            found,
            "step {title:?} shows no row with {cells:?}:\n{}",
            step(&steps, title)
        );
    };
    let count = |title: &str| rows(step(&steps, title)).len();
    assert_eq!(count("Every client session"), 6);
    assert_eq!(count("Preview {\"all\": true}"), 5);
    has("Who blocks whom?", &["nightly-batch"]);
    has("Who blocks whom?", &["web-api"]);
    has("Cancel the long report", &["report-daily", "cancelled"]);
    has(
        "Terminate the lock holder",
        &["nightly-batch", "terminated"],
    );
    assert_eq!(count("A role without rights"), 2);
    has("A role without rights", &["app", "denied"]);
    // The step of the issue: the policy terminates web-checkout.
    has(
        "A policy, owned by ops",
        &["idle-tx", "web-checkout", "terminated"],
    );
    assert!(
        stdout.contains("checkout-2 was gone"),
        "the worker step:\n{stdout}"
    );
    has("What the worker knows", &["idle-checkout", "1"]);
    has("The worker itself", &["running", "pg_reaper worker"]);
    assert_eq!(count("At most 2 idle connections"), 2);
    has("At most 2 idle connections", &["pool", "matched"]);
    let protected = step(&steps, "{\"all\": true} never touches pg_dump");
    // psql writes the NOTICE to stderr.
    assert!(
        stderr.contains("NOTICE:  pg_reaper: 1 protected session(s)"),
        "{stderr}"
    );
    assert!(!rows(protected)
        .iter()
        .any(|r| r.contains(&"pg_dump".to_string())));
    let replay = rows(step(&steps, "Replay"));
    assert_eq!(
        replay
            .iter()
            .filter(|r| r.last().map(String::as_str) == Some("t"))
            .count(),
        2
    );
    has(
        "The audit trail",
        &["idle-tx", "terminate", "terminated", "web-checkout"],
    );
    has("The audit trail", &["idle-checkout", "signalled"]);
    // The fleet: each member's worker ended its checkout, and the control holds both rows.
    for node in ["m1", "m2"] {
        has(
            "One audit for the fleet",
            &[node, "idle-checkout", "terminate", "signalled", "1"],
        );
    }
    has(
        "One audit for the fleet",
        &["control", "idle-tx", "terminated"],
    );
    let left = rows(step(&steps, "What is left"));
    for gone in ["web-checkout", "nightly-batch", "checkout-2"] {
        assert!(
            !left.iter().any(|r| r.contains(&gone.to_string())),
            "{gone} is still there: {left:?}"
        );
    }
}
