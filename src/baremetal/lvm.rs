//! LVM in a bare-metal restore: the volume groups a point's `vgcfgbackup` record describes
//! (boot/records.rs keeps the files `vgcfgbackup` wrote, one after another), read enough to
//! plan their rebuild; the rebuild itself hands each file back to LVM (`pvcreate --uuid
//! --restorefile`, `vgcfgrestore`), so that extents, UUIDs and names are LVM's own, not ours.

use serde::Serialize;

/// A volume group as its metadata backup describes it.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeGroup {
    pub name: String,
    pub id: String,
    pub pvs: Vec<PhysicalVolume>,
    pub lvs: Vec<LogicalVolume>,
    /// The `vgcfgbackup` file, for `vgcfgrestore -f`.
    #[serde(skip)]
    pub metadata: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhysicalVolume {
    /// Its UUID, as `pvcreate --uuid` takes it and blkid shows it.
    pub id: String,
    /// The device it was on when the backup was written (LVM calls it a hint).
    pub device: String,
    /// The partition of the rebuilt disk it goes on (set by the plan).
    pub partition: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogicalVolume {
    pub name: String,
    /// The types of its segments (`striped` for a linear or striped volume).
    pub segment_types: Vec<String>,
    /// Hidden volumes are the inner parts of others (a pool's data, a mirror's legs).
    pub visible: bool,
}

impl VolumeGroup {
    /// What `vgcfgrestore` makes again as it was, or why not: thin pools, caches, VDO and
    /// snapshots keep state outside the metadata (a thin pool's mappings, a snapshot's
    /// exception store) that a restore of the metadata alone would leave invalid.
    pub fn unsupported(&self) -> Option<String> {
        let odd: Vec<String> = self
            .lvs
            .iter()
            .flat_map(|lv| {
                lv.segment_types
                    .iter()
                    .filter(|t| !matches!(t.as_str(), "striped" | "linear"))
                    .map(move |t| format!("{} ({t})", lv.name))
            })
            .collect();
        (!odd.is_empty()).then(|| {
            format!(
                "volume group {} holds {}: a bare-metal restore makes linear and striped logical volumes only",
                self.name,
                odd.join(", ")
            )
        })
    }
}

/// The device-mapper name of `vg/lv` (`/dev/mapper/NAME`): each `-` doubled, joined by `-`.
pub fn mapper_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// The volume groups of an `lvm` record (files `vgcfgbackup` wrote, each after a `# volume
/// group NAME` line).
pub fn parse(record: &str) -> Result<Vec<VolumeGroup>, String> {
    match parse_each(record)? {
        (groups, unreadable) if unreadable.is_empty() => Ok(groups),
        (_, unreadable) => Err(unreadable.join("; ")),
    }
}

/// `parse`, group by group: the groups read, and for each group that could not be read its
/// name (from its `# volume group` line) and why. A group this parser does not understand
/// matters only if it lies on the disk being rebuilt, which only the caller can tell.
pub fn parse_each(record: &str) -> Result<(Vec<VolumeGroup>, Vec<String>), String> {
    let mut chunks: Vec<(String, String)> = Vec::new();
    for line in record.lines() {
        if let Some(name) = line.strip_prefix("# volume group ") {
            chunks.push((name.trim().to_string(), String::new()));
        }
        match chunks.last_mut() {
            Some((_, c)) => {
                c.push_str(line);
                c.push('\n');
            }
            None if line.trim().is_empty() => {}
            None => return Err("text before the first `# volume group` line".into()),
        }
    }
    let (mut groups, mut unreadable) = (Vec::new(), Vec::new());
    for (name, c) in chunks {
        match volume_group(&c) {
            Ok(g) => groups.push(g),
            Err(e) => unreadable.push(format!("{name} ({e})")),
        }
    }
    Ok((groups, unreadable))
}

fn volume_group(text: &str) -> Result<VolumeGroup, String> {
    let top = Parser::new(text).section(false)?;
    let (name, vg) = top
        .iter()
        .find_map(|(k, v)| match v {
            Item::Section(s) => Some((k.clone(), s)),
            _ => None,
        })
        .ok_or("no volume group section")?;
    let id = string(vg, "id").ok_or_else(|| format!("volume group {name} has no id"))?;
    let mut pvs = Vec::new();
    for (_, pv) in sections(vg, "physical_volumes") {
        pvs.push(PhysicalVolume {
            id: string(pv, "id").ok_or_else(|| format!("a physical volume of {name} has no id"))?,
            device: string(pv, "device").unwrap_or_default(),
            partition: None,
        });
    }
    let mut lvs = Vec::new();
    for (lv_name, lv) in sections(vg, "logical_volumes") {
        let visible = match get(lv, "status") {
            Some(Val::List(l)) => l.iter().any(|v| matches!(v, Val::Str(s) if s == "VISIBLE")),
            _ => false,
        };
        let segment_types = lv
            .iter()
            .filter_map(|(_, v)| match v {
                Item::Section(seg) => string(seg, "type"),
                _ => None,
            })
            .collect();
        lvs.push(LogicalVolume {
            name: lv_name.clone(),
            segment_types,
            visible,
        });
    }
    Ok(VolumeGroup {
        name,
        id,
        pvs,
        lvs,
        metadata: text.to_string(),
    })
}

/// LVM's configuration syntax: `key = value`, `name { … }`, values strings, numbers or
/// `[ … ]` lists, `#` comments.
#[derive(Debug)]
enum Val {
    Str(String),
    Word(String),
    List(Vec<Val>),
}

#[derive(Debug)]
enum Item {
    Value(Val),
    Section(Vec<(String, Item)>),
}

type Section = Vec<(String, Item)>;

fn get<'a>(s: &'a Section, key: &str) -> Option<&'a Val> {
    s.iter().find_map(|(k, v)| match v {
        Item::Value(v) if k == key => Some(v),
        _ => None,
    })
}

fn string(s: &Section, key: &str) -> Option<String> {
    match get(s, key)? {
        Val::Str(v) | Val::Word(v) => Some(v.clone()),
        Val::List(_) => None,
    }
}

fn sections<'a>(s: &'a Section, key: &str) -> Vec<(&'a String, &'a Section)> {
    s.iter()
        .find_map(|(k, v)| match v {
            Item::Section(inner) if k == key => Some(inner),
            _ => None,
        })
        .map(|inner| {
            inner
                .iter()
                .filter_map(|(k, v)| match v {
                    Item::Section(s) => Some((k, s)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Parser {
            s: text.as_bytes(),
            at: 0,
        }
    }

    fn skip(&mut self) {
        while let Some(&c) = self.s.get(self.at) {
            if c == b'#' {
                while self.s.get(self.at).is_some_and(|&c| c != b'\n') {
                    self.at += 1;
                }
            } else if c.is_ascii_whitespace() {
                self.at += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip();
        self.s.get(self.at).copied()
    }

    fn word(&mut self) -> Result<String, String> {
        self.skip();
        let start = self.at;
        while self
            .s
            .get(self.at)
            .is_some_and(|&c| c.is_ascii_alphanumeric() || b"_.+-".contains(&c))
        {
            self.at += 1;
        }
        if start == self.at {
            return Err(format!("a name expected at byte {start}"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    fn section(&mut self, nested: bool) -> Result<Section, String> {
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None if !nested => return Ok(out),
                None => return Err("a section is not closed".into()),
                Some(b'}') if nested => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(_) => {}
            }
            let key = self.word()?;
            match self.peek() {
                Some(b'{') => {
                    self.at += 1;
                    out.push((key, Item::Section(self.section(true)?)));
                }
                Some(b'=') => {
                    self.at += 1;
                    out.push((key, Item::Value(self.value()?)));
                }
                _ => return Err(format!("`=` or `{{` expected after {key}")),
            }
        }
    }

    fn value(&mut self) -> Result<Val, String> {
        match self.peek() {
            Some(b'"') => {
                self.at += 1;
                let mut v = Vec::new();
                loop {
                    match self.s.get(self.at) {
                        None => return Err("a string is not closed".into()),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            self.at += 1;
                            v.extend(self.s.get(self.at));
                        }
                        Some(&c) => v.push(c),
                    }
                    self.at += 1;
                }
                self.at += 1;
                Ok(Val::Str(String::from_utf8_lossy(&v).into_owned()))
            }
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                loop {
                    match self.peek() {
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Val::List(items));
                        }
                        Some(b',') => self.at += 1,
                        None => return Err("a list is not closed".into()),
                        Some(_) => items.push(self.value()?),
                    }
                }
            }
            _ => Ok(Val::Word(self.word()?)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const BACKUP: &str = r#"# volume group rp-vg
# Generated by LVM2 version 2.03.16(2) (2022-05-18): Tue Dec  1 10:00:00 2026

contents = "Text Format Volume"
version = 1

description = "vgcfgbackup -f /tmp/x/%s"

creation_host = "e2e"	# Linux e2e 6.1.0-50-amd64 #1 SMP x86_64
creation_time = 1764583200	# Tue Dec  1 10:00:00 2026

rp-vg {
	id = "Hs3L0c-3Ssq-CDoE-2B5D-Xxy0-Dd7x-ZWPIbs"
	seqno = 4
	format = "lvm2"			# informational
	status = ["RESIZEABLE", "READ", "WRITE"]
	flags = []
	extent_size = 8192		# 4 Megabytes
	max_lv = 0
	max_pv = 0
	metadata_copies = 0

	physical_volumes {

		pv0 {
			id = "mLxk1E-yQ6m-Tu1d-Mm2L-Kx4v-a8V9-dNMtwQ"
			device = "/dev/vdb2"	# Hint only

			status = ["ALLOCATABLE"]
			flags = []
			dev_size = 1843200	# 900 Megabytes
			pe_start = 2048
			pe_count = 224	# 896 Megabytes
		}
	}

	logical_volumes {

		root {
			id = "aaaaaa-bbbb-cccc-dddd-eeee-ffff-gggggg"
			status = ["READ", "WRITE", "VISIBLE"]
			flags = []
			creation_time = 1764583200	# 2026-12-01 10:00:00 +0000
			creation_host = "e2e"
			segment_count = 1

			segment1 {
				start_extent = 0
				extent_count = 150	# 600 Megabytes

				type = "striped"
				stripe_count = 1	# linear

				stripes = [
					"pv0", 0
				]
			}
		}

		my-swap {
			id = "hhhhhh-bbbb-cccc-dddd-eeee-ffff-gggggg"
			status = ["READ", "WRITE", "VISIBLE"]
			flags = []
			segment_count = 1

			segment1 {
				start_extent = 0
				extent_count = 20
				type = "striped"
				stripe_count = 1
				stripes = [
					"pv0", 150
				]
			}
		}
	}

}
"#;

    #[test]
    fn a_vgcfgbackup_gives_its_group_volumes_and_ids() {
        let mut text = BACKUP.to_string();
        text.push_str(
            &BACKUP
                .replace("rp-vg", "other")
                .replace("\"striped\"", "\"thin-pool\""),
        );
        let vgs = parse(&text).unwrap();
        assert_eq!(vgs.len(), 2);
        let vg = &vgs[0];
        assert_eq!(vg.name, "rp-vg");
        assert_eq!(vg.id, "Hs3L0c-3Ssq-CDoE-2B5D-Xxy0-Dd7x-ZWPIbs");
        assert_eq!(vg.pvs.len(), 1);
        assert_eq!(vg.pvs[0].id, "mLxk1E-yQ6m-Tu1d-Mm2L-Kx4v-a8V9-dNMtwQ");
        assert_eq!(vg.pvs[0].device, "/dev/vdb2");
        let names: Vec<&str> = vg.lvs.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["root", "my-swap"]);
        assert!(vg
            .lvs
            .iter()
            .all(|l| l.visible && l.segment_types == ["striped"]));
        assert!(vg.unsupported().is_none());
        assert!(vg.metadata.contains("pe_start = 2048"));
        assert!(vgs[1].unsupported().unwrap().contains("thin-pool"));
        assert_eq!(mapper_name("rp-vg", "my-swap"), "rp--vg-my--swap");
    }

    #[test]
    fn damaged_metadata_is_an_error_not_a_guess() {
        assert!(parse("# volume group x\nx {\n id = \"1\"\n").is_err());
        assert!(parse("x { id = \"1\" }").is_err());
        assert!(parse("# volume group x\nx {\n physical_volumes {\n pv0 { device = \"/dev/a\" }\n }\n id = \"1\"\n}\n").is_err());
    }
}
