//! Competencies in both shapes, the real-time skill analytics, and their error paths.

use cutover_tests::{json_with_status, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

pub async fn attempt(app: &TestApp, student: i64, subskill: &str, score: f64) -> Value {
    let response = app
        .post(&format!("/students/{student}/attempts"))
        .json(&json!({
            "subject": "math", "skill_id": "fractions", "subskill_id": subskill,
            "score": score, "analysis": "steady", "feedback": "practise more"
        }))
        .send()
        .await
        .unwrap();
    json_with_status(response, StatusCode::CREATED).await
}

pub fn review_body(score: f64) -> Value {
    json!({
        "subject": "math", "skill_id": "fractions", "subskill_id": "adding",
        "problem_id": "p-17",
        "full_review": {
            "observation": {"text": "used common denominators"},
            "analysis": {"steps": 3},
            "evaluation": {"score": score},
            "feedback": {"text": "good"}
        },
        "score": score
    })
}

fn close(value: &Value, expected: f64) -> bool {
    value.as_f64().is_some_and(|v| (v - expected).abs() < 5e-5)
}

#[tokio::test]
async fn scores_8_6_10_give_credibility_root_of_a_fifth_and_6_3416_in_both_shapes() {
    let app = TestApp::spawn().await;
    attempt(&app, 7, "adding", 8.0).await;
    attempt(&app, 7, "adding", 6.0).await;

    let last = attempt(&app, 7, "adding", 10.0).await;

    let credibility = (3.0_f64 / 15.0).sqrt();
    let legacy = &last["competency"];
    assert_eq!(last["read_source"], "legacy");
    assert_eq!(last["version"], 3);
    assert_eq!(legacy["id"], "7_math_fractions_adding");
    assert_eq!(legacy["doc"]["total_attempts"], 3);
    assert!(
        close(&legacy["doc"]["credibility"], credibility),
        "{legacy}"
    );
    assert!(close(&legacy["doc"]["current_score"], 6.3416), "{legacy}");
    assert_eq!(last["attempt"]["doc"]["score"], 10.0);
    let typed = json_with_status(
        app.get("/v2/students/7/competencies/math/fractions/adding")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(typed["version"], 3);
    assert_eq!(typed["competency"]["total_attempts"], 3);
    assert!(close(&typed["competency"]["credibility"], credibility));
    assert!(close(&typed["competency"]["current_score"], 6.3416));
    let same: bool = sqlx::query_scalar(
        "SELECT (l.doc->>'current_score')::float8 = t.current_score
            AND (l.doc->>'credibility')::float8 = t.credibility
           FROM legacy_competencies l JOIN student_competencies t ON l.student_id = t.student_id",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(same, "both shapes hold the very same numbers");
}

#[tokio::test]
async fn skill_analytics_are_current_after_each_attempt() {
    let app = TestApp::spawn().await;
    attempt(&app, 1, "adding", 8.0).await;
    attempt(&app, 1, "adding", 6.5).await;
    attempt(&app, 2, "adding", 4.0).await;
    attempt(&app, 2, "halving", 9.0).await;

    let page = json_with_status(
        app.get("/analytics/skills?subject=math")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;

    let adding = &page["items"][0];
    assert_eq!(adding["subskill_id"], "adding");
    assert_eq!(adding["attempts"], 3);
    assert_eq!(adding["students"], 2);
    assert!(close(&adding["mean_score"], 18.5 / 3.0));
    assert_eq!(page["items"][1]["subskill_id"], "halving");
    assert_eq!(page["items"][1]["students"], 1);
}

#[tokio::test]
async fn skill_analytics_of_a_retired_projection_are_a_409_that_says_so() {
    let app = TestApp::spawn().await;
    attempt(&app, 1, "adding", 8.0).await;
    let retired = app
        .post("/admin/projections/student_competencies/retire")
        .send()
        .await
        .unwrap();
    json_with_status(retired, StatusCode::OK).await;

    let refused = app.get("/analytics/skills").send().await.unwrap();

    let problem = json_with_status(refused, StatusCode::CONFLICT).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("student_competencies") && detail.contains("retired"),
        "{detail}"
    );
}

#[tokio::test]
async fn a_review_is_recorded_in_both_shapes_and_leaves_the_competency_alone() {
    let app = TestApp::spawn().await;
    attempt(&app, 7, "adding", 8.0).await;

    let response = app
        .post("/students/7/reviews")
        .json(&review_body(4.0))
        .send()
        .await
        .unwrap();

    let body = json_with_status(response, StatusCode::CREATED).await;
    assert_eq!(body["version"], 2);
    assert_eq!(body["review"]["doc"]["problem_id"], "p-17");
    assert_eq!(
        body["review"]["doc"]["full_review"]["evaluation"]["score"],
        4.0
    );
    let typed: (String, f64, i32) = sqlx::query_as(
        "SELECT r.problem_id, r.score, c.total_attempts
           FROM student_reviews r JOIN student_competencies c USING (student_id, subject, skill_id, subskill_id)",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(typed, ("p-17".to_owned(), 4.0, 1));
    let legacy = json_with_status(
        app.get("/students/7/competencies").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(legacy["items"][0]["doc"]["total_attempts"], 1);
}

#[tokio::test]
async fn a_student_s_competencies_list_from_either_source() {
    let app = TestApp::spawn().await;
    attempt(&app, 3, "b-sub", 5.0).await;
    attempt(&app, 3, "a-sub", 7.0).await;
    attempt(&app, 4, "a-sub", 7.0).await;

    let legacy = json_with_status(
        app.get("/students/3/competencies").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    app.set_read_source("competencies", "new").await;
    let from_new = json_with_status(
        app.get("/students/3/competencies?limit=1&offset=1")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let typed = json_with_status(
        app.get("/v2/students/3/competencies?limit=1&offset=1")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;

    let ids: Vec<&str> = legacy["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["3_math_fractions_a-sub", "3_math_fractions_b-sub"]);
    assert_eq!(from_new["read_source"], "new");
    assert_eq!(from_new["items"], json!([legacy["items"][1]]));
    assert_eq!(typed["read_source"], "new");
    assert_eq!(typed["items"].as_array().unwrap().len(), 1);
    assert_eq!(typed["items"][0]["subskill_id"], "b-sub");
}

#[tokio::test]
async fn bad_competency_input_is_4xx_and_appends_nothing() {
    let app = TestApp::spawn().await;
    attempt(&app, 7, "adding", 8.0).await;
    let before = app.db.event_count().await;
    let post = |path: &str, body: Value| app.post(path).json(&body).send();
    let valid = json!({"subject": "math", "skill_id": "f", "subskill_id": "a", "score": 5});
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };

    let cases = [
        (
            post("/students/7/attempts", with("score", json!(11))).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("score"),
        ),
        (
            post("/students/7/attempts", with("score", json!(-1))).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("score"),
        ),
        (
            post("/students/7/attempts", with("subject", json!(""))).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("subject"),
        ),
        (
            post(
                "/students/7/attempts",
                with("skill_id", json!("s".repeat(101))),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("skill_id"),
        ),
        (
            post(
                "/students/7/attempts",
                with("analysis", json!("a".repeat(10_001))),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("analysis"),
        ),
        (
            post("/students/7/attempts", with("score", json!("high"))).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        (
            post("/students/seven/attempts", valid.clone()).await,
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            post("/students/1.5/attempts", valid.clone()).await,
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            post("/students/0/attempts", valid.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("student_id"),
        ),
        (
            post("/students/7/reviews", review_body(10.5)).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("full_review.evaluation.score"),
        ),
        (
            post("/students/7/reviews", {
                let mut body = review_body(5.0);
                body["full_review"]["observation"] = json!("not an object");
                body
            })
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        (
            post("/students/7/reviews", {
                let mut body = review_body(5.0);
                body["problem_id"] = json!("");
                body
            })
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("problem_id"),
        ),
    ];
    for (response, status, field) in cases {
        let body = json_with_status(response.unwrap(), status).await;
        if let Some(field) = field {
            assert_eq!(body["field"], field, "{body}");
        }
    }
    for (path, status) in [
        (
            "/students/7/competencies/math/fractions/nope",
            StatusCode::NOT_FOUND,
        ),
        ("/students/x/competencies", StatusCode::BAD_REQUEST),
        ("/students/7/competencies?limit=0", StatusCode::BAD_REQUEST),
        ("/analytics/skills?offset=-1", StatusCode::BAD_REQUEST),
    ] {
        json_with_status(app.get(path).send().await.unwrap(), status).await;
    }
    assert_eq!(app.db.event_count().await, before);
}

#[tokio::test]
async fn bad_input_a_nul_character_anywhere_is_422_and_appends_nothing() {
    let app = TestApp::spawn().await;
    let project = uuid::Uuid::new_v4();

    let cases = [
        app.post("/students/7/attempts").json(
            &json!({"subject": "\u{0}", "skill_id": "f", "subskill_id": "a", "score": 2}),
        ),
        app.post(&format!("/projects/{project}/collections"))
            .json(&json!({"collection_name": "a\u{0}b"})),
        app.post("/students/7/reviews").json(&json!({
            "subject": "m", "skill_id": "f", "subskill_id": "a", "problem_id": "p", "score": 1,
            "full_review": {"observation": {"t": "\u{0}"}, "analysis": {}, "evaluation": {"score": 1}, "feedback": {}}
        })),
    ];
    for request in cases {
        json_with_status(
            request.send().await.unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    assert_eq!(app.db.event_count().await, 0);
}

/// The row of `table` (`legacy_attempts`, `legacy_reviews`) under `id`, as a document answer
/// shows it.
async fn document_row(app: &TestApp, table: &str, id: &str) -> Value {
    sqlx::query_scalar(&format!(
        "SELECT jsonb_build_object('id', id, 'student_id', student_id, 'doc', doc)
           FROM {table} WHERE id = $1"
    ))
    .bind(id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap()
}

/// An attempt and a review answer with the rows their statement wrote, whichever model is the
/// read source: the attempt's and the review's documents are the legacy tables' rows, and the
/// competency is its GET's, to the last bit of every score (scores whose sums have no short
/// decimal form).
#[tokio::test]
async fn an_attempt_and_a_review_answer_with_the_rows_they_wrote_from_either_source() {
    let app = TestApp::spawn().await;
    for (source, student) in [("legacy", 31), ("new", 32)] {
        app.set_read_source("competencies", source).await;
        for score in [7.3, 0.1, 9.7] {
            let answer = attempt(&app, student, "adding", score).await;
            assert_eq!(answer["read_source"], source);
            let id = answer["attempt"]["id"].as_str().unwrap();
            assert_eq!(
                answer["attempt"],
                document_row(&app, "legacy_attempts", id).await,
                "{source}"
            );
            let read = json_with_status(
                app.get(&format!(
                    "/students/{student}/competencies/math/fractions/adding"
                ))
                .send()
                .await
                .unwrap(),
                StatusCode::OK,
            )
            .await;
            assert_eq!(answer["competency"], read["competency"], "{source}");
            assert_eq!(answer["version"], read["version"], "{source}");
        }
        let response = app
            .post(&format!("/students/{student}/reviews"))
            .json(&review_body(6.7))
            .send()
            .await
            .unwrap();
        let answer = json_with_status(response, StatusCode::CREATED).await;
        let id = answer["review"]["id"].as_str().unwrap();
        assert_eq!(
            answer["review"],
            document_row(&app, "legacy_reviews", id).await,
            "{source}"
        );
    }
}

/// An attempt on a quiet server is one statement outside any transaction, on a subskill the
/// server has cached and on one it has never seen (whose stream it reads first): held back with
/// the appends, it waits at the log's table, not at the append lock that a command's
/// transaction takes first; let go, it answers what it wrote.
#[tokio::test]
async fn a_quiet_attempt_is_one_statement_that_waits_at_the_log() {
    let app = TestApp::spawn().await;
    // Makes the caches (the registry's inline names, the statement, the subskill).
    attempt(&app, 7, "adding", 8.0).await;
    for (subskill, version) in [("adding", 2), ("halving", 1)] {
        let request = app.post("/students/7/attempts").json(&json!({
            "subject": "math", "skill_id": "fractions", "subskill_id": subskill,
            "score": 5.0, "analysis": "steady", "feedback": "practise more"
        }));
        let (waiting, response) = app.lock_awaited_by(request).await;
        assert_eq!(
            waiting,
            Some(("relation".to_owned(), "events".to_owned())),
            "{subskill}: waits at the log, in no transaction of its own"
        );
        let answer = json_with_status(response, StatusCode::CREATED).await;
        assert_eq!(answer["version"], version, "{subskill}");
        assert_eq!(answer["attempt"]["doc"]["score"], 5.0, "{subskill}");
    }
}
