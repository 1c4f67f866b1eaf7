//! The floor of any JSON-reading transform, for `make bench`: read an NDJSON
//! file line by line, parse each line with serde_json into a `Value`, and
//! discard it. Usage: parse_floor FILE
use std::io::BufRead;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: parse_floor FILE")?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&path)?);
    let mut line = Vec::new();
    let mut n = 0u64;
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let v: serde_json::Value = serde_json::from_slice(&line)?;
        std::hint::black_box(&v);
        n += 1;
    }
    eprintln!("parsed {n} lines");
    Ok(())
}
