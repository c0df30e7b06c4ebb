//! One damaged replica file or pack frame costs that file, not the point (issue 9 item 10): a
//! `--target` restore writes everything intact and exits 5 naming the damaged paths; in place,
//! the damage is found before the first write and refused, or left out with `--skip-damaged`.

use std::path::Path;

use crate::util::*;

/// Which damage a case does, and the paths it costs at point 1 (a hardlink follower of a
/// damaged file is damaged with it).
#[derive(Clone, Copy)]
enum Damage {
    /// The replica's `etc/a`, from which point 1's version is rebuilt through a delta.
    Replica,
    /// The frame in point 2's pack that holds point 1's `data/b`.
    Frame,
}

impl Damage {
    fn paths(self) -> &'static [&'static str] {
        match self {
            Damage::Replica => &["etc/a", "etc/a.link"],
            Damage::Frame => &["data/b"],
        }
    }

    fn apply(self, store: &Path) {
        match self {
            Damage::Replica => {
                let p = store.join("replica/etc/a");
                flip(&p, std::fs::metadata(&p).unwrap().len() / 2, 0x20);
            }
            Damage::Frame => {
                let c = rusqlite::Connection::open(store.join("index.db")).unwrap();
                let (point, off, len): (i64, i64, i64) = c
                    .query_row(
                        "SELECT point_id, frame_offset, frame_len FROM changes
                         WHERE path = CAST('data/b' AS BLOB) AND frame_len > 0",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .unwrap();
                flip(
                    &store.join(format!("packs/{point}.pack")),
                    (off + len / 2) as u64,
                    0x20,
                );
            }
        }
    }
}

struct Case {
    lab: Lab,
    /// The tree at point 1 and at point 2 (the system's state now).
    fp1: Fingerprint,
    fp2: Fingerprint,
}

/// Point 1, then point 2 in which every file of point 1 changed or went, so restoring point 1
/// in place writes them all; then the damage.
fn damaged_case(damage: Damage) -> Case {
    let lab = Lab::new();
    lab.run_sh(
        "mkdir -p etc data && seq 1 500 > etc/a && ln etc/a etc/a.link && echo c1 > etc/c
         echo d > etc/d && head -c 60000 /dev/urandom > data/b && echo k > data/keep",
    );
    assert_eq!(lab.snapshot(), 1);
    let fp1 = fingerprint(&lab.sys());
    lab.run_sh(
        "seq 1 900 >> etc/a && echo c2 > etc/c && rm etc/d && echo e > etc/e
         head -c 60000 /dev/urandom > data/b",
    );
    assert_eq!(lab.snapshot(), 2);
    let fp2 = fingerprint(&lab.sys());
    damage.apply(&lab.store());
    Case { lab, fp1, fp2 }
}

fn without(fp: &Fingerprint, paths: &[&str]) -> Fingerprint {
    let mut fp = fp.clone();
    for p in paths {
        assert!(fp.remove(p.as_bytes()).is_some(), "{p} is in the tree");
    }
    fp
}

fn points(lab: &Lab) -> usize {
    let out = SNAPSHOT.expect(0, &["list", "--json", "--store", Lab::s(&lab.store())]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["points"].as_array().unwrap().len()
}

fn in_place(c: &Case, extra: &[&str]) -> std::process::Output {
    RESTORE.run(&c.lab.restore_args(1, extra))
}

/// Exit 5, naming every path the damage costs.
#[track_caller]
fn assert_names_the_damage(out: &std::process::Output, damage: Damage) {
    assert_eq!(out.status.code(), Some(5), "{}", text(out));
    for p in damage.paths() {
        assert!(
            text(out).contains(&format!("DAMAGED /{p}")),
            "{p} is named: {}",
            text(out)
        );
    }
}

const BOTH: [Damage; 2] = [Damage::Replica, Damage::Frame];

#[test]
fn a_target_restore_writes_everything_intact_and_names_the_damage() {
    for damage in BOTH {
        let c = damaged_case(damage);
        let target = c.lab.target("restored");
        let out = RESTORE.run(&c.lab.restore_to_args(1, &target, &[]));
        assert_names_the_damage(&out, damage);
        for p in damage.paths() {
            assert!(
                std::fs::symlink_metadata(target.join(p)).is_err(),
                "the damaged {p} was not written"
            );
        }
        let got = fingerprint(&target);
        assert_same(
            &without(&c.fp1, damage.paths()),
            &got,
            "everything intact in the target",
        );
        // A follower of a damaged leader is damaged, not a link that failed for want of it.
        assert!(!text(&out).contains("warning:"), "{}", text(&out));
    }
}

#[test]
fn an_in_place_restore_stops_before_its_first_write_and_names_the_damage() {
    for damage in BOTH {
        let c = damaged_case(damage);
        let before = points(&c.lab);
        let out = in_place(&c, &[]);
        assert_eq!(out.status.code(), Some(5), "{}", text(&out));
        let msg = text(&out);
        assert!(
            msg.contains(&format!("/{}", damage.paths()[0])) && msg.contains("--skip-damaged"),
            "{msg}"
        );
        assert!(msg.contains("Nothing was written"), "{msg}");
        assert_same(&c.fp2, &fingerprint(&c.lab.sys()), "the system, untouched");
        assert_eq!(points(&c.lab), before, "no pre-restore point was taken");

        // A dry run shows the damage too, before anyone confirms.
        let out = in_place(&c, &["--dry-run"]);
        assert_eq!(out.status.code(), Some(5), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("DAMAGED /{}", damage.paths()[0])),
            "{}",
            text(&out)
        );
        assert_same(&c.fp2, &fingerprint(&c.lab.sys()), "after the dry run");
    }
}

#[test]
fn skip_damaged_restores_everything_else_in_place() {
    for damage in BOTH {
        let c = damaged_case(damage);
        let out = in_place(&c, &["--skip-damaged"]);
        assert_names_the_damage(&out, damage);
        // The damaged paths are left as they were; everything else is point 1.
        let mut want = c.fp1.clone();
        for p in damage.paths() {
            want.insert(p.as_bytes().to_vec(), c.fp2[p.as_bytes()].clone());
        }
        assert_same(
            &want,
            &fingerprint(&c.lab.sys()),
            "the system after --skip-damaged",
        );
    }
}
