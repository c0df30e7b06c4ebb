//! Hardlink groups cut by a selection (`--path`, or a pattern a restore must not touch): a
//! follower whose leader is not restored must not be linked to the target's copy of that
//! leader, which may hold other content or not exist at all.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;

use crate::fsio;
use crate::model::{Entry, Kind, Packed, RelPath};

/// Gives each group whose leader is missing from `want` (sorted by path) a leader inside it:
/// its first member, rebuilt from the store by its own path (each path keeps its own content
/// history), the others linked to it. Returns, for each new leader, the leader the point
/// recorded.
pub fn relead(want: &mut [(RelPath, Packed)]) -> HashMap<RelPath, RelPath> {
    // Looked up in the sorted list itself: a set of every leading path would cost a restore of
    // a million files 70 MiB (issue 10: memory per path); only followers are unpacked.
    let leads = |want: &[(RelPath, Packed)], l: &RelPath| {
        want.binary_search_by(|(p, _)| p.cmp(l))
            .is_ok_and(|i| want[i].1.kind() == Kind::File && !want[i].1.has_link())
    };
    let orphans: Vec<(usize, Entry)> = (0..want.len())
        .filter(|&i| want[i].1.has_link())
        .map(|i| (i, want[i].1.get()))
        .filter(|(_, e)| e.link.as_ref().is_some_and(|l| !leads(want, l)))
        .collect();
    let mut new_leader: HashMap<RelPath, RelPath> = HashMap::new();
    let mut recorded = HashMap::new();
    for (i, mut e) in orphans {
        let path = &want[i].0;
        let old = e.link.take().expect("an orphan follows a leader");
        match new_leader.get(&old) {
            Some(l) => e.link = Some(l.clone()),
            None => {
                new_leader.insert(old.clone(), path.clone());
                recorded.insert(path.clone(), old);
            }
        }
        want[i].1 = Packed::new(&e);
    }
    recorded
}

/// For each new leader, the inode (dev, ino) its recorded leader has in the target now: a
/// member that still shares it, with the point's content, needs no rewrite (the link the point
/// recorded is intact, and breaking it would change nothing the selection holds).
pub fn recorded_leader_inodes(
    target: BorrowedFd,
    recorded: &HashMap<RelPath, RelPath>,
) -> HashMap<RelPath, (u64, u64)> {
    recorded
        .iter()
        .filter_map(|(new, old)| {
            let fd = fsio::open_beneath(target, old, rustix::fs::OFlags::PATH).ok()?;
            let st = rustix::fs::fstat(&fd).ok()?;
            Some((new.clone(), (st.st_dev, st.st_ino)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(link: Option<&str>) -> Entry {
        Entry {
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: Default::default(),
            rdev: 0,
            target: None,
            hash: None,
            xattrs: Default::default(),
            flags: 0,
            link: link.map(|l| l.as_bytes().to_vec()),
            sparse: false,
            ino: 0,
            ctime: Default::default(),
        }
    }

    #[test]
    fn the_first_selected_member_leads_the_rest() {
        let mut want: Vec<(RelPath, Packed)> = [
            ("opt/a", Some("usr/l")),
            ("opt/b", Some("usr/l")),
            ("opt/c", None),
            ("opt/d", Some("opt/c")),
        ]
        .iter()
        .map(|(p, l)| (p.as_bytes().to_vec(), Packed::new(&file(*l))))
        .collect();
        let recorded = relead(&mut want);
        let link = |i: usize| want[i].1.get().link;
        assert_eq!(link(0), None);
        assert_eq!(link(1).as_deref(), Some(&b"opt/a"[..]));
        assert_eq!(link(2), None);
        assert_eq!(link(3).as_deref(), Some(&b"opt/c"[..]));
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[&b"opt/a".to_vec()], b"usr/l".to_vec());
    }
}
