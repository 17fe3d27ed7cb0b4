//! Case counts of the proptest fuzzers (`tests/fuzz_*.rs`, `mount-helper/tests/fuzz.rs`):
//! a CI-sized default per property, or `STRATAFS_FUZZ_CASES=N` for long runs.

use proptest::test_runner::Config;

/// `STRATAFS_FUZZ_CASES`, else `default`.
pub fn fuzz_cases(default: u32) -> u32 {
    std::env::var("STRATAFS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// [`fuzz_cases`] cases, and no regression files written: every failure found is pinned as
/// a named test instead.
pub fn fuzz_config(default: u32) -> Config {
    Config {
        cases: fuzz_cases(default),
        failure_persistence: None,
        ..Config::default()
    }
}
