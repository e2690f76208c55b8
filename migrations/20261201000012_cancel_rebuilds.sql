-- A rebuild can be cancelled (`cutover rebuild --cancel`, DELETE /admin/jobs/{id}): it stops at
-- its next batch and its tables are dropped.
ALTER TABLE rebuild_jobs DROP CONSTRAINT rebuild_jobs_status_check;
ALTER TABLE rebuild_jobs
    ADD CONSTRAINT rebuild_jobs_status_check
        CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled'));
