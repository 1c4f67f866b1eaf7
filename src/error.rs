//! Error types shared by the stages, and how they map to exit statuses.
//!
//! Exit statuses are part of the contract (docs/DESIGN.md): 0 success, 2 usage or
//! configuration error, 1 any other failure (rerun resumes), 3 `load` finished
//! but Voucherify rejected some customers.

use std::fmt;

/// A problem with how the tool was invoked or configured: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    pub fn new(msg: impl Into<String>) -> Self {
        UsageError(msg.into())
    }
}

/// Input that failed validation (a bad CSV, a malformed NDJSON line): exit 2,
/// because rerunning will not help until a person fixes the file.
#[derive(Debug, thiserror::Error)]
pub struct InputErrors {
    pub problems: Vec<String>,
    pub hint: String,
}

impl fmt::Display for InputErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 50;
        for p in self.problems.iter().take(SHOWN) {
            writeln!(f, "{p}")?;
        }
        if self.problems.len() > SHOWN {
            writeln!(f, "... and {} more problems", self.problems.len() - SHOWN)?;
        }
        write!(f, "{}", self.hint)
    }
}

/// An HTTP API answered with an error that retrying will not fix, or retries
/// ran out. Carries what a person needs to act: the endpoint, the status, the
/// API's own message and its request id. Never carries credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{api} {endpoint}: HTTP {status}: {message}{}", request_id_suffix(.request_id))]
    Status {
        api: &'static str,
        endpoint: String,
        status: u16,
        message: String,
        request_id: Option<String>,
        /// The API's machine-readable error key (Voucherify's `key`), when
        /// it gives one: decisions match on it, never on the message text.
        key: Option<String>,
    },
    #[error("{api} {endpoint}: gave up after {attempts} attempts; last error: {last}")]
    RetriesExhausted {
        api: &'static str,
        endpoint: String,
        attempts: u32,
        last: String,
    },
    /// A quota that will not refill within the wait this run allows (a
    /// monthly cycle, an ended plan, an hourly bucket past `--max-wait`).
    #[error("{api} {endpoint}: HTTP 429: {quota}{}; {advice}", resets_suffix(.resets_at))]
    Quota {
        api: &'static str,
        endpoint: String,
        quota: String,
        resets_at: Option<String>,
        advice: String,
    },
    /// The answer came, but this machine could not keep it (a permission,
    /// a full disk): never retried as if the network had failed.
    #[error("{api} {endpoint}: {message}")]
    Local {
        api: &'static str,
        endpoint: String,
        message: String,
    },
    /// The server asked for a wait past the longest this command allows
    /// (a `Retry-After` of `inf`, `1e20`, or a date next year): a stop,
    /// never a sleep; a rerun later resumes.
    #[error("{api} {endpoint}: HTTP {status} asks to wait ({hint}), longer than the longest wait allowed ({longest_secs} s); stopped, nothing is lost: rerun later")]
    Wait {
        api: &'static str,
        endpoint: String,
        status: u16,
        hint: String,
        longest_secs: u64,
    },
    /// A redirect, which no API call follows: the secret key (and a bulk
    /// request's customers) would go wherever it points.
    #[error("{api} {endpoint}: HTTP {status} redirects to {location}; segsync follows no redirect of an API call (the key would go with it): check the API URL")]
    Redirect {
        api: &'static str,
        endpoint: String,
        status: u16,
        /// Where it points, its query left out (a token may be in it).
        location: String,
        /// Where it points, whole: for the one caller that follows a
        /// redirect by hand (an export's download); never shown.
        target: String,
    },
    #[error("{api} {endpoint}: response breaks the API contract: {message}")]
    Contract {
        api: &'static str,
        endpoint: String,
        message: String,
    },
}

fn resets_suffix(at: &Option<String>) -> String {
    match at {
        Some(at) => format!(", which resets at {at}"),
        None => String::new(),
    }
}

fn request_id_suffix(id: &Option<String>) -> String {
    match id {
        Some(id) => format!(" (Request-Id {id})"),
        None => String::new(),
    }
}

impl ApiError {
    /// An answer that breaks `api`'s documented contract at `endpoint`.
    pub fn contract(api: &'static str, endpoint: &str, message: &str) -> ApiError {
        ApiError::Contract {
            api,
            endpoint: endpoint.to_string(),
            message: message.to_string(),
        }
    }

    /// The API's error key, for a status error that carries one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ApiError::Status { key, .. } => key.as_deref(),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Which exit status an error deserves.
/// A signal stopped the command (exit 128 + its number, as shells report).
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum Interrupted {
    #[error("interrupted by SIGINT; the command stopped where it was: run it again to resume")]
    Int,
    #[error("interrupted by SIGTERM; the command stopped where it was: run it again to resume")]
    Term,
}

pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        match cause.downcast_ref::<Interrupted>() {
            Some(Interrupted::Int) => return 130,
            Some(Interrupted::Term) => return 143,
            None => {}
        }
        if cause.downcast_ref::<UsageError>().is_some()
            || cause.downcast_ref::<InputErrors>().is_some()
            || matches!(
                cause.downcast_ref::<ApiError>(),
                Some(ApiError::Local { .. } | ApiError::Redirect { .. })
            )
        {
            return 2;
        }
    }
    1
}
