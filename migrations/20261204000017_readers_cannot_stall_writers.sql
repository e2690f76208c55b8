-- Readers cannot stall writers. The roles handed to people and BI tools (`cutover_reader` and
-- its members) could take what commands, rebuilds and swaps wait on: an advisory lock (the
-- append lock every command takes shared and a swap exclusively, a command's lock per
-- aggregate, a rebuild's per projection), temporary tables, unbounded sessions. The first two
-- go to the application's role alone (the role that runs the migrations and serves: the
-- current user here); the sessions of readers get bounds (`cutover_limit_reader`). What a
-- reader still holds, a table lock while it reads, a swap stops once it has waited
-- `--swap-wait-secs` (see the projections crate, rebuild). docs/operations.md, "Tokens and the
-- cutover_reader role", says what an operator does for the roles they create.
--
-- Revoking from PUBLIC needs the owner of what is revoked: the bootstrap superuser for the
-- functions, the database's owner for TEMPORARY. Where the current user is not, Postgres
-- revokes nothing (a warning); the check at the end then says what a superuser must run.
DO
$$
DECLARE
    lock_function regprocedure;
BEGIN
    FOR lock_function IN
        SELECT p.oid::regprocedure
          FROM pg_proc AS p
         WHERE p.pronamespace = 'pg_catalog'::regnamespace
           AND p.proname ~ '^pg_(try_)?advisory_(xact_)?lock(_shared)?$'
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', lock_function);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', lock_function, current_user);
    END LOOP;
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO %I', current_database(), current_user);
    -- Postgres 15 revokes it by default; older ones grant it to PUBLIC.
    REVOKE CREATE ON SCHEMA public FROM PUBLIC;
    IF has_function_privilege('cutover_reader', 'pg_advisory_lock(bigint)', 'EXECUTE')
        OR has_database_privilege('cutover_reader', current_database(), 'TEMPORARY') THEN
        RAISE WARNING 'cutover_reader can still take advisory locks or create temporary tables: '
            'the migration''s role (%) does not own what it revokes. As a superuser, in this '
            'database, run the statements of docs/operations.md, "Tokens and the '
            'cutover_reader role"', current_user;
    END IF;
END
$$;

-- A swap stops the sessions that hold it up (cancels their query, or ends the session when it
-- sits idle in a transaction): the application's role needs `pg_signal_backend` for sessions
-- of other roles. Granting it takes a superuser (or its admin option); a superuser needs none.
DO
$$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        BEGIN
            EXECUTE format('GRANT pg_signal_backend TO %I', current_user);
        EXCEPTION
            WHEN insufficient_privilege THEN
                RAISE WARNING 'cannot grant pg_signal_backend to %: a swap cannot stop readers '
                    'that hold it up. As a superuser: GRANT pg_signal_backend TO %',
                    current_user, current_user;
        END;
    END IF;
END
$$;

-- The bounds of a reader's sessions in this database: one statement, one lock wait, a
-- transaction left open, an idle session, and how many sessions at once. Role settings apply
-- to the role that logs in (not to the roles it is a member of, nor through SET ROLE): an
-- operator calls this for every login role they create in cutover_reader. It refuses a role
-- that is not a member of cutover_reader or that has the application's privileges. It runs
-- with its caller's rights (altering roles takes a superuser or CREATEROLE).
CREATE PROCEDURE cutover_limit_reader(reader name)
    LANGUAGE plpgsql
AS
$$
DECLARE
    app oid := (SELECT relowner FROM pg_class WHERE oid = 'public.events'::regclass);
BEGIN
    IF NOT pg_has_role(reader, 'cutover_reader', 'USAGE') THEN
        RAISE EXCEPTION 'role % is not a member of cutover_reader', reader;
    END IF;
    IF reader <> 'cutover_reader' AND (pg_has_role(reader, app, 'USAGE')
        OR (SELECT rolsuper FROM pg_roles WHERE rolname = reader)) THEN
        RAISE EXCEPTION 'role % has the application''s privileges: readers must not', reader;
    END IF;
    EXECUTE format('ALTER ROLE %I CONNECTION LIMIT 4', reader);
    EXECUTE format('ALTER ROLE %I IN DATABASE %I SET statement_timeout = %L',
                   reader, current_database(), '15min');
    EXECUTE format('ALTER ROLE %I IN DATABASE %I SET lock_timeout = %L',
                   reader, current_database(), '10s');
    EXECUTE format('ALTER ROLE %I IN DATABASE %I SET idle_in_transaction_session_timeout = %L',
                   reader, current_database(), '1min');
    EXECUTE format('ALTER ROLE %I IN DATABASE %I SET idle_session_timeout = %L',
                   reader, current_database(), '30min');
END
$$;

-- cutover_reader itself (for a login as it) and the members the docs had operators create
-- before: bounded now. Altering roles takes a superuser or CREATEROLE; without, a warning.
DO
$$
DECLARE
    reader name;
BEGIN
    FOR reader IN
        SELECT 'cutover_reader'::name
         UNION ALL
        SELECT r.rolname
          FROM pg_auth_members AS m
          JOIN pg_roles AS r ON r.oid = m.member
         WHERE m.roleid = 'cutover_reader'::regrole AND r.rolcanlogin AND NOT r.rolsuper
    LOOP
        BEGIN
            CALL cutover_limit_reader(reader);
        EXCEPTION
            WHEN insufficient_privilege OR raise_exception THEN
                RAISE WARNING 'reader % is not bounded (%): CALL cutover_limit_reader(%L)',
                    reader, SQLERRM, reader;
        END;
    END LOOP;
END
$$;

-- The sessions a swap stopped because they held it up (see the projections crate, rebuild).
ALTER TABLE rebuild_jobs ADD COLUMN swap_stopped jsonb NOT NULL DEFAULT '[]';
COMMENT ON COLUMN rebuild_jobs.swap_stopped IS
    'the sessions the swap stopped: pid, user, application, query_start, state, query '
    '(truncated), signal (cancel or terminate)';
