//! Compile errors of the macros point at the user's token; `tests/ui/*.stderr` hold them.
//!
//! Regenerate after an intended change with `TRYBUILD=overwrite cargo test --test macros_ui`
//! and review the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
