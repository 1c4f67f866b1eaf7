//! Micro-benchmarks of transform's per-profile hot paths, on profiles from
//! the sandbox's generator: parsing a line (full and slim), the mapping, and
//! writing a CSV row with the formula guard. `make bench` runs them.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use segsync::mapping::map_profile;
use segsync::records::{guard_cell, parse_for_mapping, ProfileRecord};
use segsync::sandbox::data::Dataset;
use std::hint::black_box;

fn lines() -> Vec<Vec<u8>> {
    let ds = Dataset::new(1, 1000);
    (0..ds.n)
        .map(|i| serde_json::to_vec(&ds.profile(i, 0).record()).expect("serialize"))
        .collect()
}

fn hot_paths(c: &mut Criterion) {
    let lines = lines();
    let bytes: usize = lines.iter().map(Vec::len).sum();
    let types = segsync::mapping::Mapping::default();
    let wanted = segsync::records::default_trait_set();
    let records: Vec<ProfileRecord> = lines
        .iter()
        .map(|l| parse_for_mapping(l, &wanted).expect("parse"))
        .collect();

    let mut g = c.benchmark_group("per 1000 profiles");
    // Parsing reads every byte of the lines.
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("parse into serde_json::Value (floor)", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(serde_json::from_slice::<serde_json::Value>(l).expect("json"));
            }
        })
    });
    g.bench_function("parse full ProfileRecord", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(serde_json::from_slice::<ProfileRecord>(l).expect("json"));
            }
        })
    });
    g.bench_function("parse slim (only mapped traits)", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(parse_for_mapping(l, &wanted).expect("json"));
            }
        })
    });
    // Mapping and writing read no JSON bytes: their throughput is profiles.
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("map_profile", |b| {
        b.iter(|| {
            for r in &records {
                black_box(map_profile(r, &types));
            }
        })
    });
    g.bench_function("write guarded CSV rows", |b| {
        let rows: Vec<_> = records
            .iter()
            .filter_map(|r| match map_profile(r, &types) {
                segsync::mapping::Mapped::Customer { row, .. } => Some(row),
                _ => None,
            })
            .collect();
        b.iter(|| {
            let mut w = csv::Writer::from_writer(Vec::with_capacity(1 << 20));
            for row in &rows {
                let cells = row.cells().map(|c| guard_cell(c.as_deref().unwrap_or("")));
                w.write_record(cells.iter().map(|c| c.as_ref()))
                    .expect("write");
            }
            black_box(w.into_inner().expect("flush").len())
        })
    });
    g.finish();
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
