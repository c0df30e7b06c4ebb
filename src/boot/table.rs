//! Reading a disk's partition table (MBR with its logical partitions, or GPT) straight from its
//! first and last sectors, so the capture and the restore checks need no outside tool and work
//! on image files the same as on devices. Sizes and starts are in logical sectors.

use std::fs::File;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

pub const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
pub const EFI_SYSTEM: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Bytes of sector 0 that hold boot code; the disk signature starts at 440.
pub const BOOT_CODE: usize = 440;
/// Logical partitions are chained; a loop in a damaged chain must not hang the capture.
const MAX_LOGICAL: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Dos,
    Gpt,
    None,
}

impl TableKind {
    pub fn name(&self) -> &'static str {
        match self {
            TableKind::Dos => "dos (MBR)",
            TableKind::Gpt => "gpt",
            TableKind::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    pub number: u32,
    /// In logical sectors.
    pub start: u64,
    pub sectors: u64,
    /// MBR: the type byte as `0x83`; GPT: the type GUID.
    #[serde(rename = "type")]
    pub kind: String,
    /// GPT: the partition's unique GUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

/// What identifies a disk and how it is divided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub table: TableKind,
    /// MBR disk signature (`0x1234abcd`) or GPT disk GUID; empty without a table.
    pub id: String,
    pub size: u64,
    pub sector: u64,
    pub partitions: Vec<Partition>,
    /// GPT: where the primary and backup headers and entry arrays lie, in bytes
    /// (offset, length), for a partition-table restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpt_primary: Option<(u64, u64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpt_backup: Option<(u64, u64)>,
}

impl Layout {
    /// The lowest start of any partition (not partition 1's: they need not be in order).
    pub fn lowest_start(&self) -> Option<u64> {
        self.partitions.iter().map(|p| p.start).min()
    }

    pub fn bios_boot(&self) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.kind == BIOS_BOOT)
    }

    /// Whether this is the disk `other` was read from, by identity: its identifier (a disk
    /// without a partition table has none) and its size.
    pub fn same_disk(&self, other: &Layout) -> bool {
        self.table != TableKind::None && self.id == other.id && self.size == other.size
    }

    /// Everything that differs from `other`, for people; empty when the layouts agree.
    pub fn differences(&self, captured: &Layout) -> Vec<String> {
        let mut out = Vec::new();
        if self.table != captured.table {
            out.push(format!(
                "partition table is {}, was {}",
                self.table.name(),
                captured.table.name()
            ));
        }
        if self.id != captured.id {
            out.push(format!(
                "disk identifier is {}, was {}",
                show(&self.id),
                show(&captured.id)
            ));
        }
        if self.size != captured.size {
            out.push(format!(
                "disk size is {} bytes, was {}",
                self.size, captured.size
            ));
        }
        if self.sector != captured.sector {
            out.push(format!(
                "logical sector size is {}, was {}",
                self.sector, captured.sector
            ));
        }
        for p in &captured.partitions {
            match self.partitions.iter().find(|q| q.number == p.number) {
                None => out.push(format!("partition {} is gone", p.number)),
                Some(q) if q != p => out.push(format!(
                    "partition {}: now start {} size {} type {}, was start {} size {} type {}",
                    p.number, q.start, q.sectors, q.kind, p.start, p.sectors, p.kind
                )),
                Some(_) => {}
            }
        }
        for q in &self.partitions {
            if !captured.partitions.iter().any(|p| p.number == q.number) {
                out.push(format!(
                    "partition {} is new (start {} size {} type {})",
                    q.number, q.start, q.sectors, q.kind
                ));
            }
        }
        out
    }
}

fn show(id: &str) -> &str {
    if id.is_empty() {
        "none"
    } else {
        id
    }
}

/// Reads the layout of `disk` (a device or an image file) whose size is `size` bytes.
/// `sector` is the device's logical sector size when known; for image files it is found
/// from where the GPT header lies (512 unless a header sits at 4096).
pub fn read(disk: &File, size: u64, sector: Option<u64>) -> std::io::Result<Layout> {
    let lba0 = read_at(disk, 0, 512.min(size) as usize)?;
    let mut layout = Layout {
        table: TableKind::None,
        id: String::new(),
        size,
        sector: sector.unwrap_or(512),
        partitions: Vec::new(),
        gpt_primary: None,
        gpt_backup: None,
    };
    if lba0.len() < 512 || lba0[510..512] != [0x55, 0xAA] {
        return Ok(layout);
    }
    let entries: Vec<&[u8]> = (0..4).map(|i| &lba0[446 + 16 * i..462 + 16 * i]).collect();
    if entries.iter().any(|e| e[4] == 0xEE) {
        let candidates: Vec<u64> = match sector {
            Some(s) => vec![s],
            None => vec![512, 4096],
        };
        for s in candidates {
            if size >= 2 * s && read_at(disk, s, 8)? == b"EFI PART" {
                layout.sector = s;
                return read_gpt(disk, layout);
            }
        }
        return Err(bad("a protective MBR without a GPT header behind it"));
    }
    layout.table = TableKind::Dos;
    layout.id = format!(
        "0x{:08x}",
        u32::from_le_bytes(lba0[440..444].try_into().unwrap())
    );
    for (i, e) in entries.iter().enumerate() {
        let (kind, start, sectors) = mbr_entry(e);
        if kind == 0 || sectors == 0 {
            continue;
        }
        layout.partitions.push(Partition {
            number: i as u32 + 1,
            start,
            sectors,
            kind: format!("0x{kind:02x}"),
            uuid: None,
        });
        if matches!(kind, 0x05 | 0x0f | 0x85) {
            read_logical(disk, &mut layout, start)?;
        }
    }
    Ok(layout)
}

fn mbr_entry(e: &[u8]) -> (u8, u64, u64) {
    let start = u32::from_le_bytes(e[8..12].try_into().unwrap()) as u64;
    let sectors = u32::from_le_bytes(e[12..16].try_into().unwrap()) as u64;
    (e[4], start, sectors)
}

/// Follows the chain of extended boot records: each holds one logical partition (relative to
/// itself) and a link to the next (relative to the extended partition).
fn read_logical(disk: &File, layout: &mut Layout, extended: u64) -> std::io::Result<()> {
    let mut ebr = extended;
    for n in 0..MAX_LOGICAL {
        let sector = read_at(disk, ebr * layout.sector, 512)?;
        if sector.len() < 512 || sector[510..512] != [0x55, 0xAA] {
            return Ok(());
        }
        let (kind, start, sectors) = mbr_entry(&sector[446..462]);
        if kind != 0 && sectors != 0 {
            layout.partitions.push(Partition {
                number: 5 + n as u32,
                start: ebr + start,
                sectors,
                kind: format!("0x{kind:02x}"),
                uuid: None,
            });
        }
        let (next_kind, next, _) = mbr_entry(&sector[462..478]);
        if next_kind == 0 || next == 0 {
            return Ok(());
        }
        ebr = extended + next;
    }
    Ok(())
}

fn read_gpt(disk: &File, mut layout: Layout) -> std::io::Result<Layout> {
    let s = layout.sector;
    let header = read_at(disk, s, 92)?;
    let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(header[o..o + 4].try_into().unwrap());
    layout.table = TableKind::Gpt;
    layout.id = guid(&header[56..72]);
    let backup_lba = u64_at(32);
    let entries_lba = u64_at(72);
    let (count, entry_size) = (u32_at(80) as u64, u32_at(84) as u64);
    if !(128..=4096).contains(&entry_size) || count > 16384 {
        return Err(bad(
            "a GPT header with an implausible partition entry array",
        ));
    }
    let array = count * entry_size;
    let array_sectors = array.div_ceil(s);
    layout.gpt_primary = Some((s, (entries_lba + array_sectors - 1) * s));
    if backup_lba > array_sectors && (backup_lba + 1) * s <= layout.size {
        let start = backup_lba - array_sectors;
        layout.gpt_backup = Some((start * s, (array_sectors + 1) * s));
    }
    let raw = read_at(disk, entries_lba * s, array as usize)?;
    for (i, e) in raw.chunks_exact(entry_size as usize).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let first = u64::from_le_bytes(e[32..40].try_into().unwrap());
        let last = u64::from_le_bytes(e[40..48].try_into().unwrap());
        layout.partitions.push(Partition {
            number: i as u32 + 1,
            start: first,
            sectors: last.saturating_sub(first) + 1,
            kind: guid(&e[..16]),
            uuid: Some(guid(&e[16..32])),
        });
    }
    Ok(layout)
}

/// GPT's mixed-endian GUID layout, printed as sfdisk does.
fn guid(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        u32::from_le_bytes(b[0..4].try_into().unwrap()),
        u16::from_le_bytes(b[4..6].try_into().unwrap()),
        u16::from_le_bytes(b[6..8].try_into().unwrap()),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

pub fn read_at(disk: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match disk.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(bytes: &[(u64, &[u8])], size: u64) -> File {
        let f = tempfile::tempfile().unwrap();
        f.set_len(size).unwrap();
        for (off, b) in bytes {
            f.write_all_at(b, *off).unwrap();
        }
        f
    }

    fn mbr_entry_bytes(kind: u8, start: u32, sectors: u32) -> [u8; 16] {
        let mut e = [0u8; 16];
        e[4] = kind;
        e[8..12].copy_from_slice(&start.to_le_bytes());
        e[12..16].copy_from_slice(&sectors.to_le_bytes());
        e
    }

    #[test]
    fn blank_disk_has_no_table() {
        let f = image(&[], 1 << 20);
        let l = read(&f, 1 << 20, None).unwrap();
        assert_eq!(l.table, TableKind::None);
        assert!(l.partitions.is_empty());
    }

    #[test]
    fn mbr_with_logical_partitions_out_of_order() {
        let mut lba0 = vec![0u8; 512];
        lba0[440..444].copy_from_slice(&0xc28bf851u32.to_le_bytes());
        // Partition 1 lies after partition 2 on disk: the gap ends at the lower start.
        lba0[446..462].copy_from_slice(&mbr_entry_bytes(0x83, 8192, 2048));
        lba0[462..478].copy_from_slice(&mbr_entry_bytes(0x83, 2048, 2048));
        lba0[478..494].copy_from_slice(&mbr_entry_bytes(0x05, 4096, 4096));
        lba0[510] = 0x55;
        lba0[511] = 0xAA;
        let mut ebr1 = vec![0u8; 512];
        ebr1[446..462].copy_from_slice(&mbr_entry_bytes(0x83, 1, 1000));
        ebr1[462..478].copy_from_slice(&mbr_entry_bytes(0x05, 2048, 2048));
        ebr1[510..512].copy_from_slice(&[0x55, 0xAA]);
        let mut ebr2 = vec![0u8; 512];
        ebr2[446..462].copy_from_slice(&mbr_entry_bytes(0x82, 1, 500));
        ebr2[510..512].copy_from_slice(&[0x55, 0xAA]);
        let f = image(
            &[(0, &lba0), (4096 * 512, &ebr1), (6144 * 512, &ebr2)],
            16 << 20,
        );
        let l = read(&f, 16 << 20, None).unwrap();
        assert_eq!(l.table, TableKind::Dos);
        assert_eq!(l.id, "0xc28bf851");
        assert_eq!(l.lowest_start(), Some(2048));
        let logical: Vec<(u32, u64, u64)> = l
            .partitions
            .iter()
            .filter(|p| p.number >= 5)
            .map(|p| (p.number, p.start, p.sectors))
            .collect();
        assert_eq!(logical, vec![(5, 4097, 1000), (6, 6145, 500)]);
    }

    #[test]
    fn guid_is_mixed_endian() {
        let raw = [
            0x48, 0x61, 0x68, 0x21, 0x49, 0x64, 0x6F, 0x6E, 0x74, 0x4E, 0x65, 0x65, 0x64, 0x45,
            0x46, 0x49,
        ];
        assert_eq!(guid(&raw), BIOS_BOOT);
    }

    #[test]
    fn differences_name_what_moved() {
        let p = |n, start| Partition {
            number: n,
            start,
            sectors: 100,
            kind: "0x83".into(),
            uuid: None,
        };
        let a = Layout {
            table: TableKind::Dos,
            id: "0x1".into(),
            size: 1 << 20,
            sector: 512,
            partitions: vec![p(1, 2048)],
            gpt_primary: None,
            gpt_backup: None,
        };
        let mut b = a.clone();
        assert!(b.differences(&a).is_empty());
        b.partitions = vec![p(1, 63), p(2, 4096)];
        let d = b.differences(&a);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("partition 1: now start 63"), "{d:?}");
        assert!(d[1].contains("partition 2 is new"), "{d:?}");
    }
}
