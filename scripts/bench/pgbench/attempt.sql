-- Record an attempt: the AttemptRecorded event (its sequence follows the subskill's stream;
-- each client has its own students, so streams never race), the legacy attempt and competency
-- documents, and the typed attempt, competency and skill-analytics rows (Cutover's projector
-- statements).
\set s random(1, 5000)
\set student :client_id * 100000 + :s
\set subject random(1, 3)
\set skill random(0, 19)
\set sub random(0, 3)
\set score random(0, 10)
BEGIN;
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
SELECT 'student_subskill', k.id,
       coalesce((SELECT max(sequence) FROM events
                  WHERE aggregate_type = 'student_subskill' AND aggregate_id = k.id), 0) + 1,
       'AttemptRecorded', '1.0',
       jsonb_build_object('AttemptRecorded', jsonb_build_object(
           'key', jsonb_build_object('student_id', CAST(:student AS bigint), 'subject', k.subject,
                                     'skill_id', k.skill_id, 'subskill_id', k.subskill_id),
           'attempt_id', gen_random_uuid(), 'score', CAST(:score AS float8),
           'analysis', 'made by pgbench', 'feedback', 'keep going',
           'competency', jsonb_build_object('total_attempts', 1, 'credibility', 0.26,
                                            'current_score', 5.5))),
       '{"command": "RecordAttempt"}'
  FROM (SELECT format('%s_%s_%s_%s', CAST(:student AS text), subject, skill_id, subskill_id) AS id,
               subject, skill_id, subskill_id
          FROM (SELECT (ARRAY['math', 'reading', 'science'])[CAST(:subject AS int)] AS subject,
                       'skill-' || CAST(:skill AS text) AS skill_id,
                       'sub-' || CAST(:sub AS text) AS subskill_id) AS parts) AS k
RETURNING aggregate_id AS aid, sequence AS seq, recorded_at AS at,
          payload -> 'AttemptRecorded' ->> 'attempt_id' AS attempt,
          payload -> 'AttemptRecorded' -> 'key' ->> 'subject' AS subject,
          payload -> 'AttemptRecorded' -> 'key' ->> 'skill_id' AS skill_id,
          payload -> 'AttemptRecorded' -> 'key' ->> 'subskill_id' AS subskill_id
\gset
WITH attempt AS (
    INSERT INTO legacy_attempts (id, student_id, doc)
    VALUES (CAST(:attempt AS text), CAST(:student AS bigint), jsonb_build_object(
        'student_id', CAST(:student AS bigint), 'subject', CAST(:subject AS text),
        'skill_id', CAST(:skill_id AS text), 'subskill_id', CAST(:subskill_id AS text),
        'score', CAST(:score AS float8), 'analysis', 'made by pgbench', 'feedback', 'keep going',
        'timestamp', CAST(:at AS text)))
    ON CONFLICT (id) DO NOTHING
)
INSERT INTO legacy_competencies (id, student_id, doc, last_sequence)
VALUES (CAST(:aid AS text), CAST(:student AS bigint), jsonb_build_object(
        'student_id', CAST(:student AS bigint), 'subject', CAST(:subject AS text),
        'skill_id', CAST(:skill_id AS text), 'subskill_id', CAST(:subskill_id AS text),
        'current_score', 5.5, 'credibility', 0.26, 'total_attempts', CAST(:seq AS int),
        'last_updated', CAST(:at AS text)), CAST(:seq AS bigint))
ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc, last_sequence = EXCLUDED.last_sequence
 WHERE legacy_competencies.last_sequence < EXCLUDED.last_sequence;
WITH attempt AS (
    INSERT INTO student_attempts (attempt_id, student_id, subject, skill_id, subskill_id, score,
                                  analysis, feedback, attempted_at)
    VALUES (CAST(:attempt AS uuid), CAST(:student AS bigint), CAST(:subject AS text),
            CAST(:skill_id AS text), CAST(:subskill_id AS text), CAST(:score AS float8),
            'made by pgbench', 'keep going', CAST(:at AS timestamptz))
    ON CONFLICT (attempt_id) DO NOTHING
    RETURNING score
), competency AS (
    INSERT INTO student_competencies (student_id, subject, skill_id, subskill_id, current_score,
                                      credibility, total_attempts, last_updated, last_sequence)
    VALUES (CAST(:student AS bigint), CAST(:subject AS text), CAST(:skill_id AS text),
            CAST(:subskill_id AS text), 5.5, 0.26, CAST(:seq AS int), CAST(:at AS timestamptz),
            CAST(:seq AS bigint))
    ON CONFLICT (student_id, subject, skill_id, subskill_id) DO UPDATE
       SET current_score = EXCLUDED.current_score, credibility = EXCLUDED.credibility,
           total_attempts = EXCLUDED.total_attempts, last_updated = EXCLUDED.last_updated,
           last_sequence = EXCLUDED.last_sequence
     WHERE student_competencies.last_sequence < EXCLUDED.last_sequence
)
INSERT INTO skill_analytics AS s (subject, skill_id, subskill_id, attempts, students, score_sum,
                                  last_updated)
SELECT CAST(:subject AS text), CAST(:skill_id AS text), CAST(:subskill_id AS text), 1,
       CASE WHEN CAST(:seq AS int) = 1 THEN 1 ELSE 0 END, score::numeric,
       CAST(:at AS timestamptz)
  FROM attempt
ON CONFLICT (subject, skill_id, subskill_id) DO UPDATE
   SET attempts = s.attempts + 1,
       students = s.students + EXCLUDED.students,
       score_sum = s.score_sum + EXCLUDED.score_sum,
       last_updated = greatest(s.last_updated, EXCLUDED.last_updated);
END;
