//! The worst race of hand-written kill loops: a victim exits and the kernel hands its pid to a
//! new, innocent backend before the signal. Alone in its own test binary, so that no other test
//! forks processes while it steers the kernel's next pid; and its tests take turns (a lock), as
//! one test's steering could hand the other's freed pid to a new backend.
//!
//! There are two windows. Before the re-check (between choosing the victims and looking at them
//! again), a reused pid is caught by its new start time. Between a victim's identity check and
//! its signal, the victim is pinned: it cannot leave the proc array, so it cannot exit, so the
//! kernel cannot give its pid to anyone.

use pg_reaper_integration::*;
use std::sync::Mutex;

/// Held by each test for its whole run.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes the kernel's next pid `pid` (as root, in the initial pid namespace).
fn steer_next_pid_to(pid: i32) {
    std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
        .expect("root can set ns_last_pid");
}

/// The process's state letter (R, S, D, Z, ...) from /proc, or None when it is gone.
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The start time of process `pid` (in clock ticks since boot), if there is one: it tells a
/// process from a later one given the same pid.
fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; the fields after "(comm)" start at field 3.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Forks a child that exits at once, and returns its pid.
fn fork_a_child() -> i32 {
    // SAFETY: the child only calls _exit; the parent reaps it.
    unsafe {
        let child = libc::fork();
        assert!(child >= 0, "fork failed");
        if child == 0 {
            libc::_exit(0);
        }
        let mut status = 0;
        libc::waitpid(child, &mut status, 0);
        child
    }
}

#[test]
fn a_pid_reused_by_a_new_backend_is_never_signalled() {
    let _turn = one_at_a_time();
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("reused");
    let victim = cluster.session("app", &tag);
    let pid = victim.pid;
    let mut newcomer = None;
    let rows = terminate_with_window(
        &cluster,
        &format!(r#"{{"application_name": "{tag}"}}"#),
        || {
            drop(victim);
            assert!(cluster.wait_gone(pid));
            // Make the kernel hand the same pid to the next backend the postmaster forks.
            for _ in 0..50 {
                steer_next_pid_to(pid);
                let s = cluster.session("app", &tag);
                if s.pid == pid {
                    newcomer = Some(s);
                    return;
                }
            }
            panic!("could not get pid {pid} reused");
        },
    );
    let newcomer = newcomer.unwrap();
    assert_one_vanished(&rows, pid, "its pid was reused by another backend");
    assert_eq!(
        newcomer.run("SELECT 1"),
        Ended::Ok,
        "the new backend was not signalled"
    );
}

#[test]
fn a_victims_pid_cannot_change_hands_between_its_check_and_its_signal() {
    let _turn = one_at_a_time();
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("pinned");
    let victim = cluster.session("app", &tag);
    let bystander = cluster.session("app", "bystander");
    let pid = victim.pid;
    let victim_started = process_start_time(pid).expect("the victim's process");
    let mut forks = Vec::new();
    let rows = call_in_window(
        &cluster,
        Window::BeforeSignal,
        "reaper.terminate_matching($1::text::jsonb, 5000)",
        &format!(r#"{{"application_name": "{tag}"}}"#),
        |observer| {
            // The victim's client leaves and its backend starts to exit: it clears its status
            // entry at once...
            drop(victim);
            let listed = "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = $1";
            let deadline = std::time::Instant::now() + PATIENCE;
            while {
                observer
                    .batch_execute("SELECT pg_stat_clear_snapshot()")
                    .unwrap();
                observer
                    .query_one(listed, &[&pid])
                    .unwrap()
                    .get::<_, i64>(0)
                    == 1
            } {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the victim never began to exit"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            // ...but cannot finish while it is pinned: the process is still there, not even a
            // zombie, and every fork the kernel makes, steered at its pid, lands elsewhere.
            for _ in 0..20 {
                steer_next_pid_to(pid);
                forks.push(fork_a_child());
            }
            let state = process_state(pid);
            assert!(
                state.is_some_and(|s| s != 'Z'),
                "the victim finished exiting inside the window: {state:?}"
            );
        },
    );
    assert!(
        !forks.contains(&pid),
        "the kernel handed out {pid}: {forks:?}"
    );
    // The one signal went to the victim itself, in its last moments, and to nobody else.
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].pid, pid);
    assert_eq!(rows[0].outcome, "terminated", "{rows:?}");
    // The victim's process is gone. (Not "its pid is no longer in pg_stat_activity": the pid is
    // free now and steered at, so the next backend, a new connection of this very check, may
    // get it.)
    let deadline = std::time::Instant::now() + PATIENCE;
    while process_start_time(pid) == Some(victim_started) {
        assert!(
            std::time::Instant::now() < deadline,
            "the victim is still there"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(bystander.run("SELECT 1"), Ended::Ok);
    assert_eq!(cluster.reaper_lines(pid).len(), 1);
}
