//! The `cutover` binary explains itself and refuses what it does not know.

use std::process::Command;

/// What `cutover <args>` prints, having succeeded.
fn help(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .output()
        .expect("running cutover --help");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn help_lists_every_command() {
    let help = help(&["--help"]);
    for command in [
        "migrate",
        "status",
        "rebuild",
        "verify",
        "read-source",
        "retire",
        "repair",
        "import-legacy",
        "follow",
        "seed",
        "DATABASE_URL",
        "CUTOVER_DATA_DIR",
        "CUTOVER_TOKEN",
        "CUTOVER_TOKENS_FILE",
        "CUTOVER_LOG_FORMAT",
        "RUST_LOG",
    ] {
        assert!(
            help.contains(command),
            "--help does not mention {command}:\n{help}"
        );
    }
}

#[test]
fn rebuild_and_seed_take_the_swap_options() {
    for command in ["rebuild", "seed"] {
        let help = help(&[command, "--help"]);
        for option in [
            "--swap-wait-secs",
            "CUTOVER_SWAP_WAIT_SECS",
            "--swap-blocked",
            "CUTOVER_SWAP_BLOCKED",
            "readers-cancel",
            "give-up",
        ] {
            assert!(
                help.contains(option),
                "{command} --help does not mention {option}:\n{help}"
            );
        }
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

#[test]
fn destructive_commands_need_an_admin_token_when_tokens_are_configured() {
    let run = |token: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cutover"));
        command
            .args(["retire", "collections"])
            .env("CUTOVER_TOKENS", "read:r,admin:a")
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env_remove("CUTOVER_TOKEN");
        if let Some(token) = token {
            command.env("CUTOVER_TOKEN", token);
        }
        command.output().expect("running cutover")
    };

    for token in [None, Some("r"), Some("wrong")] {
        let output = run(token);
        assert_eq!(output.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&output.stderr).contains("needs an admin token"));
    }
    let with_admin = run(Some("a"));
    assert!(
        String::from_utf8_lossy(&with_admin.stderr).contains("opening the database"),
        "an admin token gets as far as the database"
    );
}
