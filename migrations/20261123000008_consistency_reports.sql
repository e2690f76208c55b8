-- The outcome of every verification (CLI or API), newest kept, so that the console and
-- operators see the latest consistency report without running one.
CREATE TABLE consistency_reports (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    checked_at  timestamptz NOT NULL DEFAULT now(),
    consistent  boolean     NOT NULL,
    report      jsonb       NOT NULL
);
