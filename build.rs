//! The commit segsync is built from, for `--version` (and its date, for the
//! man pages): `git rev-parse` when
//! the source is a git checkout (a clone, or `cargo install --git`), else
//! "unknown commit".

/// What `git ARGS` prints, trimmed, when git answers.
fn git(args: &[&str]) -> Option<String> {
    std::process::Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    let commit =
        git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown commit".into());
    println!("cargo:rustc-env=SEGSYNC_COMMIT={commit}");
    // The man pages' date: the commit's, so a page is the same whenever it
    // is built from the same source.
    let date = git(&["log", "-1", "--format=%cs"])
        .filter(|s| s.len() == 10)
        .unwrap_or_else(|| "1970-01-01".into());
    println!("cargo:rustc-env=SEGSYNC_DATE={date}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs");
}
