//! Speed of the snapshot against its floors, on a generated tree of real files on disk:
//! a bare stat walk (what any incremental snapshot must at least do) and a plain copy (what a
//! first snapshot must at least do). `benches/compare.sh` does the same on real system files.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Instant;

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
            let (mut out, mut warns): (Vec<(Vec<u8>, fsio::Basic)>, _) = (Vec::new(), Vec::new());
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

/// The fastest of five runs: the least disturbed by whatever else the machine does.
fn fastest(mut run: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[0]
}

fn walk(root: &Path) -> usize {
    let fd = fsio::open_root(root).unwrap();
    let (mut out, mut warns): (Vec<(Vec<u8>, fsio::Basic)>, _) = (Vec::new(), Vec::new());
    let ex = |_: &[u8], _| false;
    let opts = WalkOptions {
        one_file_system: true,
        exclude: &ex,
        progress: &Silent,
    };
    fsio::walk(fd.as_fd(), b"", &opts, &mut out, &mut warns).unwrap();
    out.len()
}

/// The regression check (issue 10): ratios to the floors, not times, so that it holds on any
/// machine. Fastest of five warm runs on the generated tree, where fixed costs (opening the
/// index, syncing what was written, which `cp -a` never waits for) weigh more than on a real
/// system; `cargo bench` fails when a ratio is about twice where it stands (no-change / walk
/// 2.3-4.6, first / cp -a 0.75-0.85 on this VM). `benches/churn.sh` measures the real figures.
fn ratios(_c: &mut Criterion) {
    const NO_CHANGE_OVER_WALK: f64 = 8.0;
    const FIRST_OVER_COPY: f64 = 3.0;
    let lab = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = lab.path().join("sys");
    make_tree(&root);
    let walked = fastest(|| {
        walk(&root);
    });
    let copied = fastest(|| {
        let dst = lab.path().join("copy");
        let _ = std::fs::remove_dir_all(&dst);
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(&root)
            .arg(&dst)
            .status();
        assert!(st.unwrap().success());
    });
    let first = fastest(|| {
        let store = lab.path().join("store-first");
        let _ = std::fs::remove_dir_all(&store);
        System::new(&root, &store)
            .snapshot(&opts(), &Silent)
            .unwrap();
    });
    let store = lab.path().join("store-incr");
    System::new(&root, &store)
        .snapshot(&opts(), &Silent)
        .unwrap();
    let unchanged = fastest(|| {
        System::new(&root, &store)
            .snapshot(&opts(), &Silent)
            .unwrap();
    });
    let (r1, r2) = (unchanged / walked, first / copied);
    println!(
        "ratios: no-change snapshot / stat walk {r1:.2} ({:.1} ms / {:.1} ms, limit {NO_CHANGE_OVER_WALK}); first snapshot / cp -a {r2:.2} ({:.0} ms / {:.0} ms, limit {FIRST_OVER_COPY})",
        unchanged * 1e3,
        walked * 1e3,
        first * 1e3,
        copied * 1e3
    );
    assert!(
        r1 <= NO_CHANGE_OVER_WALK,
        "regression: no-change snapshot is {r1:.2}x the stat walk"
    );
    assert!(
        r2 <= FIRST_OVER_COPY,
        "regression: first snapshot is {r2:.2}x cp -a"
    );
}

criterion_group!(engine, ratios, benches);
criterion_main!(engine);
