//! Hardlink groups cut by a selection (`--path`, or a pattern a restore must not touch): a
//! follower whose leader is not restored must not be linked to the target's copy of that
//! leader, which may hold other content or not exist at all.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;

use crate::fsio;
use crate::model::{Entry, Kind, RelPath};

/// Gives each group whose leader is missing from `want` (sorted by path) a leader inside it:
/// its first member, rebuilt from the store by its own path (each path keeps its own content
/// history), the others linked to it. Returns, for each new leader, the leader the point
/// recorded.
pub fn relead(want: &mut [(RelPath, Entry)]) -> HashMap<RelPath, RelPath> {
    let present: std::collections::HashSet<RelPath> = want
        .iter()
        .filter(|(_, e)| e.kind == Kind::File && e.link.is_none())
        .map(|(p, _)| p.clone())
        .collect();
    let mut new_leader: HashMap<RelPath, RelPath> = HashMap::new();
    let mut recorded = HashMap::new();
    for (path, e) in want.iter_mut() {
        let Some(old) = e.link.clone().filter(|l| !present.contains(l)) else {
            continue;
        };
        match new_leader.get(&old) {
            Some(l) => e.link = Some(l.clone()),
            None => {
                e.link = None;
                new_leader.insert(old.clone(), path.clone());
                recorded.insert(path.clone(), old);
            }
        }
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
        let mut want = vec![
            (b"opt/a".to_vec(), file(Some("usr/l"))),
            (b"opt/b".to_vec(), file(Some("usr/l"))),
            (b"opt/c".to_vec(), file(None)),
            (b"opt/d".to_vec(), file(Some("opt/c"))),
        ];
        let recorded = relead(&mut want);
        assert_eq!(want[0].1.link, None);
        assert_eq!(want[1].1.link.as_deref(), Some(&b"opt/a"[..]));
        assert_eq!(want[3].1.link.as_deref(), Some(&b"opt/c"[..]));
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[&b"opt/a".to_vec()], b"usr/l".to_vec());
    }
}
