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
        "--swap-wait-secs",
        "CUTOVER_SWAP_WAIT_SECS",
        "--swap-blocked",
        "CUTOVER_SWAP_BLOCKED",
        "--log-format",
        "CUTOVER_LOG_FORMAT",
        "--tokens-file",
        "CUTOVER_TOKENS_FILE",
        "--header-read-timeout-ms",
        "CUTOVER_HEADER_READ_TIMEOUT_MS",
        "--body-read-timeout-ms",
        "CUTOVER_BODY_READ_TIMEOUT_MS",
        "--max-http-connections",
        "CUTOVER_MAX_HTTP_CONNECTIONS",
        "RUST_LOG",
        "/console",
        "/metrics",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
}

#[test]
fn a_non_loopback_bind_without_tokens_refuses_to_start_and_says_why() {
    let output = Command::new(env!("CARGO_BIN_EXE_cutover-api"))
        .args(["--bind", "0.0.0.0:0"])
        .env_remove("CUTOVER_TOKENS")
        .env_remove("CUTOVER_TOKENS_FILE")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .expect("running cutover-api");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0"),
        "{stderr}"
    );
    assert!(stderr.contains("CUTOVER_TOKENS"), "{stderr}");
}
