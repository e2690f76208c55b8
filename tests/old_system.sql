-- The old system's collections table in its own shape, published for Cutover to follow, with
-- whole rows on delete: what the follow tests and the benchmark write as the old application.
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
CREATE PUBLICATION cutover_follow FOR TABLE collections;
