//! Compile tests of the SDK's attribute macros: `ui/pass_*.rs` must build,
//! `ui/fail_*.rs` must fail with the message in the `.stderr` beside them.
//! `TRYBUILD=overwrite cargo test -p runnel-sdk --test macros` rewrites those.

#[test]
fn macros() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass_*.rs");
    t.compile_fail("tests/ui/fail_*.rs");
}
