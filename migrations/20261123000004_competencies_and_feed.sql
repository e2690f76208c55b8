-- Competencies, legacy shape: the old document store's three collections. Each row is a
-- document: its id, its partition key and the document itself.
CREATE TABLE legacy_attempts
(
    -- the attempt's uuid
    id         text PRIMARY KEY,
    student_id bigint NOT NULL,
    -- {student_id, subject, skill_id, subskill_id, score, analysis, feedback, timestamp}
    doc        jsonb  NOT NULL
);
CREATE INDEX legacy_attempts_by_student ON legacy_attempts (student_id);

CREATE TABLE legacy_reviews
(
    -- the review's uuid
    id         text PRIMARY KEY,
    student_id bigint NOT NULL,
    -- {student_id, subject, skill_id, subskill_id, problem_id, full_review, score, timestamp}
    doc        jsonb  NOT NULL
);
CREATE INDEX legacy_reviews_by_student ON legacy_reviews (student_id);

CREATE TABLE legacy_competencies
(
    -- {student_id}_{subject}_{skill_id}_{subskill_id}, with '%' and '_' inside a part
    -- written '%25' and '%5F'
    id            text PRIMARY KEY,
    student_id    bigint NOT NULL,
    -- {student_id, subject, skill_id, subskill_id, current_score, credibility,
    --  total_attempts, last_updated}
    doc           jsonb  NOT NULL,
    -- projection bookkeeping: the subskill's event sequence this row reflects
    last_sequence bigint NOT NULL
);
CREATE INDEX legacy_competencies_by_student ON legacy_competencies (student_id, id);

-- Competencies, new shape: typed analytics tables.
CREATE TABLE student_attempts
(
    attempt_id   uuid PRIMARY KEY,
    student_id   bigint           NOT NULL,
    subject      text             NOT NULL,
    skill_id     text             NOT NULL,
    subskill_id  text             NOT NULL,
    -- 0 to 10
    score        double precision NOT NULL,
    analysis     text             NOT NULL,
    feedback     text             NOT NULL,
    attempted_at timestamptz      NOT NULL
);
CREATE INDEX student_attempts_by_subskill ON student_attempts (student_id, subject, skill_id, subskill_id);

CREATE TABLE student_reviews
(
    review_id   uuid PRIMARY KEY,
    student_id  bigint           NOT NULL,
    subject     text             NOT NULL,
    skill_id    text             NOT NULL,
    subskill_id text             NOT NULL,
    problem_id  text             NOT NULL,
    -- {observation, analysis, evaluation {score, ...}, feedback}
    full_review jsonb            NOT NULL,
    -- 0 to 10
    score       double precision NOT NULL,
    reviewed_at timestamptz      NOT NULL
);
CREATE INDEX student_reviews_by_subskill ON student_reviews (student_id, subject, skill_id, subskill_id);

CREATE TABLE student_competencies
(
    student_id     bigint           NOT NULL,
    subject        text             NOT NULL,
    skill_id       text             NOT NULL,
    subskill_id    text             NOT NULL,
    -- credibility x mean attempt score + (1 - credibility) x 5.0
    current_score  double precision NOT NULL,
    -- min(1, sqrt(total_attempts / 15))
    credibility    double precision NOT NULL,
    total_attempts integer          NOT NULL,
    last_updated   timestamptz      NOT NULL,
    -- projection bookkeeping: the subskill's event sequence this row reflects
    last_sequence  bigint           NOT NULL,
    PRIMARY KEY (student_id, subject, skill_id, subskill_id)
);

-- The real-time dashboard's source: one row per subskill over all students, kept current in
-- the transaction of every attempt.
CREATE TABLE skill_analytics
(
    subject      text             NOT NULL,
    skill_id     text             NOT NULL,
    subskill_id  text             NOT NULL,
    attempts     bigint           NOT NULL,
    -- students with at least one attempt
    students     bigint           NOT NULL,
    -- exact sum of attempt scores, so the mean does not depend on the order of replay
    score_sum    numeric          NOT NULL,
    -- score_sum / attempts
    mean_score   double precision NOT NULL,
    last_updated timestamptz      NOT NULL,
    PRIMARY KEY (subject, skill_id, subskill_id)
);

INSERT INTO read_sources (domain, source) VALUES ('competencies', 'legacy');

-- The event feed: filtering by aggregate type in log order.
CREATE INDEX events_by_type_in_log_order ON events (aggregate_type, transaction_id, position);

-- Wakes feed listeners (LISTEN cutover_events) when appended events commit; Postgres delivers
-- the notification at commit, once per transaction.
CREATE FUNCTION notify_events_appended() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM pg_notify('cutover_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_appended
    AFTER INSERT ON events
    FOR EACH STATEMENT
EXECUTE FUNCTION notify_events_appended();
