//! The sandbox's synthetic Segment space: deterministic per seed, generated on
//! demand from a profile's index (so a million-profile space costs no memory),
//! and built to exercise every rule of the mapping table.
//!
//! Alongside each profile the generator states the customer it *means*
//! ([`ExpectedCustomer`]): written from the generator's intent, not by calling
//! the mapping, so tests can check the pipeline against an independent oracle.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};

const FIRST: &[&str] = &[
    "Zoë",
    "Łukasz",
    "José",
    "Ægir",
    "Anne-Marie",
    "Søren",
    "Chloé",
    "Mateusz",
    "Amélie",
    "Jürgen",
    "Ana",
    "Li",
];
const LAST: &[&str] = &[
    "O'Brien",
    "Ångström",
    "Müller",
    "Nowak",
    "García",
    "李",
    "Kowalski",
    "Smith, Jr.",
    "Dubois",
    "Øberg",
    "Silva",
    "Tanaka",
];
const CITIES: &[&str] = &[
    "Kraków",
    "Zürich",
    "São Paulo",
    "Reykjavík",
    "München",
    "Oslo",
    "東京",
    "Łódź",
];
const COUNTRIES: &[&str] = &["PL", "CH", "BR", "IS", "DE", "NO", "JP", "PL"];

/// The customer a generated profile should become (None fields: not provided).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExpectedCustomer {
    pub source_id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub birthdate: Option<String>,
    pub description: Option<String>,
    pub address_line_1: Option<String>,
    pub address_line_2: Option<String>,
    pub address_city: Option<String>,
    pub address_state: Option<String>,
    pub address_postal_code: Option<String>,
    pub address_country: Option<String>,
    pub metadata: Option<Value>,
}

/// One generated profile, as the API serves it, with the intended outcome.
#[derive(Debug, Clone)]
pub struct GeneratedProfile {
    pub index: u64,
    pub segment_id: String,
    pub metadata: Value,
    pub traits: Map<String, Value>,
    pub external_ids: Vec<Value>,
    /// The `user_id` external id, if the profile has one.
    pub user_id: Option<String>,
    /// The customer it should map to with `user_id` as the identifier type.
    pub expected: Option<ExpectedCustomer>,
    /// Its birthdate trait is invalid and should be dropped with a warning.
    pub bad_birthdate: bool,
}

impl GeneratedProfile {
    /// The profile as a line of `profiles.ndjson` (the documented file
    /// format), built here rather than with segsync's own record type.
    pub fn record(&self) -> Value {
        json!({
            "segment_id": self.segment_id,
            "metadata": self.metadata,
            "traits": self.traits,
            "external_ids": self.external_ids,
        })
    }
}

/// Deterministic space: `n` profiles from `seed`; `versions` counts how often
/// the sandbox changed a profile since start (0 = as generated).
pub struct Dataset {
    pub seed: u64,
    pub n: u64,
    /// Share of profiles (0–100) with no `user_id` beyond the generator's
    /// own few: real spaces are mostly anonymous visitors.
    pub anonymous_percent: u64,
    /// Every trait of the type Voucherify's schema gives its field (a
    /// `metadata` object or none, `phone` a string): a space the original
    /// script reads to the end (it sends the traits as they are).
    pub plain_traits: bool,
    /// Every Nth profile (0: none) has an email at an `.invalid` domain:
    /// well formed, but Voucherify refuses it as undeliverable.
    pub undeliverable_every: u64,
}

impl Dataset {
    pub fn segment_id(&self, index: u64) -> String {
        let mut r = rng(self.seed, index, 0xA11CE);
        let tag: String = (0..10)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[r.gen_range(0..36)]))
            .collect();
        format!("use_{tag}{index:x}")
    }

    /// The index a segment id names, if it is one of ours.
    pub fn index_of(&self, segment_id: &str) -> Option<u64> {
        let rest = segment_id.strip_prefix("use_")?;
        if rest.len() <= 10 || !rest.is_char_boundary(10) {
            return None;
        }
        let index = u64::from_str_radix(&rest[10..], 16).ok()?;
        (index < self.n && self.segment_id(index) == segment_id).then_some(index)
    }

    pub fn metadata(&self, index: u64, version: u32) -> Value {
        let created = 1_672_531_200 + index as i64 * 60; // 2023-01-01 + index minutes
        let updated = if version == 0 {
            created + 3600 * (1 + (index as i64 % 48))
        } else {
            1_767_225_600 + version as i64 * 86_400 + index as i64 // 2026-01-01 + version days
        };
        json!({"created_at": iso(created), "updated_at": iso(updated)})
    }

    pub fn new(seed: u64, n: u64) -> Dataset {
        Dataset {
            seed,
            n,
            anonymous_percent: 0,
            plain_traits: false,
            undeliverable_every: 0,
        }
    }

    fn anonymous(&self, index: u64) -> bool {
        index % 13 == 11
            || (self.anonymous_percent > 0
                && (index.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 100 < self.anonymous_percent)
    }

    /// Profiles that have a `user_id` (for ceilings in benchmarks).
    pub fn identified(&self) -> u64 {
        (0..self.n).filter(|i| self.user_id(*i).is_some()).count() as u64
    }

    pub fn user_id(&self, index: u64) -> Option<String> {
        if self.anonymous(index) {
            return None; // no user_id at all: rejected unless a fallback type is configured
        }
        if index % 97 == 96 && !self.anonymous(index - 1) {
            return Some(self.base_user_id(index - 1)); // same person twice in Segment
        }
        Some(self.base_user_id(index))
    }

    /// Whether profile `index` shares its `user_id` with another profile
    /// and wins it (updated more recently; the lower index on a tie), at
    /// these versions.
    pub fn wins_shared(&self, index: u64, versions: &HashMap<u64, u32>) -> bool {
        let Some(uid) = self.user_id(index) else {
            return false;
        };
        let others = [index.checked_sub(1), index.checked_add(1)];
        let updated = |i: u64| {
            let v = versions.get(&i).copied().unwrap_or(0);
            self.metadata(i, v)["updated_at"]
                .as_str()
                .unwrap_or("")
                .to_string()
        };
        let mut shared = false;
        for other in others.into_iter().flatten().filter(|o| *o < self.n) {
            if self.user_id(other).as_deref() != Some(uid.as_str()) {
                continue;
            }
            shared = true;
            let (mine, theirs) = (updated(index), updated(other));
            if mine < theirs || (mine == theirs && other < index) {
                return false;
            }
        }
        shared
    }

    fn base_user_id(&self, index: u64) -> String {
        format!("usr-{}-{index}", self.seed % 1000)
    }

    /// Generate profile `index` at `version`.
    pub fn profile(&self, index: u64, version: u32) -> GeneratedProfile {
        // Activity changes a profile's description and `updated_at`; every
        // other trait stays, so a later version removes nothing (an upsert
        // never clears a field, and the oracle must not expect it to).
        let mut r = rng(self.seed, index, 0);
        let segment_id = self.segment_id(index);
        let user_id = self.user_id(index);
        let first = FIRST[r.gen_range(0..FIRST.len())];
        let last = LAST[r.gen_range(0..LAST.len())];
        let mut t = Map::new();
        let mut e = ExpectedCustomer {
            source_id: user_id.clone().unwrap_or_default(),
            ..Default::default()
        };

        // Profiles with more than 200 traits: the mapped ones land on page 2.
        if index % 37 == 3 {
            for k in 0..230 {
                t.insert(format!("custom_{k:03}"), json!(format!("value {k}")));
            }
        }

        names(index, first, last, &mut t, &mut e);
        contact(
            index,
            first,
            last,
            self.plain_traits,
            &mut r,
            &mut t,
            &mut e,
        );
        if self.undeliverable_every > 0 && index.is_multiple_of(self.undeliverable_every) {
            let email = format!("{}{index}@example.invalid", ascii(first));
            t.insert("email".into(), json!(email));
            e.email = Some(email);
        }
        let bad_birthdate = birthdate(index, &mut r, &mut t, &mut e);
        address(index, &mut r, &mut t, &mut e);
        metadata(index, self.plain_traits, &mut r, &mut t, &mut e);
        description(index, version, &mut t, &mut e);

        let external_ids = self.external_ids(index, &mut r);
        custom_traits(index, &mut t);
        GeneratedProfile {
            index,
            segment_id,
            metadata: self.metadata(index, version),
            traits: t,
            external_ids,
            expected: user_id.map(|_| e),
            user_id: self.user_id(index),
            bad_birthdate,
        }
    }

    fn external_ids(&self, index: u64, r: &mut StdRng) -> Vec<Value> {
        let created = iso(1_672_531_200 + index as i64 * 60);
        let ext = |ty: &str, id: String| json!({"type": ty, "id": id, "source_id": "src_sandbox", "collection": "users", "created_at": created, "encoding": "none"});
        let mut ids = vec![ext("anonymous_id", format!("anon-{:016x}", r.gen::<u64>()))];
        if index % 41 == 7 {
            // external ids spanning pages, user_id on page 2
            for k in 0..129 {
                ids.push(ext(
                    if k % 2 == 0 {
                        "anonymous_id"
                    } else {
                        "ga_client_id"
                    },
                    format!("dev-{index}-{k}"),
                ));
            }
        }
        if let Some(u) = self.user_id(index) {
            if index % 53 == 17 {
                // A second user_id, listed first but given a day later: the
                // customer's source_id is the earliest by Segment's time.
                let later = iso(1_672_531_200 + index as i64 * 60 + 86_400);
                ids.push(
                    json!({"type": "user_id", "id": format!("{u}-b"), "source_id": "src_sandbox",
                    "collection": "users", "created_at": later, "encoding": "none"}),
                );
            }
            ids.push(ext("user_id", u));
        }
        if index % 41 == 7 {
            for k in 0..40 {
                ids.push(ext("anonymous_id", format!("late-{index}-{k}")));
            }
        }
        if index % 9 != 8 {
            ids.push(ext("email", format!("id{index}@example.com")));
        }
        ids
    }

    /// The customers the whole space should end as in Voucherify, by
    /// `source_id`, with `user_id` as the identifier type: profiles without
    /// one are left out, and of two profiles with the same `user_id` the most
    /// recently updated wins (the earlier listed on a tie).
    pub fn expected_customers(
        &self,
        versions: &HashMap<u64, u32>,
    ) -> BTreeMap<String, ExpectedCustomer> {
        let mut best: BTreeMap<String, (String, ExpectedCustomer)> = BTreeMap::new();
        for i in 0..self.n {
            let p = self.profile(i, versions.get(&i).copied().unwrap_or(0));
            let Some(exp) = p.expected else { continue };
            let updated = p.metadata["updated_at"].as_str().unwrap_or("").to_string();
            match best.get(&exp.source_id) {
                Some((u, _)) if *u >= updated => {}
                _ => {
                    best.insert(exp.source_id.clone(), (updated, exp));
                }
            }
        }
        best.into_iter().map(|(k, (_, v))| (k, v)).collect()
    }
}

fn rng(seed: u64, index: u64, salt: u64) -> StdRng {
    StdRng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ index.wrapping_mul(0xBF58_476D_1CE4_E5B9)
            ^ salt.wrapping_mul(0x94D0_49BB_1331_11EB),
    )
}

fn ascii(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_lowercase()
}

/// Custom traits that only a mapping file reads (the default mapping does
/// not): text, a trait with a space in its name, and values that convert to
/// a metadata type losslessly (`"340"` → 340, `"true"` → true) and that do
/// not (`"n/a"`, `"yes"`).
fn custom_traits(index: u64, t: &mut Map<String, Value>) {
    if !index.is_multiple_of(4) {
        t.insert(
            "bio".into(),
            json!(format!("Customer since {}", 2015 + index % 10)),
        );
    }
    if index.is_multiple_of(3) {
        t.insert(
            "Campaign Name".into(),
            json!(format!("Spring {}", index % 5)),
        );
    }
    match index % 6 {
        0 => t.insert("big_spender".into(), json!(true)),
        1 => t.insert("big_spender".into(), json!(false)),
        2 => t.insert("big_spender".into(), json!("true")),
        3 => t.insert("big_spender".into(), json!("yes")),
        _ => None,
    };
    match index % 5 {
        0 => t.insert("ltv".into(), json!(12.5 * (index % 40) as f64)),
        1 => t.insert("ltv".into(), json!("340")),
        2 => t.insert("ltv".into(), json!("n/a")),
        _ => None,
    };
    if index.is_multiple_of(2) {
        t.insert("mobile".into(), json!(format!("+47 {index:08}")));
    }
}

/// RFC 3339 text of an epoch second (UTC).
pub fn iso(epoch: i64) -> String {
    jiff::Timestamp::from_second(epoch.max(0))
        .map(|t| format!("{t:.3}"))
        .unwrap_or_default()
}

/// Each name style the mapping reads.
fn names(
    index: u64,
    first: &str,
    last: &str,
    t: &mut Map<String, Value>,
    e: &mut ExpectedCustomer,
) {
    match index % 6 {
        0 => {
            t.insert("name".into(), json!(format!("{first} {last}")));
            t.insert("firstName".into(), json!("Ignored"));
            e.name = Some(format!("{first} {last}"));
        }
        1 => {
            t.insert("firstName".into(), json!(first));
            t.insert("lastName".into(), json!(last));
            e.name = Some(format!("{first} {last}"));
        }
        2 => {
            t.insert("first_name".into(), json!(first));
            t.insert("last_name".into(), json!(last));
            e.name = Some(format!("{first} {last}"));
        }
        3 => {
            t.insert("firstName".into(), json!(first));
            e.name = Some(first.to_string());
        }
        4 => {
            t.insert("last_name".into(), json!(last));
            t.insert("name".into(), json!(""));
            e.name = Some(last.to_string());
        }
        _ => {}
    }
}

/// Email (most profiles) and phone (a string, or a number as some sources send it).
fn contact(
    index: u64,
    first: &str,
    last: &str,
    plain: bool,
    r: &mut StdRng,
    t: &mut Map<String, Value>,
    e: &mut ExpectedCustomer,
) {
    let email = format!("{}.{}{index}@example.com", ascii(first), ascii(last));
    if index % 9 != 8 {
        t.insert("email".into(), json!(email));
        e.email = Some(email);
    }
    if index.is_multiple_of(3) {
        let phone = format!(
            "+48 {:03} {:03} {:03}",
            r.gen_range(500..900),
            r.gen_range(0..1000),
            r.gen_range(0..1000)
        );
        t.insert("phone".into(), json!(phone));
        e.phone = Some(phone);
    } else if index % 3 == 1 {
        let phone = r.gen_range(100_000_000u64..999_999_999);
        // A number, as some sources send it (unless plain).
        let trait_value = if plain {
            json!(phone.to_string())
        } else {
            json!(phone)
        };
        t.insert("phone".into(), trait_value);
        e.phone = Some(phone.to_string());
    }
}

/// `birthdate` or `birthday`, valid, as a date-time, or invalid; true when invalid.
fn birthdate(
    index: u64,
    r: &mut StdRng,
    t: &mut Map<String, Value>,
    e: &mut ExpectedCustomer,
) -> bool {
    let (y, m, d) = (
        r.gen_range(1950..2006),
        r.gen_range(1..13),
        r.gen_range(1..29),
    );
    match index % 7 {
        0 => {
            t.insert("birthdate".into(), json!(format!("{y:04}-{m:02}-{d:02}")));
            e.birthdate = Some(format!("{y:04}-{m:02}-{d:02}"));
        }
        1 => {
            t.insert("birthday".into(), json!(format!("{y:04}-{m:02}-{d:02}")));
            e.birthdate = Some(format!("{y:04}-{m:02}-{d:02}"));
        }
        2 => {
            t.insert(
                "birthday".into(),
                json!(format!("{y:04}-{m:02}-{d:02}T23:30:00.000Z")),
            );
            e.birthdate = Some(format!("{y:04}-{m:02}-{d:02}"));
        }
        3 => {
            t.insert("birthdate".into(), json!(format!("{d:02}/{m:02}/{y:04}")));
            return true;
        }
        4 => {
            t.insert("birthday".into(), json!(format!("{y:04}-02-30")));
            return true;
        }
        _ => {}
    }
    false
}

/// Nested and flat addresses, and an `address` that is not an object.
fn address(index: u64, r: &mut StdRng, t: &mut Map<String, Value>, e: &mut ExpectedCustomer) {
    let city = CITIES[(index as usize) % CITIES.len()];
    let country = COUNTRIES[(index as usize) % COUNTRIES.len()];
    let street = format!(
        "ul. Długa {}, m. {}",
        r.gen_range(1..200),
        r.gen_range(1..50)
    );
    let (a, b) = (r.gen_range(0..100), r.gen_range(0..1000));
    // Some postal codes are digits with leading zeros (as in Oslo, Rome
    // or Boston): the values a spreadsheet damages.
    let postal = if index.is_multiple_of(3) {
        format!("{:05}", a * 10 + b % 10)
    } else {
        format!("{a:02}-{b:03}")
    };
    match index % 5 {
        0 => {
            t.insert("address".into(), json!({"street": street, "city": city, "state": "Małopolska", "postalCode": postal, "country": country}));
            (
                e.address_line_1,
                e.address_city,
                e.address_state,
                e.address_postal_code,
                e.address_country,
            ) = (
                Some(street),
                Some(city.into()),
                Some("Małopolska".into()),
                Some(postal),
                Some(country.into()),
            );
        }
        1 => {
            t.insert("address".into(), json!({"line_1": street, "line_2": "Floor 2\nDoor \"B\"", "postal_code": postal, "city": city}));
            (
                e.address_line_1,
                e.address_line_2,
                e.address_postal_code,
                e.address_city,
            ) = (
                Some(street),
                Some("Floor 2\nDoor \"B\"".into()),
                Some(postal),
                Some(city.into()),
            );
        }
        2 => {
            t.insert("street".into(), json!(street));
            t.insert("city".into(), json!(city));
            t.insert("postal_code".into(), json!(postal));
            t.insert("country".into(), json!(country));
            (
                e.address_line_1,
                e.address_city,
                e.address_postal_code,
                e.address_country,
            ) = (
                Some(street),
                Some(city.into()),
                Some(postal),
                Some(country.into()),
            );
        }
        3 => {
            t.insert("address".into(), json!("see line_1"));
            t.insert("line_1".into(), json!(street));
            t.insert("postalCode".into(), json!(postal));
            (e.address_line_1, e.address_postal_code) = (Some(street), Some(postal));
        }
        _ => {}
    }
}

/// A `metadata` trait: an object, or not one (unless `objects`).
fn metadata(
    index: u64,
    objects: bool,
    r: &mut StdRng,
    t: &mut Map<String, Value>,
    e: &mut ExpectedCustomer,
) {
    match index % 4 {
        0 => {
            let tier = ["gold", "silver", "bronze"][index as usize % 3];
            let m = json!({"tier": tier, "score": r.gen_range(0..1000), "tags": ["a", "b"], "nested": {"ok": true}});
            t.insert("metadata".into(), m.clone());
            e.metadata = Some(m);
        }
        1 if !objects => {
            t.insert("metadata".into(), json!("not an object"));
        }
        _ => {}
    }
}

/// Descriptions hostile to CSV and spreadsheets; a new one per version.
fn description(index: u64, version: u32, t: &mut Map<String, Value>, e: &mut ExpectedCustomer) {
    let description = match index % 10 {
        0 => Some("Said \"hi\", then left,\nand came back".to_string()),
        1 => Some("=HYPERLINK(\"http://example.com\",\"click\")".to_string()),
        2 => Some("+1 loyal".to_string()),
        3 => Some("@twitter_handle".to_string()),
        4 => Some("-5 points".to_string()),
        5 => Some("Zoë Ångström — 東京 🎉".to_string()),
        6 => Some("'quoted".to_string()),
        _ => None,
    };
    let description = match (description, version) {
        (d, 0) => d,
        (_, v) => Some(format!("changed in version {v}")),
    };
    if let Some(d) = description {
        t.insert("description".into(), json!(d));
        e.description = Some(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_indexable() {
        let d = Dataset::new(7, 500);
        let a = d.profile(42, 0);
        let b = d.profile(42, 0);
        assert_eq!(a.traits, b.traits);
        assert_eq!(a.external_ids, b.external_ids);
        for i in [0, 1, 42, 499] {
            assert_eq!(d.index_of(&d.segment_id(i)), Some(i));
        }
        assert_eq!(d.index_of("use_nope"), None);
        assert_ne!(Dataset::new(8, 500).profile(42, 0).traits, a.traits);
    }

    #[test]
    fn covers_the_awkward_cases() {
        let d = Dataset::new(1, 400);
        let ps: Vec<_> = (0..d.n).map(|i| d.profile(i, 0)).collect();
        assert!(ps.iter().any(|p| p.traits.len() > 200));
        assert!(ps.iter().any(|p| p.external_ids.len() > 100
            && p.external_ids
                .iter()
                .position(|e| e["type"] == "user_id")
                .unwrap_or(0)
                >= 100));
        assert!(ps.iter().any(|p| p.user_id.is_none()));
        assert!(ps.iter().any(|p| p.bad_birthdate));
        let dup = ps.iter().filter(|p| p.user_id.is_some()).count()
            - d.expected_customers(&HashMap::new()).len();
        assert!(dup > 0, "some profiles share a user_id");
    }
}
