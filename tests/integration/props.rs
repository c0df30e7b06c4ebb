//! Random sequences of tree operations over many points: after each step every point restores
//! equal to the tree it was taken of, and again after the oldest points are pruned.

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use proptest::prelude::*;

use crate::util::*;

const PATHS: [&str; 7] = [
    "f0", "f1", "d0/f2", "d0/f3", "d1/f4", "d1/d2/f5", "d0/d3/f6",
];
const DIRS: [&str; 4] = ["d0", "d1", "d1/d2", "d0/d3"];

#[derive(Debug, Clone)]
enum Op {
    Create(usize, Vec<u8>),
    Append(usize, Vec<u8>),
    Overwrite(usize, Vec<u8>),
    Truncate(usize, u64),
    Rename(usize, usize),
    Delete(usize),
    Chmod(usize, u32),
    Chown(usize, u32),
    Xattr(usize, u8),
    Symlink(usize, usize),
    HardlinkAdd(usize, usize),
    HardlinkBreak(usize),
    MkDir(usize),
    RmDir(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PATHS.len();
    let data = proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        (p.clone(), data.clone()).prop_map(|(i, d)| Op::Create(i, d)),
        (p.clone(), data.clone()).prop_map(|(i, d)| Op::Append(i, d)),
        (p.clone(), data).prop_map(|(i, d)| Op::Overwrite(i, d)),
        (p.clone(), 0u64..200).prop_map(|(i, n)| Op::Truncate(i, n)),
        (p.clone(), p.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        p.clone().prop_map(Op::Delete),
        (
            p.clone(),
            prop::sample::select(vec![0o600, 0o644, 0o755, 0o4755, 0o2750, 0o1777, 0o400])
        )
            .prop_map(|(i, m)| Op::Chmod(i, m)),
        (p.clone(), 0u32..3).prop_map(|(i, u)| Op::Chown(i, 1000 + u)),
        (p.clone(), any::<u8>()).prop_map(|(i, v)| Op::Xattr(i, v)),
        (p.clone(), p.clone()).prop_map(|(a, b)| Op::Symlink(a, b)),
        (p.clone(), p.clone()).prop_map(|(a, b)| Op::HardlinkAdd(a, b)),
        p.clone().prop_map(Op::HardlinkBreak),
        (0..DIRS.len()).prop_map(Op::MkDir),
        (0..DIRS.len()).prop_map(Op::RmDir),
    ]
}

/// Applies one operation; operations that do not fit the current tree do nothing.
fn apply(root: &Path, op: &Op) {
    let p = |i: usize| root.join(PATHS[i]);
    let mk_parent = |path: &Path| {
        let _ = std::fs::create_dir_all(path.parent().unwrap());
    };
    let _ = match op {
        Op::Create(i, d) | Op::Overwrite(i, d) => {
            mk_parent(&p(*i));
            if matches!(op, Op::Overwrite(..)) {
                std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(p(*i))
                    .and_then(|mut f| std::io::Write::write_all(&mut f, d))
            } else {
                let _ = std::fs::remove_file(p(*i));
                std::fs::write(p(*i), d)
            }
        }
        Op::Append(i, d) => std::fs::OpenOptions::new()
            .append(true)
            .open(p(*i))
            .and_then(|mut f| std::io::Write::write_all(&mut f, d)),
        Op::Truncate(i, n) => std::fs::OpenOptions::new()
            .write(true)
            .open(p(*i))
            .and_then(|f| f.set_len(*n)),
        Op::Rename(a, b) => {
            mk_parent(&p(*b));
            std::fs::rename(p(*a), p(*b))
        }
        Op::Delete(i) => std::fs::remove_file(p(*i)),
        Op::Chmod(i, m) => std::fs::set_permissions(p(*i), std::fs::Permissions::from_mode(*m)),
        Op::Chown(i, u) if is_root() => std::os::unix::fs::lchown(p(*i), Some(*u), Some(*u)),
        Op::Chown(..) => Ok(()),
        Op::Xattr(i, v) => {
            let path = p(*i);
            if path.is_file() && !path.is_symlink() {
                let name = if v % 3 == 0 { "user.b" } else { "user.a" };
                rustix::fs::lsetxattr(&path, name, &[*v], rustix::fs::XattrFlags::empty())
                    .map_err(Into::into)
            } else {
                Ok(())
            }
        }
        Op::Symlink(a, b) => {
            let _ = std::fs::remove_file(p(*a));
            mk_parent(&p(*a));
            symlink(format!("../{}", PATHS[*b]), p(*a))
        }
        Op::HardlinkAdd(a, b) if a != b && p(*a).is_file() && !p(*a).is_symlink() => {
            let _ = std::fs::remove_file(p(*b));
            mk_parent(&p(*b));
            std::fs::hard_link(p(*a), p(*b))
        }
        Op::HardlinkAdd(..) => Ok(()),
        Op::HardlinkBreak(i) if p(*i).is_file() && !p(*i).is_symlink() => {
            let tmp = root.join("break.tmp");
            std::fs::copy(p(*i), &tmp).and_then(|_| std::fs::rename(&tmp, p(*i)))
        }
        Op::HardlinkBreak(..) => Ok(()),
        Op::MkDir(d) => std::fs::create_dir_all(root.join(DIRS[*d])),
        Op::RmDir(d) => std::fs::remove_dir_all(root.join(DIRS[*d])),
    };
}

fn check_every_point(lab: &Lab, expected: &BTreeMap<i64, Fingerprint>, when: &str) {
    // One converging target: each point is restored over the tree of the previous one.
    for (id, want) in expected {
        lab.restore(*id, &lab.target("check"));
        assert_same(
            want,
            &fingerprint(&lab.target("check")),
            &format!("{when}: point {id}"),
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, max_shrink_iters: 50, ..ProptestConfig::default() })]

    #[test]
    fn every_point_restores_exactly_after_random_changes(steps in proptest::collection::vec(proptest::collection::vec(op(), 1..6), 2..6)) {
        let lab = Lab::new();
        let mut expected = BTreeMap::new();
        for (n, ops) in steps.iter().enumerate() {
            for o in ops {
                apply(&lab.sys(), o);
            }
            expected.insert(lab.snapshot(), fingerprint(&lab.sys()));
            check_every_point(&lab, &expected, &format!("after step {n}"));
        }
        SNAPSHOT.expect(0, &["prune", "--oldest", "1", "--store", Lab::s(&lab.store())]);
        let oldest = *expected.keys().next().unwrap();
        expected.remove(&oldest);
        check_every_point(&lab, &expected, "after pruning the oldest");
        SNAPSHOT.expect(0, &["verify", "--full", "--store", Lab::s(&lab.store())]);
    }
}
