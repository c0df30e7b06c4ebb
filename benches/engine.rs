//! Speed of the snapshot against its floors, on a generated tree of real files on disk:
//! a bare stat walk (what any incremental snapshot must at least do) and a plain copy (what a
//! first snapshot must at least do). `benches/compare.sh` does the same on real system files.

use std::os::fd::AsFd;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use restorepoint::delta::Level;
use restorepoint::engine::System;
use restorepoint::fsio::{self, WalkOptions};
use restorepoint::progress::Silent;
use restorepoint::snapshot::SnapshotOptions;
use restorepoint::store::PointKind;

fn make_tree(root: &Path) {
    for d in 0..40 {
        let dir = root.join(format!("dir{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            let body: String = (0..(f * 13 + d))
                .map(|i| format!("line {i} of file {f}\n"))
                .collect();
            std::fs::write(dir.join(format!("file{f}.conf")), body).unwrap();
        }
    }
}

fn opts() -> SnapshotOptions {
    SnapshotOptions {
        sources: vec![Vec::new()],
        excludes: vec![],
        one_file_system: true,
        kind: PointKind::Manual,
        label: None,
        level: Level::default(),
        admission: None,
        boot: restorepoint::boot::Source::Off,
        kit_bytes: 0,
    }
}

fn benches(c: &mut Criterion) {
    let lab = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = lab.path().join("sys");
    make_tree(&root);
    let mut g = c.benchmark_group("4000 files");
    g.sample_size(10);
    g.bench_function("floor: bare stat walk", |b| {
        b.iter(|| {
            let fd = fsio::open_root(&root).unwrap();
            let (mut out, mut warns) = (Vec::new(), Vec::new());
            let ex = |_: &[u8], _| false;
            fsio::walk(
                fd.as_fd(),
                b"",
                &WalkOptions {
                    one_file_system: true,
                    exclude: &ex,
                    progress: &Silent,
                },
                &mut out,
                &mut warns,
            )
            .unwrap();
            out.len()
        })
    });
    g.bench_function("floor: plain copy (cp -a)", |b| {
        b.iter(|| {
            let dst = lab.path().join("copy");
            let _ = std::fs::remove_dir_all(&dst);
            assert!(std::process::Command::new("cp")
                .arg("-a")
                .arg(&root)
                .arg(&dst)
                .status()
                .unwrap()
                .success());
        })
    });
    g.bench_function("first snapshot", |b| {
        b.iter(|| {
            let store = lab.path().join("store-first");
            let _ = std::fs::remove_dir_all(&store);
            System::new(&root, &store)
                .snapshot(&opts(), &Silent)
                .unwrap()
        })
    });
    let store = lab.path().join("store-incr");
    System::new(&root, &store)
        .snapshot(&opts(), &Silent)
        .unwrap();
    g.bench_function("incremental snapshot, nothing changed", |b| {
        b.iter(|| {
            System::new(&root, &store)
                .snapshot(&opts(), &Silent)
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(engine, benches);
criterion_main!(engine);
