-- The floor of all: one event row, in its own transaction.
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
VALUES ('ping', CAST(gen_random_uuid() AS text), 1, 'Pinged', '1.0', '{"Pinged": {}}', '{}');
