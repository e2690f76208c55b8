//! The operator CLI's output: a reader that stops early (`cutover status | head -1`) ends the
//! command quietly.

use cutover_tests::TestApp;
use uuid::Uuid;

use crate::collections::create;
use crate::resume::cli;

#[tokio::test]
async fn status_and_verify_end_quietly_when_their_reader_goes_away() {
    let app = TestApp::spawn().await;
    create(&app, Uuid::new_v4(), "listed").await;

    for command in ["status", "verify"] {
        // A pipe whose reader is gone before the command starts: every line it prints meets it
        // closed.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let child = cli(&app, &[command]).stdout(writer).spawn().unwrap();
        let output = child.wait_with_output().await.unwrap();

        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "cutover {command}: {:?}: {stderr}",
            output.status
        );
        assert!(
            !stderr.contains("panicked") && !stderr.to_lowercase().contains("broken pipe"),
            "cutover {command}: {stderr}"
        );
    }
}
