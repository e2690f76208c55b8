-- The old system's tables in their own shapes, published for Cutover to follow, with whole
-- rows on delete: what the follow tests and the benchmark write as the old application.
CREATE TABLE collections (
    collection_id   uuid PRIMARY KEY,
    project_id      uuid,
    collection_name text,
    description     text,
    is_active       boolean DEFAULT true,
    created_at      timestamptz DEFAULT now(),
    updated_at      timestamptz DEFAULT now()
);
ALTER TABLE collections REPLICA IDENTITY FULL;
-- A batch's document: its players, the completed ones in the order they completed, and each
-- one's predictions count.
CREATE TABLE batch_state (
    batch_id              text PRIMARY KEY,
    expected_players      text[],
    completed_players     text[] DEFAULT '{}',
    predictions_by_player jsonb  DEFAULT '{}',
    total_predictions     bigint DEFAULT 0,
    is_complete           boolean DEFAULT false,
    updated_at            timestamptz DEFAULT now()
);
ALTER TABLE batch_state REPLICA IDENTITY FULL;
-- The old document store's collections: attempts and reviews (followed), and the competency
-- documents derived from the attempts (checked at the handover), each `(id, student_id, doc)`.
CREATE TABLE attempts (
    id         text PRIMARY KEY,
    student_id bigint,
    doc        jsonb
);
CREATE TABLE reviews (
    id         text PRIMARY KEY,
    student_id bigint,
    doc        jsonb
);
CREATE TABLE competencies (
    id         text PRIMARY KEY,
    student_id bigint,
    doc        jsonb
);
ALTER TABLE attempts REPLICA IDENTITY FULL;
ALTER TABLE reviews REPLICA IDENTITY FULL;
CREATE PUBLICATION cutover_follow FOR TABLE collections, batch_state, attempts, reviews;
