//! Configuration: flags over environment variables over a `.env` file in the
//! working directory, with the seed script's shorter names accepted as aliases.
//!
//! `prepare_environment` runs before argument parsing and folds `.env` and the
//! aliases into the canonical variables, so clap's `env` support then gives
//! flags precedence over both. Credentials are wrapped in [`Secret`], whose
//! `Debug`/`Display` never show the value, and registered for [`redact`], which
//! the binary applies to every error it prints as a last line of defence.

use crate::error::UsageError;
use reqwest::Url;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;

pub const DEFAULT_SEGMENT_API_URL: &str = "https://profiles.segment.com";
pub const DEFAULT_VOUCHERIFY_API_URL: &str = "https://api.voucherify.io";

/// Canonical variable and the seed script's alias for it.
pub const ALIASES: &[(&str, &str)] = &[
    ("SEGMENT_SPACE_ID", "SPACE_ID"),
    ("VOUCHERIFY_APPLICATION_ID", "APPLICATION_ID"),
    ("VOUCHERIFY_SECRET_KEY", "SECRET_KEY"),
];

/// Every variable segsync reads, so a `.env` file can provide any of them.
pub const VARIABLES: &[&str] = &[
    "SEGMENT_ACCESS_TOKEN",
    "SEGMENT_SPACE_ID",
    "VOUCHERIFY_APPLICATION_ID",
    "VOUCHERIFY_SECRET_KEY",
    "SEGMENT_API_URL",
    "VOUCHERIFY_API_URL",
    "IDENTIFIER_SAVED_AS_SOURCE_ID",
    "SEGSYNC_DATA_DIR",
];

/// Fold `.env` (if present in the working directory) and the aliases into the
/// process environment. Precedence per variable: the real environment's
/// canonical name, then its alias, then `.env`'s canonical name, then `.env`'s
/// alias. Must run before any thread is started.
pub fn prepare_environment() -> Result<(), UsageError> {
    let dotenv = read_dotenv(Path::new(".env"))?;
    let mut names: Vec<(&str, Option<&str>)> = VARIABLES.iter().map(|v| (*v, None)).collect();
    for (canonical, alias) in ALIASES {
        if let Some(entry) = names.iter_mut().find(|(n, _)| n == canonical) {
            entry.1 = Some(alias);
        }
    }
    for (name, alias) in names {
        let from_env = std::env::var(name).ok().filter(|v| !v.is_empty());
        let from_alias = alias
            .and_then(|a| std::env::var(a).ok())
            .filter(|v| !v.is_empty());
        let from_file = dotenv.get(name).cloned().filter(|v| !v.is_empty());
        let from_file_alias = alias
            .and_then(|a| dotenv.get(a).cloned())
            .filter(|v| !v.is_empty());
        if from_env.is_none() {
            if let Some(v) = from_alias.or(from_file).or(from_file_alias) {
                std::env::set_var(name, v);
            }
        }
    }
    Ok(())
}

fn read_dotenv(path: &Path) -> Result<HashMap<String, String>, UsageError> {
    let mut map = HashMap::new();
    if !path.exists() {
        return Ok(map);
    }
    let iter = dotenvy::from_path_iter(path)
        .map_err(|e| UsageError::new(format!("{}: cannot read: {e}", path.display())))?;
    for item in iter {
        // dotenvy's parse errors quote the offending line, which may hold a
        // secret: report only where it is.
        let (k, v) = item.map_err(|e| {
            let at = match &e {
                dotenvy::Error::LineParse(_, idx) => format!(" at character {idx}"),
                _ => String::new(),
            };
            UsageError::new(format!(
                "{}: malformed line{at}; expected KEY=VALUE",
                path.display()
            ))
        })?;
        map.insert(k, v);
    }
    Ok(map)
}

static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A credential. Shows as `***` however it is printed.
#[derive(Clone)]
pub struct Secret(String);

/// Every form a secret can take in an answer that echoes a request: as
/// it is, Base64 of it and of `it:` (HTTP Basic auth, with and without
/// padding, standard and URL-safe), and percent-encoded.
fn forms_of(value: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine;
    let mut out = vec![value.to_string()];
    for text in [format!("{value}:"), value.to_string()] {
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            out.push(engine.encode(&text));
        }
    }
    out.push(
        percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
            .to_string(),
    );
    out.sort_by_key(|f| std::cmp::Reverse(f.len()));
    out.dedup();
    out
}

impl Secret {
    pub fn new(value: String) -> Secret {
        if value.len() >= 4 {
            if let Ok(mut s) = SECRETS.lock() {
                for form in forms_of(&value) {
                    if !s.contains(&form) {
                        s.push(form);
                    }
                }
                // The longest first: no form is cut by a shorter one.
                s.sort_by_key(|f| std::cmp::Reverse(f.len()));
            }
        }
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Replace every known secret, in every form ([`forms_of`]), in `text` by `***`.
pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    if let Ok(secrets) = SECRETS.lock() {
        for s in secrets.iter() {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
    }
    out
}

/// Where each credential comes from, for the error a person sees when it is missing.
fn where_to_get(var: &str) -> &'static str {
    match var {
        "SEGMENT_ACCESS_TOKEN" => {
            "in Segment: Unify > Profiles settings > API access > Generate token (a Profile API token)"
        }
        "SEGMENT_SPACE_ID" => "in Segment: Unify > Profiles settings > API access (the Space ID)",
        "VOUCHERIFY_APPLICATION_ID" | "VOUCHERIFY_SECRET_KEY" => {
            "in Voucherify: Project Settings > Application Keys"
        }
        _ => "see the README's Configuration section",
    }
}

/// A required value that is missing or empty is a usage error naming it.
pub fn require(var: &str, flag: &str, value: &Option<String>) -> Result<String, UsageError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v.clone()),
        _ => Err(UsageError::new(format!(
            "{var} is not set (or empty). Set it in the environment, in .env, or with {flag}; find it {}.",
            where_to_get(var)
        ))),
    }
}

/// Parse an API base URL: `https://` anywhere, `http://` only for loopback
/// hosts, no credentials, query or fragment in it.
pub fn api_url(var: &str, value: &str) -> Result<Url, UsageError> {
    let url = Url::parse(value.trim())
        .map_err(|e| UsageError::new(format!("{var}: not a valid URL ({e})")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UsageError::new(format!(
            "{var}: credentials in the URL are not accepted; use the credential variables instead"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(UsageError::new(format!(
            "{var}: the base URL must not have a query or fragment"
        )));
    }
    let host = url.host_str().unwrap_or("").to_string();
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&host) => {}
        "http" => {
            return Err(UsageError::new(format!(
                "{var}: plain http:// is accepted only for loopback hosts (localhost, 127.0.0.1, [::1]); use https:// for {host}"
            )))
        }
        other => return Err(UsageError::new(format!("{var}: unsupported scheme {other}://"))),
    }
    // Normalise: no trailing slash, so paths join predictably.
    let mut s = url.to_string();
    while s.ends_with('/') {
        s.pop();
    }
    Url::parse(&s).map_err(|e| UsageError::new(format!("{var}: {e}")))
}

pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    h.parse::<IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

/// Segment Profile API settings.
#[derive(Clone, Debug)]
pub struct SegmentConfig {
    pub api_url: Url,
    pub token: Secret,
    pub space_id: String,
}

/// Voucherify API settings.
#[derive(Clone, Debug)]
pub struct VoucherifyConfig {
    pub api_url: Url,
    pub app_id: String,
    pub secret_key: Secret,
}

/// Parse `IDENTIFIER_SAVED_AS_SOURCE_ID`: a comma list of external-id types in
/// fallback order.
pub fn identifier_types(value: &str) -> Result<Vec<String>, UsageError> {
    let types: Vec<String> = value
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if types.is_empty() {
        return Err(UsageError::new(
            "IDENTIFIER_SAVED_AS_SOURCE_ID / --source-id-type: give at least one external-id type, e.g. user_id",
        ));
    }
    Ok(types)
}

/// Segment credentials and endpoint, as flags (each also read from its variable).
#[derive(Debug, Clone, clap::Args, Default)]
pub struct SegmentArgs {
    /// Profile API access token [env: SEGMENT_ACCESS_TOKEN] (prefer the variable: flags show in `ps`)
    #[arg(
        long = "segment-token",
        env = "SEGMENT_ACCESS_TOKEN",
        hide_env = true,
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Unify space id [env: SEGMENT_SPACE_ID, alias SPACE_ID]
    #[arg(
        long = "space-id",
        env = "SEGMENT_SPACE_ID",
        hide_env = true,
        value_name = "ID"
    )]
    pub space_id: Option<String>,
    /// Profile API base URL; EU: https://profiles.euw1.segment.com [env: SEGMENT_API_URL]
    #[arg(id = "segment_api_url", long = "segment-api-url", env = "SEGMENT_API_URL", hide_env = true, default_value = DEFAULT_SEGMENT_API_URL, value_name = "URL")]
    pub api_url: String,
}

impl SegmentArgs {
    pub fn resolve(&self) -> Result<SegmentConfig, UsageError> {
        let token = require("SEGMENT_ACCESS_TOKEN", "--segment-token", &self.token)?;
        let space_id = require("SEGMENT_SPACE_ID", "--space-id", &self.space_id)?;
        Ok(SegmentConfig {
            api_url: api_url("SEGMENT_API_URL", &self.api_url)?,
            token: Secret::new(token),
            space_id,
        })
    }
}

/// Voucherify credentials and endpoint.
#[derive(Debug, Clone, clap::Args, Default)]
pub struct VoucherifyArgs {
    /// Application ID, sent as X-App-Id [env: VOUCHERIFY_APPLICATION_ID, alias APPLICATION_ID]
    #[arg(
        long = "app-id",
        env = "VOUCHERIFY_APPLICATION_ID",
        hide_env = true,
        value_name = "ID"
    )]
    pub app_id: Option<String>,
    /// Secret key, sent as X-App-Token [env: VOUCHERIFY_SECRET_KEY, alias SECRET_KEY] (prefer the variable)
    #[arg(
        long = "secret-key",
        env = "VOUCHERIFY_SECRET_KEY",
        hide_env = true,
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub secret_key: Option<String>,
    /// API base URL; also https://us1.api.voucherify.io, https://as1.api.voucherify.io [env: VOUCHERIFY_API_URL]
    #[arg(id = "voucherify_api_url", long = "voucherify-api-url", env = "VOUCHERIFY_API_URL", hide_env = true, default_value = DEFAULT_VOUCHERIFY_API_URL, value_name = "URL")]
    pub api_url: String,
}

/// The Voucherify project a ledger line belongs to: the API host and the
/// application id, never the secret.
pub fn project_target(api_url: &Url, app_id: &str) -> String {
    format!("{}#{}", api_url.as_str().trim_end_matches('/'), app_id)
}

/// The project the environment points at (`VOUCHERIFY_API_URL`,
/// `VOUCHERIFY_APPLICATION_ID`), for commands that only read; None when the
/// application id is not set.
pub fn configured_target() -> Option<String> {
    let app_id = std::env::var("VOUCHERIFY_APPLICATION_ID")
        .ok()
        .filter(|v| !v.trim().is_empty())?;
    let url = std::env::var("VOUCHERIFY_API_URL")
        .unwrap_or_else(|_| DEFAULT_VOUCHERIFY_API_URL.to_string());
    let url = api_url("VOUCHERIFY_API_URL", &url).ok()?;
    Some(project_target(&url, &app_id))
}

impl VoucherifyArgs {
    pub fn resolve(&self) -> Result<VoucherifyConfig, UsageError> {
        let app_id = require("VOUCHERIFY_APPLICATION_ID", "--app-id", &self.app_id)?;
        let key = require("VOUCHERIFY_SECRET_KEY", "--secret-key", &self.secret_key)?;
        Ok(VoucherifyConfig {
            api_url: api_url("VOUCHERIFY_API_URL", &self.api_url)?,
            app_id,
            secret_key: Secret::new(key),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error body that echoes the request shows the secret as it was
    /// sent: raw, in the Basic auth header (Base64 of `token:`), or
    /// percent-encoded. Every form is redacted.
    #[test]
    fn every_form_of_a_secret_is_redacted() {
        use base64::Engine;
        let token = "tok/en+redact-me_42";
        let _s = Secret::new(token.to_string());
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{token}:"));
        let pct = percent_encoding::utf8_percent_encode(token, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
        for echoed in [
            format!("bad token {token}"),
            format!("Authorization: Basic {b64}"),
            format!("Authorization: Basic {}", b64.trim_end_matches('=')),
            format!("GET /x?token={pct}"),
        ] {
            let out = redact(&echoed);
            assert!(out.contains("***"), "{out}");
            assert!(
                !out.contains(token) && !out.contains(&b64) && !out.contains(&pct),
                "{out}"
            );
            // And what is left does not decode to it.
            for word in out.split([' ', '=', '?']) {
                if let Ok(d) = base64::engine::general_purpose::STANDARD.decode(word) {
                    assert!(!String::from_utf8_lossy(&d).contains(token), "{out}");
                }
            }
        }
    }

    #[test]
    fn http_only_for_loopback() {
        assert!(api_url("X", "http://127.0.0.1:8080").is_ok());
        assert!(api_url("X", "http://localhost:1/").is_ok());
        assert!(api_url("X", "http://[::1]:9").is_ok());
        assert!(api_url("X", "https://profiles.euw1.segment.com").is_ok());
        let err = api_url("X", "http://profiles.segment.com")
            .unwrap_err()
            .to_string();
        assert!(err.contains("loopback"), "{err}");
        assert!(api_url("X", "http://10.0.0.1").is_err());
        assert!(api_url("X", "ftp://localhost").is_err());
        assert!(api_url("X", "https://user:pw@example.com").is_err());
    }

    #[test]
    fn trailing_slash_is_dropped() {
        let u = api_url("X", "https://api.voucherify.io/").unwrap();
        assert_eq!(
            u.as_str().trim_end_matches('/'),
            "https://api.voucherify.io"
        );
    }

    #[test]
    fn secrets_never_display() {
        let s = Secret::new("very-secret-value".into());
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(redact("token=very-secret-value!"), "token=***!");
    }

    #[test]
    fn missing_credential_names_variable_and_source() {
        let e = require(
            "SEGMENT_ACCESS_TOKEN",
            "--segment-token",
            &Some("  ".into()),
        )
        .unwrap_err();
        assert!(
            e.0.contains("SEGMENT_ACCESS_TOKEN") && e.0.contains("API access"),
            "{e}"
        );
    }

    #[test]
    fn identifier_fallback_list() {
        assert_eq!(
            identifier_types("user_id, email").unwrap(),
            vec!["user_id", "email"]
        );
        assert!(identifier_types(" , ").is_err());
    }
}
