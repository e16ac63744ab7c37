//! The Debian package (`make package`): the Debian/PGDG layout for the server's major, and, for
//! PostgreSQL 15, a real install on a clean Debian 12 root where a real session is terminated.
//! The package is built by the Makefile before the suite runs (PG_REAPER_DEB names it).

use pg_reaper_integration::*;
use std::path::PathBuf;
use std::process::Command;

/// The package under test, or None (the test reports itself skipped) when none was built.
fn package(test: &str) -> Option<PathBuf> {
    match std::env::var_os("PG_REAPER_DEB") {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            skip(
                test,
                "no package built (make test builds one: PG_REAPER_DEB)",
            );
            None
        }
    }
}

fn dpkg_deb(args: &[&str]) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .output()
        .expect("dpkg-deb");
    assert!(
        out.status.success(),
        "dpkg-deb {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_package_has_the_debian_layout_for_its_major() {
    let Some(deb) = package("packaging::the_package_has_the_debian_layout_for_its_major") else {
        return;
    };
    let major = server_major();
    let deb = deb.to_str().unwrap();
    let name = format!("postgresql-{major}-pg-reaper");
    assert!(
        deb.ends_with(&format!("{name}_{}-1_amd64.deb", pg_reaper_version())),
        "{deb}"
    );
    assert_eq!(dpkg_deb(&["--field", deb, "Package"]).trim(), name);
    assert_eq!(
        dpkg_deb(&["--field", deb, "Version"]).trim(),
        format!("{}-1", pg_reaper_version())
    );
    let depends = dpkg_deb(&["--field", deb, "Depends"]);
    assert!(
        depends.trim().starts_with(&format!("postgresql-{major},"))
            || depends.trim() == format!("postgresql-{major}"),
        "{depends}"
    );
    let mut files: Vec<String> = dpkg_deb(&["--contents", deb])
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| l.split_whitespace().last().unwrap().to_string())
        .collect();
    files.sort();
    let lib = format!("./usr/lib/postgresql/{major}/lib/");
    let ext = format!("./usr/share/postgresql/{major}/extension/");
    let doc = format!("./usr/share/doc/{name}/");
    let mut expected = vec![
        format!("{lib}pg_reaper.so"),
        format!("{ext}pg_reaper.control"),
        format!("{ext}pg_reaper--{}.sql", pg_reaper_version()),
        format!("{doc}changelog.Debian.gz"),
        format!("{doc}copyright"),
    ];
    // Every upgrade script of the source tree.
    for entry in
        std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sql")).unwrap()
    {
        let file = entry.unwrap().file_name().into_string().unwrap();
        if file.starts_with("pg_reaper--") {
            expected.push(format!("{ext}{file}"));
        }
    }
    expected.sort();
    assert_eq!(files, expected);
    // Root-owned, files 0644, directories 0755.
    for line in dpkg_deb(&["--contents", deb]).lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[1], "root/root", "{line}");
        let mode = fields[0];
        assert!(mode == "drwxr-xr-x" || mode == "-rw-r--r--", "{line}");
    }
}

#[test]
fn the_package_installs_and_works_on_a_clean_debian_12_root() {
    let Some(deb) = package("packaging::the_package_installs_and_works_on_a_clean_debian_12_root")
    else {
        return;
    };
    if server_major() != 15 {
        return skip(
            "packaging::the_package_installs_and_works_on_a_clean_debian_12_root",
            &format!(
                "Debian 12 ships PostgreSQL 15 only; the {} package's layout is checked instead",
                server_major()
            ),
        );
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("package-test.sh");
    let out = Command::new(&script)
        .arg(&deb)
        .output()
        .expect("package-test.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    assert!(out.status.success(), "{stdout}{stderr}");
    for line in [
        "Status: install ok installed".to_string(),
        format!("installed {}", pg_reaper_version()),
        "victim terminated".into(),
        "audited 1".into(),
        "left 0".into(),
        "no test-only settings".into(),
    ] {
        assert!(
            stdout.lines().any(|l| l.trim() == line),
            "{line}:\n{stdout}"
        );
    }
}

#[test]
fn the_pgxn_metadata_names_this_version() {
    // META.json is written by hand: a release must not ship the last one's version.
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../META.json"))
            .unwrap(),
    )
    .unwrap();
    let version = pg_reaper_version();
    assert_eq!(meta["version"], serde_json::json!(version));
    assert_eq!(
        meta["provides"]["pg_reaper"]["version"],
        serde_json::json!(version)
    );
}
