//! Reading the text records a point keeps of its disk (`boot/records.rs`): what `sfdisk
//! --dump`, `blkid`, `lsblk --json` and `/etc/fstab` said when the point was taken.

use std::collections::BTreeMap;

/// One partition line of an `sfdisk --dump`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartLine {
    /// The partition's device name on the machine the dump came from (`/dev/sda2`).
    pub node: String,
    pub number: u32,
    pub start: u64,
    pub sectors: u64,
    pub kind: String,
    /// GPT: the partition's unique GUID (what `PARTUUID=` names).
    pub uuid: Option<String>,
    pub name: Option<String>,
}

/// An `sfdisk --dump`, and the script that writes its table to another disk.
#[derive(Debug, Clone)]
pub struct Dump {
    pub label: String,
    pub sector_size: u64,
    pub parts: Vec<PartLine>,
    /// The dump without its `device:` line (the old disk's name) and `last-lba:` (the last
    /// usable sector of the old disk's size: a larger disk gets its own), for `sfdisk DEV`.
    pub script: String,
}

fn number_of(node: &str) -> Option<u32> {
    let digits: String = node
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().ok()
}

/// `name=value` fields of a partition line; values may be quoted.
fn fields(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(q) = rest.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            value = q[..end].to_string();
            rest = q.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        out.insert(key, value);
    }
    out
}

pub fn parse_sfdisk(text: &str) -> Result<Dump, String> {
    let mut label = String::new();
    let mut sector_size = 512;
    let mut parts = Vec::new();
    let mut script = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("device:") || t.starts_with("last-lba:") {
            continue;
        }
        script.push_str(line);
        script.push('\n');
        if let Some(v) = t.strip_prefix("label:") {
            label = v.trim().to_string();
        } else if let Some(v) = t.strip_prefix("sector-size:") {
            sector_size = v.trim().parse().map_err(|_| format!("sector-size {v:?}"))?;
        } else if let Some((node, rest)) = t.split_once(" : ") {
            let f = fields(rest);
            let num = |k: &str| -> Result<u64, String> {
                f.get(k)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("partition {node}: no {k}"))
            };
            parts.push(PartLine {
                node: node.trim().to_string(),
                number: number_of(node.trim())
                    .ok_or_else(|| format!("partition {node}: no number in its name"))?,
                start: num("start")?,
                sectors: num("size")?,
                kind: f.get("type").cloned().unwrap_or_default(),
                uuid: f.get("uuid").cloned(),
                name: f.get("name").cloned(),
            });
        }
    }
    if label.is_empty() {
        return Err("no label: line".into());
    }
    Ok(Dump {
        label,
        sector_size,
        parts,
        script,
    })
}

/// `blkid`'s output: for each device, its tags (`TYPE`, `UUID`, `LABEL`, `PARTUUID` …).
pub fn parse_blkid(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((dev, rest)) = line.split_once(": ") else {
            continue;
        };
        let mut tags = BTreeMap::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek() == Some(&' ') {
                chars.next();
            }
            let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
            if key.is_empty() || chars.next() != Some('"') {
                break;
            }
            let mut value = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
            tags.insert(key, value);
        }
        out.insert(dev.to_string(), tags);
    }
    out
}

/// `FSVER` of each device path in an `lsblk --json --output-all` record (`FAT32` …).
pub fn lsblk_versions(text: &str) -> BTreeMap<String, String> {
    fn walk(v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        if let Some(list) = v.as_array() {
            for d in list {
                if let (Some(p), Some(ver)) = (
                    d.get("path").and_then(|p| p.as_str()),
                    d.get("fsver").and_then(|p| p.as_str()),
                ) {
                    out.insert(p.to_string(), ver.to_string());
                }
                if let Some(c) = d.get("children") {
                    walk(c, out);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        if let Some(b) = v.get("blockdevices") {
            walk(b, &mut out);
        }
    }
    out
}

/// What `dumpe2fs -h` says of an ext filesystem that `mke2fs` can make again: its features
/// (less those only a mounted or damaged filesystem has) and its inode size.
pub fn parse_dumpe2fs(text: &str) -> (Option<Vec<String>>, Option<String>) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let features = field("Filesystem features:").map(|v| {
        v.split_whitespace()
            .filter(|f| !matches!(*f, "needs_recovery" | "orphan_present" | "(none)"))
            .map(str::to_string)
            .collect()
    });
    (features, field("Inode size:"))
}

/// One line of fstab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabEntry {
    pub spec: String,
    pub point: String,
    pub fstype: String,
}

pub fn parse_fstab(text: &str) -> Vec<FstabEntry> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(FstabEntry {
                spec: crate::store::place::unescape(f.next()?),
                point: crate::store::place::unescape(f.next()?),
                fstype: f.next()?.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sfdisk_dump_gives_partitions_and_a_script_without_the_old_disk() {
        let d = parse_sfdisk(
            "label: gpt\nlabel-id: 7E1A\ndevice: /dev/loop0\nunit: sectors\nfirst-lba: 2048\nlast-lba: 131038\nsector-size: 512\n\n/dev/loop0p1 : start=        2048, size=        2048, type=21686148-6449-6E6F-744E-656564454649, uuid=E062\n/dev/nvme0n1p12 : start=4096, size=40960, type=0FC6, uuid=8446, name=\"root, main\"\n",
        )
        .unwrap();
        assert_eq!(d.label, "gpt");
        assert_eq!(d.parts.len(), 2);
        assert_eq!(d.parts[1].number, 12);
        assert_eq!(d.parts[1].start, 4096);
        assert_eq!(d.parts[1].sectors, 40960);
        assert_eq!(d.parts[1].name.as_deref(), Some("root, main"));
        assert_eq!(d.parts[0].uuid.as_deref(), Some("E062"));
        assert!(!d.script.contains("device:") && !d.script.contains("last-lba"));
        assert!(d.script.contains("first-lba: 2048"));
    }

    #[test]
    fn blkid_tags_with_quotes_and_spaces() {
        let b = parse_blkid(
            "/dev/vda1: LABEL=\"my \\\"root\\\"\" UUID=\"abcd\" BLOCK_SIZE=\"4096\" TYPE=\"ext4\" PARTUUID=\"p-1\"\n/dev/vda2: PARTUUID=\"p-2\"\n",
        );
        assert_eq!(b["/dev/vda1"]["LABEL"], "my \"root\"");
        assert_eq!(b["/dev/vda1"]["TYPE"], "ext4");
        assert_eq!(b["/dev/vda2"]["PARTUUID"], "p-2");
        assert!(!b["/dev/vda2"].contains_key("TYPE"));
    }

    #[test]
    fn dumpe2fs_features_without_the_runtime_ones() {
        let (f, i) = parse_dumpe2fs(
            "Filesystem volume name:   root\nFilesystem features:      has_journal ext_attr needs_recovery extent 64bit orphan_present metadata_csum\nInode size:\t          256\n",
        );
        assert_eq!(
            f.unwrap(),
            [
                "has_journal",
                "ext_attr",
                "extent",
                "64bit",
                "metadata_csum"
            ]
        );
        assert_eq!(i.as_deref(), Some("256"));
    }

    #[test]
    fn fstab_entries_with_escaped_spaces() {
        let f = parse_fstab("# c\nUUID=1 / ext4 errors=remount-ro 0 1\n\nLABEL=x /srv/my\\040data xfs defaults 0 2\n");
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].point, "/srv/my data");
        assert_eq!(f[0].spec, "UUID=1");
    }
}
