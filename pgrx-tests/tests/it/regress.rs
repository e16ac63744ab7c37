//! Single-session behaviour as expected-output regression tests (pg_regress): every refusal
//! message with its SQLSTATE, validate_filter's normal forms, the catalog a DBA sees. A change
//! of any of them is a diff in `pgrx-tests/regress/expected/`. The files are plain SQL a DBA
//! can read as documentation.

use pg_reaper_integration::*;
use std::path::PathBuf;
use std::process::Command;

const TESTS: &[&str] = &["refusals", "normal_forms", "catalog"];

#[test]
fn single_session_behaviour_matches_the_expected_output() {
    let cluster = Cluster::start();
    // With --use-existing, pg_regress creates nothing: the database and the extension are ours.
    cluster
        .superuser()
        .batch_execute("CREATE DATABASE pg_reaper_regress")
        .unwrap();
    cluster
        .connect_to("postgres", "pg_reaper_regress")
        .batch_execute("CREATE EXTENSION pg_reaper")
        .unwrap();
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let input = manifest.join("regress");
    let output = manifest.join(format!("../target/regress/pg{}", server_major()));
    let _ = std::fs::remove_dir_all(&output);
    std::fs::create_dir_all(&output).unwrap();
    let pg_regress =
        PathBuf::from(pg_config_value("pkglibdir")).join("pgxs/src/test/regress/pg_regress");
    let status = Command::new(&pg_regress)
        .arg("--use-existing")
        .arg("--host=127.0.0.1")
        .arg(format!("--port={}", cluster.port))
        .arg("--user=postgres")
        .arg(format!("--bindir={}", pg_config_value("bindir")))
        .arg(format!("--inputdir={}", input.display()))
        .arg(format!("--outputdir={}", output.display()))
        .arg("--dbname=pg_reaper_regress")
        .args(TESTS)
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8")
        .env("PGTZ", "UTC")
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", pg_regress.display()));
    if !status.success() {
        let diffs = std::fs::read_to_string(output.join("regression.diffs")).unwrap_or_default();
        panic!(
            "pg_regress found differences (results in {}):\n{diffs}",
            output.display()
        );
    }
}
