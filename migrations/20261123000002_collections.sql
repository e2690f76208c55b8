-- Collections, legacy shape: one row per collection; delete is a soft delete.
CREATE TABLE collections
(
    collection_id   uuid PRIMARY KEY,
    project_id      uuid        NOT NULL,
    collection_name text        NOT NULL,
    description     text        NOT NULL,
    -- false once the collection is deleted
    is_active       boolean     NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    -- projection bookkeeping: the collection's event sequence this row reflects
    last_sequence   bigint      NOT NULL
);
CREATE INDEX collections_by_project ON collections (project_id, collection_id);

-- Collections, new shape: the project/collection junction; delete removes the row.
CREATE TABLE project_collections
(
    project_id                    uuid        NOT NULL,
    collection_id                 uuid        NOT NULL UNIQUE,
    -- the collection's description
    research_context              text        NOT NULL,
    tags                          text[]      NOT NULL,
    linked_project_question_ids   uuid[]      NOT NULL,
    linked_project_hypothesis_ids uuid[]      NOT NULL,
    created_at                    timestamptz NOT NULL,
    updated_at                    timestamptz NOT NULL,
    -- projection bookkeeping: the collection's event sequence this row reflects
    last_sequence                 bigint      NOT NULL,
    PRIMARY KEY (project_id, collection_id)
);

INSERT INTO read_sources (domain, source) VALUES ('collections', 'legacy');
