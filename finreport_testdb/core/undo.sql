-- finreport-testdb: change tracking and undo, installed into a worker database (never the template).
--
-- Every write statement on a tracked table marks the table in _testdb.touched, in the writing
-- transaction itself: a write that rolls back marks nothing, and every driver, thread and task
-- passes through it. _testdb.restore() puts the marked tables back from their baseline copies
-- (taken at install, refreshed by _testdb.rebase() when wider-scoped fixtures committed), resets
-- the sequences and large objects that changed, and reports what only the client can undo.
-- Nothing here is ever run on the template: the template stays the production schema.

CREATE SCHEMA _testdb;

-- One row per table written since the last restore or rebase; relid 0 records DDL.
-- No unique index: a concurrent second mark must never wait for the first writer's transaction.
CREATE UNLOGGED TABLE _testdb.touched (relid oid NOT NULL);
CREATE INDEX touched_relid ON _testdb.touched (relid);

-- The tracked tables: their baseline copy (_testdb."s<oid>"), the columns restored, and whether
-- the baseline differs from the clone's own rows (rebased: wider-scoped fixtures wrote them).
CREATE UNLOGGED TABLE _testdb.tables (
    relid oid PRIMARY KEY,
    copy name NOT NULL,
    columns text NOT NULL,
    has_rows boolean NOT NULL,
    rebased boolean NOT NULL DEFAULT false
);

-- Each sequence's baseline: pg_sequence_last_value() (NULL until first used) and its start.
CREATE UNLOGGED TABLE _testdb.sequences (
    seqrelid oid PRIMARY KEY,
    last_value bigint,
    start_value bigint NOT NULL
);

-- Database-wide baseline: ALTER DATABASE ... SET values, large objects, what this role may do,
-- and whether wider-scoped fixtures ran DDL (a new clone cannot reproduce that baseline).
CREATE UNLOGGED TABLE _testdb.baseline (
    datoid oid NOT NULL,
    settings text[],
    large_objects oid[] NOT NULL,
    locks text[] NOT NULL DEFAULT '{}',  -- advisory locks wider-scoped fixtures hold (new_locks())
    replica boolean NOT NULL,  -- may set session_replication_role: set by the client at install
    ddl boolean NOT NULL DEFAULT false
);
INSERT INTO _testdb.baseline (datoid, large_objects, replica)
    SELECT oid, '{}', false FROM pg_database WHERE datname = current_database();

CREATE FUNCTION _testdb.mark() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    PERFORM 1 FROM _testdb.touched WHERE relid = TG_RELID;
    IF NOT FOUND THEN
        INSERT INTO _testdb.touched VALUES (TG_RELID);
    END IF;
    RETURN NULL;
END $$;

-- The tables a test can write: ordinary and partitioned tables outside the system schemas.
CREATE FUNCTION _testdb.user_tables() RETURNS TABLE (relid oid, relkind "char")
LANGUAGE sql STABLE AS $$
    SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
       AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_testdb')
       AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
$$;

-- ALTER DATABASE ... SET and ALTER ROLE ... IN DATABASE ... SET, as one comparable value.
-- (PL/pgSQL rather than SQL: its plan is cached, and restore() calls it after every test.)
CREATE FUNCTION _testdb.settings() RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT array_agg(s.setrole || ':' || array_to_string(s.setconfig, ',') ORDER BY s.setrole)
              FROM pg_db_role_setting s, _testdb.baseline b WHERE s.setdatabase = b.datoid);
END $$;

-- The advisory locks other sessions hold on this database, as 'pid:key' (pg_locks' key columns).
CREATE FUNCTION _testdb.advisory_locks() RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN ARRAY(SELECT l.pid || ':' || l.classid || ':' || l.objid || ':' || l.objsubid
                   FROM pg_locks l, _testdb.baseline b
                  WHERE l.locktype = 'advisory' AND l.database = b.datoid
                    AND l.pid <> pg_backend_pid() ORDER BY 1);
END $$;

-- The sessions holding advisory locks taken since the baseline (a session-scoped fixture's own
-- lock stays), for the client to end.
CREATE FUNCTION _testdb.new_lock_holders() RETURNS SETOF integer
LANGUAGE sql STABLE AS $$
    SELECT DISTINCT split_part(lock, ':', 1)::integer
      FROM unnest(_testdb.advisory_locks()) lock, _testdb.baseline b
     WHERE lock <> ALL (b.locks)
$$;

-- Copy a tracked table's current rows into its baseline copy.
CREATE FUNCTION _testdb.copy_table(target oid, rebased boolean) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t _testdb.tables;
    n bigint;
BEGIN
    SELECT * INTO t FROM _testdb.tables WHERE relid = target;
    EXECUTE format('DELETE FROM _testdb.%I', t.copy);
    EXECUTE format('INSERT INTO _testdb.%I SELECT %s FROM ONLY %s', t.copy, t.columns,
                   target::regclass);
    GET DIAGNOSTICS n = ROW_COUNT;
    UPDATE _testdb.tables SET has_rows = n > 0, rebased = copy_table.rebased OR tables.rebased
     WHERE relid = target;
END $$;

-- Track every table (triggers, baseline copies), sequence and database-wide setting as they are
-- now. Idempotent: after DDL it re-reads the schema, dropping what is gone.
CREATE FUNCTION _testdb.sync() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    cols text;
BEGIN
    PERFORM set_config('finreport_testdb.internal', 'on', true);
    DELETE FROM _testdb.tables WHERE relid NOT IN (SELECT relid FROM _testdb.user_tables());
    FOR r IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = '_testdb' AND c.relname ~ '^s[0-9]+$' AND c.relkind = 'r'
                AND substr(c.relname, 2)::oid NOT IN (SELECT relid FROM _testdb.tables) LOOP
        EXECUTE format('DROP TABLE _testdb.%I', r.relname);
    END LOOP;
    FOR r IN SELECT u.relid, u.relkind FROM _testdb.user_tables() u LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = r.relid
                        AND tgname = '_testdb_touched') THEN
            EXECUTE format('CREATE TRIGGER _testdb_touched AFTER INSERT OR UPDATE OR DELETE OR '
                           'TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION _testdb.mark()',
                           r.relid::regclass);
        END IF;
        CONTINUE WHEN r.relkind = 'p';  -- the rows live in the partitions
        SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO cols
          FROM pg_attribute WHERE attrelid = r.relid AND attnum > 0 AND NOT attisdropped
           AND attgenerated = '';
        -- The column list may have changed (DDL): the copy is made anew.
        EXECUTE format('DROP TABLE IF EXISTS _testdb.%I', 's' || r.relid);
        EXECUTE format('CREATE UNLOGGED TABLE _testdb.%I AS SELECT %s FROM ONLY %s WITH NO DATA',
                       's' || r.relid, cols, r.relid::regclass);
        INSERT INTO _testdb.tables VALUES (r.relid, 's' || r.relid, cols, false)
            ON CONFLICT (relid) DO UPDATE SET copy = EXCLUDED.copy, columns = EXCLUDED.columns;
        PERFORM _testdb.copy_table(r.relid, false);
    END LOOP;
    DELETE FROM _testdb.sequences;
    INSERT INTO _testdb.sequences
        SELECT s.seqrelid, pg_sequence_last_value(s.seqrelid), s.seqstart
          FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', '_testdb')
           AND c.relpersistence <> 't';
    UPDATE _testdb.baseline SET settings = _testdb.settings(),
        large_objects = ARRAY(SELECT oid FROM pg_largeobject_metadata ORDER BY oid),
        locks = _testdb.advisory_locks();
    DELETE FROM _testdb.touched;
END $$;

-- Undo what was committed since the baseline. Returns 'clean' (nothing was), 'restored', or what
-- only the client can undo, with nothing changed yet: 'prepared' (prepared transactions: they hold locks, so they
-- go first), 'locks' (other sessions hold advisory locks: they are ended), 'swap' (DDL, changed
-- database or role settings, or a role that may not restore without firing triggers: the
-- database is replaced). Plain PL/pgSQL, so every query's plan is cached for the session: the
-- common call, after a test that committed nothing, costs a few index probes.
CREATE FUNCTION _testdb.restore() RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    b _testdb.baseline;
    t _testdb.tables;
    s _testdb.sequences;
    touched boolean;
    changed boolean := false;
BEGIN
    SELECT * INTO b FROM _testdb.baseline;
    IF EXISTS (SELECT 1 FROM pg_prepared_xacts WHERE database = current_database()) THEN
        RETURN 'prepared';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND database = b.datoid
                                        AND pid <> pg_backend_pid())
       AND EXISTS (SELECT 1 FROM unnest(_testdb.advisory_locks()) lock
                    WHERE lock <> ALL (b.locks)) THEN
        RETURN 'locks';
    END IF;
    touched := EXISTS (SELECT 1 FROM _testdb.touched);
    IF touched AND EXISTS (SELECT 1 FROM _testdb.touched WHERE relid = 0) THEN
        RETURN 'swap';
    END IF;
    IF _testdb.settings() IS DISTINCT FROM b.settings THEN
        RETURN 'swap';
    END IF;
    IF touched AND NOT b.replica THEN
        IF NOT _testdb.restore_as_owner() THEN
            RETURN 'swap';
        END IF;
        DELETE FROM _testdb.touched;
    ELSIF touched THEN
        -- Replica mode: neither the app's triggers nor foreign-key actions fire while the
        -- baseline rows go back; untouched tables already hold their baseline.
        PERFORM set_config('session_replication_role', 'replica', true);
        FOR t IN SELECT * FROM _testdb.tables WHERE relid IN (
                     SELECT relid FROM _testdb.touched UNION
                     SELECT p.relid FROM (SELECT DISTINCT relid FROM _testdb.touched) m,
                            pg_partition_tree(m.relid) p WHERE p.isleaf) LOOP
            EXECUTE format('DELETE FROM ONLY %s', t.relid::regclass);
            IF t.has_rows THEN
                EXECUTE format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM _testdb.%I',
                               t.relid::regclass, t.columns, t.columns, t.copy);
            END IF;
        END LOOP;
        PERFORM set_config('session_replication_role', 'origin', true);
        DELETE FROM _testdb.touched;
    END IF;
    FOR s IN SELECT * FROM _testdb.sequences
              WHERE pg_sequence_last_value(seqrelid) IS DISTINCT FROM last_value LOOP
        PERFORM setval(s.seqrelid, coalesce(s.last_value, s.start_value), s.last_value IS NOT NULL);
        changed := true;
    END LOOP;
    PERFORM lo_unlink(oid) FROM pg_largeobject_metadata WHERE oid <> ALL (b.large_objects);
    IF FOUND THEN
        changed := true;
    END IF;
    RETURN CASE WHEN touched OR changed THEN 'restored' ELSE 'clean' END;
END $$;

-- The touched tables' restore for a role that may not set session_replication_role: those tables
-- and every table whose foreign keys reach them are truncated together (TRUNCATE fires no
-- ON DELETE action) and refilled parents first, with their user triggers disabled meanwhile (the
-- owner may; foreign-key checks stay on and pass, the copies being consistent). False, with
-- nothing changed, when their foreign keys form a cycle or the role does not own a table: only a
-- new clone undoes the test then.
CREATE FUNCTION _testdb.restore_as_owner() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    closure oid[];
    pending oid[];
    ordered oid[] := '{}';
    progress boolean;
    r oid;
    t _testdb.tables;
    tg record;
    disabled text[] := '{}';
BEGIN
    WITH RECURSIVE reach(relid) AS (
        SELECT relid FROM _testdb.touched
        UNION SELECT p.relid FROM (SELECT DISTINCT relid FROM _testdb.touched) m,
                                  pg_partition_tree(m.relid) p WHERE p.isleaf
        UNION SELECT c.conrelid FROM pg_constraint c JOIN reach ON c.confrelid = reach.relid
               WHERE c.contype = 'f'
    )
    SELECT array_agg(DISTINCT relid) INTO closure FROM reach
     WHERE relid IN (SELECT relid FROM _testdb.tables);
    pending := closure;
    WHILE cardinality(pending) > 0 LOOP
        progress := false;
        FOREACH r IN ARRAY pending LOOP
            IF NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.contype = 'f' AND c.conrelid = r
                             AND c.confrelid <> r AND c.confrelid = ANY (pending)) THEN
                ordered := ordered || r;
                pending := array_remove(pending, r);
                progress := true;
            END IF;
        END LOOP;
        IF NOT progress THEN
            RETURN false;  -- a foreign-key cycle: no order refills them
        END IF;
    END LOOP;
    BEGIN
        FOR tg IN SELECT tgrelid, tgname, tgenabled FROM pg_trigger
                   WHERE tgrelid = ANY (closure) AND NOT tgisinternal AND tgenabled IN ('O', 'A') LOOP
            EXECUTE format('ALTER TABLE %s DISABLE TRIGGER %I', tg.tgrelid::regclass, tg.tgname);
            disabled := disabled || format('ALTER TABLE %s ENABLE %s TRIGGER %I', tg.tgrelid::regclass,
                                           CASE tg.tgenabled WHEN 'A' THEN 'ALWAYS' ELSE '' END,
                                           tg.tgname);
        END LOOP;
        EXECUTE 'TRUNCATE ' || (SELECT string_agg(x::regclass::text, ', ') FROM unnest(closure) x);
    EXCEPTION WHEN insufficient_privilege THEN
        RETURN false;
    END;
    FOREACH r IN ARRAY ordered LOOP
        SELECT * INTO t FROM _testdb.tables WHERE relid = r;
        IF t.has_rows THEN
            EXECUTE format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM _testdb.%I',
                           t.relid::regclass, t.columns, t.columns, t.copy);
        END IF;
    END LOOP;
    FOR i IN 1 .. cardinality(disabled) LOOP
        EXECUTE disabled[i];
    END LOOP;
    RETURN true;
END $$;

-- Make the current state the baseline (after wider-scoped fixtures committed): refresh the copies
-- of the tables written since, and the other baselines; after DDL, track the schema anew.
-- Returns whether the baseline changed.
CREATE FUNCTION _testdb.rebase() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    changed boolean := EXISTS (SELECT 1 FROM _testdb.touched);
BEGIN
    IF EXISTS (SELECT 1 FROM _testdb.touched WHERE relid = 0) THEN
        PERFORM _testdb.sync();
        UPDATE _testdb.baseline SET ddl = true;
        RETURN true;
    END IF;
    FOR r IN SELECT t.relid FROM _testdb.tables t WHERE t.relid IN (
                 SELECT relid FROM _testdb.touched UNION
                 SELECT p.relid FROM (SELECT DISTINCT relid FROM _testdb.touched) m,
                        pg_partition_tree(m.relid) p WHERE p.isleaf) LOOP
        PERFORM _testdb.copy_table(r.relid, true);
    END LOOP;
    DELETE FROM _testdb.touched;
    UPDATE _testdb.sequences SET last_value = pg_sequence_last_value(seqrelid)
     WHERE pg_sequence_last_value(seqrelid) IS DISTINCT FROM last_value;
    changed := changed OR FOUND;
    UPDATE _testdb.baseline SET settings = _testdb.settings(),
        large_objects = ARRAY(SELECT oid FROM pg_largeobject_metadata ORDER BY oid),
        locks = _testdb.advisory_locks()
     WHERE settings IS DISTINCT FROM _testdb.settings()
        OR large_objects <> ARRAY(SELECT oid FROM pg_largeobject_metadata ORDER BY oid)
        OR locks <> _testdb.advisory_locks();
    RETURN changed OR FOUND;
END $$;

-- DDL (needs a superuser to install): recorded as relid 0, so restore() asks for a swap and
-- rebase() tracks the schema anew. Temporary objects and testdb's own work are not DDL here.
CREATE FUNCTION _testdb.mark_ddl() RETURNS event_trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('finreport_testdb.internal', true) IS DISTINCT FROM 'on' THEN
        INSERT INTO _testdb.touched VALUES (0);
    END IF;
END $$;
