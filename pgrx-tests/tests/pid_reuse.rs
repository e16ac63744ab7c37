//! The worst race of hand-written kill loops: a victim exits and the kernel hands its pid to a
//! new, innocent backend before the signal. Alone in its own test binary, so that no other test
//! forks processes while it steers the kernel's next pid.

use pg_reaper_integration::*;

#[test]
fn a_pid_reused_by_a_new_backend_is_never_signalled() {
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
                std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
                    .expect("root can set ns_last_pid");
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
