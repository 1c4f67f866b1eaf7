//! The floor of transform, for `make bench`: the fastest single-threaded
//! parse that extracts what the mapping reads (segsync's own slim parse,
//! which skips unmapped traits without building them), on one core, with
//! nothing written. Usage: parse_floor FILE
use std::io::BufRead;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: parse_floor FILE")?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&path)?);
    let mut line = Vec::new();
    let mut n = 0u64;
    let wanted = segsync::records::default_trait_set();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let p = segsync::records::parse_for_mapping(&line, &wanted)?;
        std::hint::black_box(&p);
        n += 1;
    }
    eprintln!("parsed {n} lines");
    Ok(())
}
