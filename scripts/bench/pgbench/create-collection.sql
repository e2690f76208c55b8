-- Create collection: the CollectionCreated event, the legacy `collections` row and the new
-- `project_collections` row, in one transaction (Cutover's projector statements).
\set p random(1, 50)
BEGIN;
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
VALUES ('collection', CAST(gen_random_uuid() AS text), 1, 'CollectionCreated', '1.0',
        jsonb_build_object('CollectionCreated', jsonb_build_object(
            'project_id', format('00000000-0000-4000-8000-%s', lpad(CAST(:p AS text), 12, '0')),
            'name', 'bench', 'description', 'made by pgbench')),
        '{"command": "CreateCollection"}')
RETURNING aggregate_id AS cid, recorded_at AS at, payload -> 'CollectionCreated' ->> 'project_id' AS project
\gset
INSERT INTO collections (collection_id, project_id, collection_name, description, is_active,
                         created_at, updated_at, last_sequence)
VALUES (CAST(:cid AS uuid), CAST(:project AS uuid), 'bench', 'made by pgbench', true,
        CAST(:at AS timestamptz), CAST(:at AS timestamptz), 1)
ON CONFLICT (collection_id) DO NOTHING;
INSERT INTO project_collections (project_id, collection_id, research_context, tags,
                                 linked_project_question_ids, linked_project_hypothesis_ids,
                                 created_at, updated_at, last_sequence, collection_name,
                                 description, is_active)
VALUES (CAST(:project AS uuid), CAST(:cid AS uuid), 'made by pgbench', '{}', '{}', '{}',
        CAST(:at AS timestamptz), CAST(:at AS timestamptz), 1, 'bench', 'made by pgbench', true)
ON CONFLICT (project_id, collection_id) DO NOTHING;
END;
