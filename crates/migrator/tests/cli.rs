//! The `cutover` binary explains itself and refuses what it does not know.

use std::process::Command;

#[test]
fn help_lists_every_command() {
    let output = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("--help")
        .output()
        .expect("running cutover --help");

    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for command in [
        "migrate",
        "status",
        "rebuild",
        "verify",
        "read-source",
        "retire",
        "import-legacy",
        "seed",
    ] {
        assert!(
            help.contains(command),
            "--help does not mention {command}:\n{help}"
        );
    }
}

#[test]
fn an_unknown_read_source_is_refused_before_touching_a_database() {
    let output = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["read-source", "collections", "sideways"])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .expect("running cutover");

    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("sideways"));
}
