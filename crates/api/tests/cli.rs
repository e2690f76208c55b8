//! The `cutover-api` binary explains itself. (Building this test also builds the binary that
//! the end-to-end fault tests start and kill.)

use std::process::Command;

#[test]
fn help_explains_every_flag_and_its_environment_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_cutover-api"))
        .arg("--help")
        .output()
        .expect("running cutover-api --help");

    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--bind",
        "CUTOVER_BIND",
        "--database-url",
        "DATABASE_URL",
        "--data-dir",
        "--command-retries",
        "--idempotency-ttl-secs",
        "--log-format",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
}
