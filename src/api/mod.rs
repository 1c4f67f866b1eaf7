//! The two vendors' APIs: one HTTP layer ([`http`]: pooled client, rate
//! limiter, the only retry loop) under one client each ([`segment`],
//! [`voucherify`]), and the adaptive concurrency controller ([`adaptive`])
//! that keeps a rate limit's budget busy.

pub mod adaptive;
pub mod answer;
pub mod http;
pub mod retry;
pub mod segment;
pub mod voucherify;
