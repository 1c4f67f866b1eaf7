//! Hand edits that went through a spreadsheet: `;` and tab separators, leading
//! zeros stripped, locale dates, Windows-1252, and `segsync diff` naming it all.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;

/// The `source_id`s of two rows whose postal code is digits with leading
/// zeros: the values a spreadsheet damages.
fn with_leading_zeros(rows: &[BTreeMap<String, String>]) -> Vec<String> {
    rows.iter()
        .filter(|r| {
            let p = &r["address_postal_code"];
            p.starts_with('0') && p.bytes().all(|b| b.is_ascii_digit())
        })
        .map(|r| r["source_id"].clone())
        .take(2)
        .collect()
}

/// Rewrite `customers.csv` as a spreadsheet in a European locale saves it:
/// `;`-separated, with `edit` applied to the rows.
fn resave(path: &Path, sep: u8, edit: impl FnMut(&mut BTreeMap<String, String>)) {
    resave_with(path, sep, csv::Terminator::Any(b'\n'), edit)
}

/// As [`resave`], with the line terminator a spreadsheet chose (CRLF on Windows).
fn resave_with(
    path: &Path,
    sep: u8,
    terminator: csv::Terminator,
    mut edit: impl FnMut(&mut BTreeMap<String, String>),
) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let headers: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    let rows: Vec<Vec<String>> = r
        .records()
        .map(|rec| {
            let rec = rec.unwrap();
            let mut m: BTreeMap<String, String> = headers
                .iter()
                .cloned()
                .zip(rec.iter().map(str::to_string))
                .collect();
            edit(&mut m);
            headers.iter().map(|h| m[h].clone()).collect()
        })
        .collect();
    let mut w = csv::WriterBuilder::new()
        .delimiter(sep)
        .terminator(terminator)
        .from_path(path)
        .unwrap();
    w.write_record(&headers).unwrap();
    for row in rows {
        w.write_record(&row).unwrap();
    }
    w.flush().unwrap();
}

/// Whether a line of `diff` names `sid` as a whole word (`usr-1-6` is not
/// `usr-1-62`; extract's order, and so which rows are picked, varies).
fn names(line: &str, sid: &str) -> bool {
    line.split_whitespace().any(|w| w == sid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semicolon_resave_with_stripped_zeros_and_one_edit_is_named_refused_then_accepted() {
    let sb = sandbox(opts(90)).await;
    let dir = tempdir();
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let csv = data(dir.path()).join("customers.csv");
    let rows = read_csv(&csv);
    let zeros = with_leading_zeros(&rows);
    assert_eq!(
        zeros.len(),
        2,
        "the data set has postal codes with leading zeros"
    );
    let renamed = rows
        .iter()
        .find(|r| !zeros.contains(&r["source_id"]))
        .unwrap()["source_id"]
        .clone();
    let mut stripped = BTreeMap::new();
    resave(&csv, b';', |row| {
        let sid = row["source_id"].clone();
        if zeros.contains(&sid) {
            let p = row["address_postal_code"]
                .trim_start_matches('0')
                .to_string();
            stripped.insert(sid.clone(), p.clone());
            row.insert("address_postal_code".into(), p);
        } else if sid == renamed {
            row.insert("name".into(), "Edited By Hand".into());
        }
    });

    // diff: exactly the three changes, the two postal codes flagged.
    let out = dir.path().join("changes.csv");
    let r = segsync(dir.path(), None, &["diff", "--csv", out.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let change_lines: Vec<&str> = r.stdout.lines().filter(|l| l.contains(" → ")).collect();
    assert_eq!(change_lines.len(), 3, "{}", r.stdout);
    for sid in &zeros {
        let l = change_lines.iter().find(|l| names(l, sid)).unwrap();
        assert!(
            l.contains("address_postal_code") && l.contains("leading zeros lost"),
            "{l}"
        );
    }
    let l = change_lines.iter().find(|l| names(l, &renamed)).unwrap();
    assert!(
        l.contains("name") && l.contains("\"Edited By Hand\"") && !l.contains("damage"),
        "{l}"
    );
    assert!(r.stdout.contains("semicolon-separated"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("0 rows added, 0 removed, 3 changed cells"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("format the column as text"),
        "{}",
        r.stderr
    );
    let listed = read_csv(&out);
    assert_eq!(listed.len(), 3);
    assert_eq!(
        listed
            .iter()
            .filter(|c| c["damage"] == "leading zeros lost")
            .count(),
        2
    );

    // load refuses the two rows, naming them, and sends nothing.
    let before = stat(&sb, "customers_received");
    let r = segsync(dir.path(), Some(&sb), &["load"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert_eq!(
        r.stderr.matches(": address_postal_code: ").count(),
        2,
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("leading zeros") && r.stderr.contains("--accept-edits"),
        "{}",
        r.stderr
    );
    assert_eq!(stat(&sb, "customers_received"), before, "nothing sent");
    // The dry run ends with the same counts.
    let r = segsync(dir.path(), None, &["load", "--dry-run", "--accept-edits"]).await;
    assert!(r.stderr.contains("3 changed cells"), "{}", r.stderr);

    // --accept-edits: exactly the three changed customers are sent.
    let r = segsync(dir.path(), Some(&sb), &["load", "--accept-edits"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("3 sent"), "{}", r.stderr);
    let receipts = sb.receipts();
    let twice: Vec<&String> = receipts
        .iter()
        .filter(|(_, n)| **n == 2)
        .map(|(s, _)| s)
        .collect();
    assert_eq!(twice.len(), 3, "{twice:?}");
    let held = sb.customers();
    for (sid, p) in &stripped {
        assert_eq!(held[sid]["address"]["postal_code"], p.as_str());
    }
    assert_eq!(held[&renamed]["name"], "Edited By Hand");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_load_and_locale_dates_and_windows_1252_are_named() {
    let sb = sandbox(opts(0)).await;
    let dir = tempdir();
    let (_, r) = load_csv(
        dir.path(),
        &sb,
        "source_id\tname\tbirthdate\nt1\tAnn\t1990-05-17\n",
        &[],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(sb.customers()["t1"]["birthdate"], "1990-05-17");

    let (_, r) = load_csv(dir.path(), &sb, "source_id;birthdate\nd1;17/05/1990\n", &[]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains(":2: birthdate") && r.stderr.contains("found DD/MM/YYYY"),
        "{}",
        r.stderr
    );

    let csv = dir.path().join("latin.csv");
    std::fs::write(&csv, b"source_id,name\nw1,Zo\xeb\n").unwrap();
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["load", "--in", csv.to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("Windows-1252")
            && r.stderr.contains("CSV UTF-8")
            && r.stderr.contains("Zoë"),
        "{}",
        r.stderr
    );

    // Two separators that both give known columns cannot be told apart... but
    // a header with a foreign separator names no known column: said so,
    // with the separators read, its content not quoted.
    let (_, r) = load_csv(dir.path(), &sb, "source_id|name\nx|y\n", &[]).await;
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("names none of the columns")
            && r.stderr.contains("semicolons or tabs")
            && !r.stderr.contains("source_id|name"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_from_scratch_has_nothing_to_compare_and_still_loads() {
    let sb = sandbox(opts(0)).await;
    let dir = tempdir();
    let d = data(dir.path());
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("customers.csv"), "source_id;name\nh1;Hand\n").unwrap();
    let r = segsync(dir.path(), None, &["diff"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("nothing to compare"), "{}", r.stdout);
    let r = segsync(dir.path(), Some(&sb), &["load"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(sb.customers()["h1"]["name"], "Hand");
}

/// The file line (from 1) whose text starts with `sid` followed by `sep`.
fn line_of(path: &Path, sid: &str, sep: char) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    1 + text
        .split('\n')
        .position(|l| l.starts_with(&format!("{sid}{sep}")))
        .unwrap_or_else(|| panic!("{sid} not in {}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crlf_resave_is_reported_on_the_lines_the_rows_are_on() {
    let sb = sandbox(opts(90)).await;
    let dir = tempdir();
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let csv = data(dir.path()).join("customers.csv");
    let zeros = with_leading_zeros(&read_csv(&csv));
    assert_eq!(
        zeros.len(),
        2,
        "the data set has postal codes with leading zeros"
    );
    resave_with(&csv, b',', csv::Terminator::CRLF, |row| {
        if zeros.contains(&row["source_id"]) {
            let p = row["address_postal_code"]
                .trim_start_matches('0')
                .to_string();
            row.insert("address_postal_code".into(), p);
        }
    });
    let r = segsync(dir.path(), None, &["diff"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    // diff names the row as a spreadsheet numbers it (the header is row
    // 1), and the file's line where a quoted newline moves it.
    let rows = read_csv(&csv);
    for sid in &zeros {
        let row = 2 + rows.iter().position(|r| &r["source_id"] == sid).unwrap();
        let line = line_of(&csv, sid, ',');
        let want = if row == line {
            format!("row {row}: {sid} ")
        } else {
            format!("row {row} (line {line}): {sid} ")
        };
        assert!(r.stdout.contains(&want), "{want:?} in {}", r.stdout);
    }
    assert!(
        r.stderr
            .contains("2 changed values: each lost its leading zeros"),
        "{}",
        r.stderr
    );
    let r = segsync(dir.path(), Some(&sb), &["load"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    for sid in &zeros {
        let want = format!(
            "customers.csv:{}: address_postal_code: ",
            line_of(&csv, sid, ',')
        );
        assert!(r.stderr.contains(&want), "{want:?} in {}", r.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_column_in_an_edited_customers_csv_is_exit_2() {
    let sb = sandbox(opts(30)).await;
    let dir = tempdir();
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let csv = data(dir.path()).join("customers.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(&csv, text.replacen("name,", "nme,", 1)).unwrap();
    for cmd in ["load", "diff"] {
        let r = segsync(dir.path(), Some(&sb), &[cmd]).await;
        assert_eq!(r.code, 2, "{cmd}: {}", r.all());
        assert!(
            r.stderr.contains("column \"nme\": unknown column"),
            "{}",
            r.stderr
        );
    }
}
