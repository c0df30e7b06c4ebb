//! A restore on a live system: files come and go in one directory while the restore plans and
//! applies; the restore finishes and everything else equals the point.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::util::*;

const BUSY: &str = "var/spool/busy";

/// Keeps deleting and recreating the point's files of the busy directory, and creating,
/// appending to and deleting files of its own there, until told to stop.
fn churn(dir: &Path, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let mut rounds = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for i in 0..400 {
                let old = dir.join(format!("old{i}"));
                let _ = std::fs::remove_file(&old);
                let _ = std::fs::write(&old, format!("rewritten {rounds} {i}\n"));
                let new = dir.join(format!("new{}", i % 50));
                if i % 3 == 0 {
                    let _ = std::fs::remove_file(&new);
                } else {
                    use std::io::Write;
                    if let Ok(mut f) = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&new)
                    {
                        let _ = writeln!(f, "line {rounds} {i}");
                    }
                }
            }
            rounds += 1;
        }
        rounds
    })
}

fn outside_busy(f: Fingerprint) -> Fingerprint {
    f.into_iter()
        .filter(|(p, _)| !p.starts_with(BUSY.as_bytes()))
        .collect()
}

#[test]
fn an_in_place_restore_finishes_while_files_come_and_go() {
    let lab = Lab::new();
    lab.run_sh(&format!(
        r#"
        mkdir -p etc/app usr/lib/app {BUSY}
        for i in $(seq 1 300); do echo "conf $i" > etc/app/f$i; done
        for i in $(seq 1 40); do head -c 30000 /dev/urandom > usr/lib/app/lib$i.so; done
        for i in $(seq 0 399); do echo "spool $i" > {BUSY}/old$i; done
        "#
    ));
    let point = outside_busy(fingerprint(&lab.sys()));
    lab.snapshot();
    lab.run_sh(
        r#"
        for i in $(seq 1 150); do echo "changed $i" >> etc/app/f$i; done
        rm etc/app/f299 etc/app/f300 && echo new > etc/app/added
        for i in $(seq 1 10); do head -c 30000 /dev/urandom > usr/lib/app/lib$i.so; done
        chmod 600 etc/app/f3
        "#,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let busy = churn(&lab.sys().join(BUSY), stop.clone());
    let mut outs = Vec::new();
    // Twice: a plan against the changed tree, then one against the restored tree (the quick
    // check trusts everything outside the busy directory); both meet the churn.
    for _ in 0..2 {
        outs.push(RESTORE.run(&lab.restore_args(1, &[])));
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = busy.join().unwrap();
    assert!(rounds > 0, "the busy directory was churned");
    for out in &outs {
        assert!(
            matches!(out.status.code(), Some(0) | Some(3)),
            "exit {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_same(
        &point,
        &outside_busy(fingerprint(&lab.sys())),
        "outside the busy directory, after restoring on a live system",
    );
    let leftovers = restorepoint_temps(&lab.sys().join(BUSY));
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}
