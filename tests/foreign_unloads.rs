//! Profiles Sync unloads written by the tools people unload with (pyarrow,
//! DuckDB, polars, CSV writers), each variant in tests/fixtures/unloads/
//! (made by its make.py), extracted by the real binary and compared with the
//! profiles the generator computed from the rows themselves: every trait,
//! every user_id in order, and the profile's first and last timestamps, to
//! the millisecond. A variant segsync must refuse (a `seq` a DOUBLE has
//! rounded, one past 64 bits) holds the words the refusal must say instead
//! (`expected_error.txt`): exit 2, naming a part file and a row. Each variant is read twice: parts whole, and every row
//! group of a Parquet part a job of its own with every partition reduced to
//! what its lines show (`SEGSYNC_SLICE_BYTES=1`, `SEGSYNC_REDUCE_BYTES=0`:
//! how a large part and a huge profile are read).

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unloads")
}

/// segsync's profiles, in the generator's terms.
fn extracted(file: &Path) -> BTreeMap<String, Value> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| {
            let p: Value = serde_json::from_str(l).unwrap();
            let ids: Vec<Value> = p["external_ids"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["type"] == "user_id")
                .map(|e| e["id"].clone())
                .collect();
            let id = p["segment_id"].as_str().unwrap().to_string();
            let traits = if ids.is_empty() {
                serde_json::json!({})
            } else {
                p["traits"].clone()
            };
            (
                id,
                serde_json::json!({
                    "traits": traits,
                    "user_ids": ids,
                    "created_at": p["metadata"]["created_at"],
                    "updated_at": p["metadata"]["updated_at"],
                }),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_foreign_unload_gives_exactly_the_generators_profiles() {
    let mut variants: Vec<_> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    variants.sort();
    assert!(variants.len() >= 46, "{} variants", variants.len());
    let mut failures = Vec::new();
    for (v, sliced) in variants.iter().flat_map(|v| [(v, false), (v, true)]) {
        let name = v.file_name().unwrap().to_string_lossy().to_string();
        let name = if sliced {
            format!("{name} (row groups apart, partitions reduced)")
        } else {
            name
        };
        let dir = tempdir();
        let out = dir.path().join("profiles.ndjson");
        let mut c = command(
            dir.path(),
            None,
            &[
                "extract",
                "--from",
                "profiles-sync",
                v.to_str().unwrap(),
                "--ignore",
                "expected*",
                "--out",
                out.to_str().unwrap(),
            ],
        );
        if sliced {
            c.env("SEGSYNC_SLICE_BYTES", "1");
            c.env("SEGSYNC_REDUCE_BYTES", "0");
        }
        let r: Run = c.output().await.expect("segsync runs").into();
        if let Ok(words) = std::fs::read_to_string(v.join("expected_error.txt")) {
            let named = r.stderr.contains(".parquet: row ") || r.stderr.contains(".csv: row ");
            if r.code != 2 || !r.stderr.contains(words.trim()) || !named {
                failures.push(format!(
                    "{name}: want a refusal (exit 2, a file and row named) saying {:?}; got exit {}: {}",
                    words.trim(),
                    r.code,
                    r.stderr.trim()
                ));
            }
            continue;
        }
        if r.code != 0 {
            failures.push(format!("{name}: exit {}: {}", r.code, r.stderr.trim()));
            continue;
        }
        let want: BTreeMap<String, Value> =
            serde_json::from_str(&std::fs::read_to_string(v.join("expected.json")).unwrap())
                .unwrap();
        let got = extracted(&out);
        if got.len() != want.len() {
            failures.push(format!(
                "{name}: {} profiles, want {}",
                got.len(),
                want.len()
            ));
            continue;
        }
        for (id, w) in &want {
            if got.get(id) != Some(w) {
                failures.push(format!("{name}: {id}: got {:?}, want {w}", got.get(id)));
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} variants wrong:\n{}",
        failures.len(),
        variants.len(),
        failures.join("\n")
    );
}
