//! The operator's session, driven through a real pseudo-terminal: the listing, the number, the
//! typed `yes`; `no`, Ctrl-C and unknown numbers change nothing.

use std::process::Command;

use rexpect::process::WaitStatus;
use rexpect::session::PtySession;

use crate::util::*;

fn upgraded() -> (Lab, Fingerprint, Fingerprint) {
    let lab = Lab::new();
    lab.run_sh(
        "mkdir -p etc boot && echo 'version 1' > etc/app.conf && echo kernel-1 > boot/vmlinuz",
    );
    let before = fingerprint(&lab.sys());
    lab.snapshot();
    lab.run_sh("echo 'version 2' > etc/app.conf && echo kernel-2 > boot/vmlinuz && echo new > etc/new.conf");
    lab.snapshot();
    let after = fingerprint(&lab.sys());
    (lab, before, after)
}

fn start(lab: &Lab) -> PtySession {
    let mut c = Command::new(RESTORE.path());
    c.args([
        "--root",
        Lab::s(&lab.sys()),
        "--store",
        Lab::s(&lab.store()),
    ])
    .env("TERM", "xterm");
    rexpect::session::spawn_command(c, Some(30_000)).expect("spawn in a pty")
}

fn exit_code(p: &PtySession) -> Option<i32> {
    match p.process().wait().expect("wait") {
        WaitStatus::Exited(_, code) => Some(code),
        _ => None,
    }
}

fn point_count(lab: &Lab) -> usize {
    let out = SNAPSHOT.expect(0, &["list", "--json", "--store", Lab::s(&lab.store())]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["points"]
        .as_array()
        .unwrap()
        .len()
}

/// Up to the question for a number, checking the listing on the way.
fn to_number_prompt(p: &mut PtySession) {
    p.exp_string("Backups currently available:").unwrap();
    p.exp_string("Restore point 1: ").unwrap();
    p.exp_string(" hours, ").unwrap();
    p.exp_string("minutes ago)").unwrap();
    p.exp_string("Restore point 2: ").unwrap();
    p.exp_string("The current server time is").unwrap();
    p.exp_string("will not be touched").unwrap();
    p.exp_string("Enter the number of the restore point to recover to (or press CTRL-C to exit)")
        .unwrap();
}

fn to_yes_prompt(p: &mut PtySession) {
    p.exp_string("Boot-critical paths among them (1): /boot/vmlinuz")
        .unwrap();
    p.exp_string("ARE YOU SURE? THIS WILL REVERT THE FILESYSTEM TO THIS POINT IN TIME!")
        .unwrap();
    p.exp_string("roll").unwrap();
    p.exp_string("To continue and revert the system to a prior point in time, type 'yes'")
        .unwrap();
}

#[test]
fn choosing_a_number_and_typing_yes_restores_it() {
    let (lab, before, _) = upgraded();
    let mut p = start(&lab);
    to_number_prompt(&mut p);
    p.send_line("1").unwrap();
    to_yes_prompt(&mut p);
    p.send_line("yes").unwrap();
    p.exp_string("Restored point 1").unwrap();
    p.exp_string("restore point 3: restore it to roll forward again")
        .unwrap();
    p.exp_eof().unwrap();
    assert_eq!(exit_code(&p), Some(0));
    assert_same(
        &before,
        &fingerprint(&lab.sys()),
        "after the interactive restore",
    );
}

#[test]
fn answering_anything_but_yes_changes_nothing() {
    let (lab, _, after) = upgraded();
    for answer in ["no", "YES", "y", ""] {
        let mut p = start(&lab);
        to_number_prompt(&mut p);
        p.send_line("1").unwrap();
        to_yes_prompt(&mut p);
        p.send_line(answer).unwrap();
        p.exp_string("Nothing was changed").unwrap();
        p.exp_eof().unwrap();
        assert_eq!(exit_code(&p), Some(8), "answer {answer:?}");
        assert_same(
            &after,
            &fingerprint(&lab.sys()),
            &format!("after answering {answer:?}"),
        );
        assert_eq!(
            point_count(&lab),
            2,
            "no safety point was taken for {answer:?}"
        );
    }
}

/// Under `--json`, a restore the operator declines still prints its one JSON document on
/// stdout: the error object, exit code 8.
#[test]
fn a_declined_restore_under_json_prints_its_error_object() {
    let (lab, _, after) = upgraded();
    let json = lab.target("out.json");
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(r#"exec "$0" --root "$1" --store "$2" --point 1 --json > "$3""#)
        .args([
            RESTORE.path().as_os_str(),
            lab.sys().as_os_str(),
            lab.store().as_os_str(),
            json.as_os_str(),
        ])
        .env("TERM", "xterm");
    let mut p = rexpect::session::spawn_command(c, Some(30_000)).expect("spawn in a pty");
    p.exp_string("type 'yes'").unwrap();
    p.send_line("no").unwrap();
    p.exp_string("Nothing was changed").unwrap();
    p.exp_eof().unwrap();
    assert_eq!(exit_code(&p), Some(8));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap())
        .unwrap_or_else(|e| panic!("no JSON on stdout ({e})"));
    assert_eq!(v["schema"], 1, "{v}");
    assert_eq!(v["error"]["exit_code"], 8, "{v}");
    assert_eq!(v["error"]["kind"], "cancelled", "{v}");
    assert_same(&after, &fingerprint(&lab.sys()), "after declining");
}

#[test]
fn ctrl_c_at_either_prompt_changes_nothing() {
    let (lab, _, after) = upgraded();
    let mut p = start(&lab);
    to_number_prompt(&mut p);
    p.send_control('c').unwrap();
    p.exp_eof().unwrap();
    assert_ne!(exit_code(&p), Some(0));
    let mut p = start(&lab);
    to_number_prompt(&mut p);
    p.send_line("1").unwrap();
    to_yes_prompt(&mut p);
    p.send_control('c').unwrap();
    p.exp_eof().unwrap();
    assert_ne!(exit_code(&p), Some(0));
    assert_same(&after, &fingerprint(&lab.sys()), "after Ctrl-C");
    assert_eq!(point_count(&lab), 2);
}

#[test]
fn an_unknown_number_is_asked_again() {
    let (lab, _, after) = upgraded();
    let mut p = start(&lab);
    to_number_prompt(&mut p);
    p.send_line("42").unwrap();
    p.exp_string("There is no restore point").unwrap();
    p.exp_string("Enter the number of the restore point")
        .unwrap();
    p.send_line("two").unwrap();
    p.exp_string("There is no restore point").unwrap();
    p.send_line("2").unwrap();
    p.exp_string("Plan for point 2").unwrap();
    p.exp_string("type 'yes'").unwrap();
    p.send_line("no").unwrap();
    p.exp_eof().unwrap();
    assert_eq!(exit_code(&p), Some(8));
    assert_same(
        &after,
        &fingerprint(&lab.sys()),
        "after choosing and declining",
    );
}

/// Everything a command printed to the pseudo-terminal until it exited.
fn session_output(mut c: Command) -> String {
    c.env("TERM", "xterm");
    let mut p = rexpect::session::spawn_command(c, Some(120_000)).expect("spawn in a pty");
    p.exp_eof().expect("the command ends")
}

#[test]
fn progress_shows_files_bytes_and_rates_on_a_terminal_and_nothing_without_one() {
    let lab = Lab::new();
    lab.run_sh(
        "mkdir -p d && for i in $(seq 1 400); do seq 1 $i > d/f$i; done && head -c 48000000 /dev/urandom > big.bin",
    );
    let snapshot = || {
        let mut c = Command::new(SNAPSHOT.path());
        c.args([
            "--root",
            Lab::s(&lab.sys()),
            "--store",
            Lab::s(&lab.store()),
        ]);
        c
    };
    let out = session_output(snapshot());
    for part in [
        "scanning: ",
        "recording changes: ",
        "/403 files (",
        "files/s",
        "MiB/",
        "B/s)",
    ] {
        assert!(
            out.contains(part),
            "no {part:?} in the snapshot's terminal output: {out}"
        );
    }
    let id = *lab.point_ids().last().unwrap();
    let mut restore = Command::new(RESTORE.path());
    restore.args(lab.restore_to_args(id, &lab.target("t"), &[]));
    let out = session_output(restore);
    for part in ["restoring: ", "files/s", "MiB/", "B/s)"] {
        assert!(
            out.contains(part),
            "no {part:?} in the restore's terminal output: {out}"
        );
    }
    // Without a terminal (cron, a pipe): the report only.
    lab.run_sh("echo changed > d/f1");
    let out = SNAPSHOT.expect(
        0,
        &[
            "--root",
            Lab::s(&lab.sys()),
            "--store",
            Lab::s(&lab.store()),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    for part in ["scanning", "recording changes", "files/s", "B/s"] {
        assert!(
            !err.contains(part),
            "{part:?} printed without a terminal: {err}"
        );
    }
}
