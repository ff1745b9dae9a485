package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// SchemaVersion is the version of the database schema this binary writes. Open migrates an
// older schema up to it and refuses a newer one: an older binary must not write a schema it
// does not know.
const SchemaVersion = 7

// ErrSchemaTooNew is wrapped by Open's error when the database was migrated by a newer hubrelay.
var ErrSchemaTooNew = errors.New("database schema is newer than this hubrelay")

// migrations[v-1] moves the schema from version v-1 to v. Each runs in one transaction, under
// the schema's advisory lock, so replicas starting at once migrate once.
var migrations = []string{
	// 1: the queue, dedup keys partitioned by day, replicas and their claims, dead letters.
	`
CREATE SEQUENCE item_seq;

-- One row per pending (item, sink) delivery. state 0 is ready, 1 is scheduled until due_at.
-- owner is the replica that claimed it (Ready); a claim counts while that replica is live.
CREATE TABLE deliveries (
	sink     text        NOT NULL,
	seq      bigint      NOT NULL,
	state    smallint    NOT NULL DEFAULT 0,
	due_at   timestamptz,
	attempt  integer     NOT NULL DEFAULT 0,
	first_at timestamptz NOT NULL,
	history  bytea,
	data     bytea       NOT NULL,
	owner    bigint,
	PRIMARY KEY (sink, seq)
);
CREATE INDEX deliveries_ready ON deliveries (sink, seq) WHERE state = 0;
CREATE INDEX deliveries_due ON deliveries (due_at) WHERE state = 1;

-- Dedup keys (a hash of the change's key) by UTC day of acceptance: expiry drops whole days.
CREATE TABLE dedup (
	key bytea       NOT NULL,
	at  timestamptz NOT NULL,
	day date        NOT NULL
) PARTITION BY RANGE (day);
CREATE INDEX dedup_key ON dedup (key);

-- Live replicas: a replica's claims (deliveries.owner, sink_owners.owner) count while its
-- heartbeat is younger than the lease.
CREATE TABLE replicas (
	id         bigserial   PRIMARY KEY,
	name       text        NOT NULL,
	started_at timestamptz NOT NULL DEFAULT now(),
	heartbeat  timestamptz NOT NULL DEFAULT now()
);

-- The replica that reads a sink's queue, so each sink is delivered in acceptance order.
CREATE TABLE sink_owners (
	sink  text   PRIMARY KEY,
	owner bigint NOT NULL
);

-- Dead letters, as relay/deadletter's JSON (letter), with the columns List filters on.
CREATE TABLE dead_letters (
	id      text        PRIMARY KEY,
	sink    text        NOT NULL,
	dead_at timestamptz NOT NULL,
	letter  bytea       NOT NULL
);
CREATE INDEX dead_letters_dead_at ON dead_letters (dead_at, id);

-- accept records the items of one POST: under an advisory lock per key (taken in the sorted
-- order of locks, so two callers never deadlock), a key seen after now - win is a repeat;
-- otherwise the key is recorded, the item gets the next seq and one delivery per sink (item i's
-- sinks are sink_names[sink_first[i] .. sink_first[i+1]-1]). It returns the dup flags.
CREATE FUNCTION accept(keys bytea[], datas bytea[], sink_first int[], sink_names text[],
                       locks bigint[], now timestamptz, win interval) RETURNS bool[]
LANGUAGE plpgsql AS $$
DECLARE
	n      int := coalesce(array_length(datas, 1), 0);
	dup    bool[] := array_fill(false, ARRAY[n]);
	cutoff timestamptz := now - win;
	i      int;
	l      bigint;
	s      bigint;
BEGIN
	IF locks IS NOT NULL THEN
		FOREACH l IN ARRAY locks LOOP
			PERFORM pg_advisory_xact_lock(l);
		END LOOP;
	END IF;
	FOR i IN 1..n LOOP
		IF keys[i] IS NOT NULL THEN
			IF EXISTS (SELECT 1 FROM dedup d WHERE d.key = keys[i] AND d.at > cutoff
			           AND d.day >= (cutoff AT TIME ZONE 'UTC')::date) THEN
				dup[i] := true;
				CONTINUE;
			END IF;
			INSERT INTO dedup (key, at, day) VALUES (keys[i], now, (now AT TIME ZONE 'UTC')::date);
		END IF;
		s := nextval('item_seq');
		INSERT INTO deliveries (sink, seq, first_at, data)
		SELECT DISTINCT sink_names[j], s, now, datas[i]
		FROM generate_series(sink_first[i], sink_first[i + 1] - 1) AS j;
	END LOOP;
	RETURN dup;
END
$$;
`,
	// 2: accept works on the whole request at once (a handful of statements however many
	// changes a POST carries) instead of a loop of statements per change.
	`
CREATE OR REPLACE FUNCTION accept(keys bytea[], datas bytea[], sink_first int[], sink_names text[],
                                  locks bigint[], now timestamptz, win interval) RETURNS bool[]
LANGUAGE plpgsql AS $$
DECLARE
	n      int := coalesce(array_length(datas, 1), 0);
	cutoff timestamptz := now - win;
	l      bigint;
	dup    bool[];
BEGIN
	IF locks IS NOT NULL THEN
		FOREACH l IN ARRAY locks LOOP
			PERFORM pg_advisory_xact_lock(l);
		END LOOP;
	END IF;
	-- A repeat: a key seen in the window, or earlier in this same call.
	SELECT array_agg(NOT fresh ORDER BY i) INTO dup FROM (
		SELECT i, keys[i] IS NULL OR (
			row_number() OVER (PARTITION BY keys[i] ORDER BY i) = 1 AND NOT EXISTS (
				SELECT 1 FROM dedup d WHERE d.key = keys[i] AND d.at > cutoff
				AND d.day >= (cutoff AT TIME ZONE 'UTC')::date)) AS fresh
		FROM generate_series(1, n) AS i
	) f;
	INSERT INTO dedup (key, at, day)
	SELECT keys[i], now, (now AT TIME ZONE 'UTC')::date
	FROM generate_series(1, n) AS i WHERE NOT dup[i] AND keys[i] IS NOT NULL;
	-- One seq per new item, in item order (the series is scanned in order).
	INSERT INTO deliveries (sink, seq, first_at, data)
	SELECT DISTINCT ON (s.seq, sink_names[j]) sink_names[j], s.seq, now, datas[s.i]
	FROM (SELECT i, nextval('item_seq') AS seq FROM generate_series(1, n) AS i WHERE NOT dup[i]) s,
	     generate_series(sink_first[s.i], sink_first[s.i + 1] - 1) AS j;
	RETURN dup;
END
$$;
`,
	// 3: the sinks each replica runs, renewed with its heartbeat (sinks.go).
	`
-- A replica lacking a sink (a rolling config change) leaves that sink's deliveries to the
-- replicas that run it, and dead-letters them as not configured only once no replica has
-- renewed the sink's row for the grace period.
CREATE TABLE replica_sinks (
	sink      text        NOT NULL,
	replica   bigint      NOT NULL,
	last_seen timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (sink, replica)
);
`,
	// 4: the operator's pause of sinks, shared by every replica (relay.SinkControls).
	`
CREATE TABLE sink_states (
	sink   text        PRIMARY KEY,
	paused boolean     NOT NULL,
	since  timestamptz NOT NULL,
	by_who text        NOT NULL
);
`,
	// 5: accept's lookups stay index probes under plpgsql's cached generic plan. Version 2's
	// NOT EXISTS over keys[i] was planned, once generic, as a hashed subplan: a scan of every
	// dedup key in the window on each call (46 ms of 50-change POSTs at 30k keys, growing with
	// the window). A LATERAL probe with LIMIT 1 per key cannot be hashed; unnest replaces the
	// per-element subscripts.
	`
CREATE OR REPLACE FUNCTION accept(keys bytea[], datas bytea[], sink_first int[], sink_names text[],
                                  locks bigint[], now timestamptz, win interval) RETURNS bool[]
LANGUAGE plpgsql AS $$
DECLARE
	cutoff     timestamptz := now - win;
	cutoff_day date := (cutoff AT TIME ZONE 'UTC')::date;
	l          bigint;
	dup        bool[];
BEGIN
	IF locks IS NOT NULL THEN
		FOREACH l IN ARRAY locks LOOP
			PERFORM pg_advisory_xact_lock(l);
		END LOOP;
	END IF;
	-- A repeat: a key seen in the window (one index probe per key, whatever plan is cached),
	-- or earlier in this same call.
	SELECT coalesce(array_agg(NOT fresh ORDER BY i), '{}') INTO dup FROM (
		SELECT k.i, k.key IS NULL OR (row_number() OVER (PARTITION BY k.key ORDER BY k.i) = 1 AND seen.hit IS NULL) AS fresh
		FROM unnest(keys) WITH ORDINALITY AS k(key, i)
		LEFT JOIN LATERAL (
			SELECT 1 AS hit FROM dedup d
			WHERE d.key = k.key AND d.at > cutoff AND d.day >= cutoff_day LIMIT 1
		) seen ON true
	) f;
	INSERT INTO dedup (key, at, day)
	SELECT k.key, now, (now AT TIME ZONE 'UTC')::date
	FROM unnest(keys, dup) AS k(key, dup) WHERE NOT k.dup AND k.key IS NOT NULL;
	-- One seq per new item, in item order (ordinality order).
	INSERT INTO deliveries (sink, seq, first_at, data)
	SELECT DISTINCT ON (s.seq, sink_names[j]) sink_names[j], s.seq, now, s.data
	FROM (SELECT it.i, it.data, nextval('item_seq') AS seq
	      FROM unnest(datas, dup) WITH ORDINALITY AS it(data, dup, i) WHERE NOT it.dup ORDER BY it.i) s,
	     generate_series(sink_first[s.i], sink_first[s.i + 1] - 1) AS j;
	RETURN dup;
END
$$;
`,
	// 6: each delivery's ordering key (a sink's order_by): the claim skips a delivery whose key
	// has an older pending one (order.go). accept_keyed is version 5's accept with the keys;
	// accept stays for replicas of the previous version during a rolling upgrade (their
	// changes are accepted without keys).
	`
ALTER TABLE deliveries ADD COLUMN order_key text;
CREATE INDEX deliveries_order ON deliveries (sink, order_key, seq) WHERE order_key IS NOT NULL;
CREATE FUNCTION accept_keyed(keys bytea[], datas bytea[], sink_first int[], sink_names text[],
                             sink_keys text[], locks bigint[], now timestamptz, win interval) RETURNS bool[]
LANGUAGE plpgsql AS $$
DECLARE
	cutoff     timestamptz := now - win;
	cutoff_day date := (cutoff AT TIME ZONE 'UTC')::date;
	l          bigint;
	dup        bool[];
BEGIN
	IF locks IS NOT NULL THEN
		FOREACH l IN ARRAY locks LOOP
			PERFORM pg_advisory_xact_lock(l);
		END LOOP;
	END IF;
	-- A repeat: a key seen in the window (one index probe per key, whatever plan is cached),
	-- or earlier in this same call.
	SELECT coalesce(array_agg(NOT fresh ORDER BY i), '{}') INTO dup FROM (
		SELECT k.i, k.key IS NULL OR (row_number() OVER (PARTITION BY k.key ORDER BY k.i) = 1 AND seen.hit IS NULL) AS fresh
		FROM unnest(keys) WITH ORDINALITY AS k(key, i)
		LEFT JOIN LATERAL (
			SELECT 1 AS hit FROM dedup d
			WHERE d.key = k.key AND d.at > cutoff AND d.day >= cutoff_day LIMIT 1
		) seen ON true
	) f;
	INSERT INTO dedup (key, at, day)
	SELECT k.key, now, (now AT TIME ZONE 'UTC')::date
	FROM unnest(keys, dup) AS k(key, dup) WHERE NOT k.dup AND k.key IS NOT NULL;
	-- One seq per new item, in item order (ordinality order).
	INSERT INTO deliveries (sink, seq, first_at, data, order_key)
	SELECT DISTINCT ON (s.seq, sink_names[j]) sink_names[j], s.seq, now, s.data, nullif(sink_keys[j], '')
	FROM (SELECT it.i, it.data, nextval('item_seq') AS seq
	      FROM unnest(datas, dup) WITH ORDINALITY AS it(data, dup, i) WHERE NOT it.dup ORDER BY it.i) s,
	     generate_series(sink_first[s.i], sink_first[s.i + 1] - 1) AS j;
	RETURN dup;
END
$$;
`,
	// 7: accept_batch commits the items of several concurrent requests at once (accept.go's
	// group commit), each item with its own acceptance time; version 6's accept and
	// accept_keyed stay for replicas of the previous version during a rolling upgrade.
	// deliveries' pages keep room for the new version of a row that a claim, a retry or a
	// promotion writes, so it stays on its page without new index entries (a HOT update).
	`
ALTER TABLE deliveries SET (fillfactor = 60);
CREATE FUNCTION accept_batch(keys bytea[], datas bytea[], nows timestamptz[], sink_first int[], sink_names text[],
                             sink_keys text[], locks bigint[], win interval) RETURNS bool[]
LANGUAGE plpgsql AS $$
DECLARE
	-- The oldest day any item's window reaches: the probes read no older partition.
	cutoff_day date := (((SELECT min(n) FROM unnest(nows) AS n) - win) AT TIME ZONE 'UTC')::date;
	l          bigint;
	dup        bool[];
BEGIN
	IF locks IS NOT NULL THEN
		FOREACH l IN ARRAY locks LOOP
			PERFORM pg_advisory_xact_lock(l);
		END LOOP;
	END IF;
	-- A repeat: a key seen in its item's window (one index probe per key, whatever plan is
	-- cached), or earlier in this same call.
	SELECT coalesce(array_agg(NOT fresh ORDER BY i), '{}') INTO dup FROM (
		SELECT k.i, k.key IS NULL OR (row_number() OVER (PARTITION BY k.key ORDER BY k.i) = 1 AND seen.hit IS NULL) AS fresh
		FROM unnest(keys, nows) WITH ORDINALITY AS k(key, at, i)
		LEFT JOIN LATERAL (
			SELECT 1 AS hit FROM dedup d
			WHERE d.key = k.key AND d.at > k.at - win AND d.day >= cutoff_day LIMIT 1
		) seen ON true
	) f;
	INSERT INTO dedup (key, at, day)
	SELECT k.key, k.at, (k.at AT TIME ZONE 'UTC')::date
	FROM unnest(keys, nows, dup) AS k(key, at, dup) WHERE NOT k.dup AND k.key IS NOT NULL;
	-- One seq per new item, in item order (ordinality order).
	INSERT INTO deliveries (sink, seq, first_at, data, order_key)
	SELECT DISTINCT ON (s.seq, sink_names[j]) sink_names[j], s.seq, s.at, s.data, nullif(sink_keys[j], '')
	FROM (SELECT it.i, it.data, it.at, nextval('item_seq') AS seq
	      FROM unnest(datas, nows, dup) WITH ORDINALITY AS it(data, at, dup, i) WHERE NOT it.dup ORDER BY it.i) s,
	     generate_series(sink_first[s.i], sink_first[s.i + 1] - 1) AS j;
	RETURN dup;
END
$$;
`,
}

// lockKey is the advisory lock that serializes migrations and maintenance of one schema.
func lockKey(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("hubrelay schema " + schema))
	return int64(h.Sum64())
}

// migrate creates or upgrades the schema under its advisory lock.
func migrate(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Release()
	key := lockKey(schema)
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", key); err != nil {
		return fmt.Errorf("take migration lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", key)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{schema}.Sanitize()); err != nil {
		return fmt.Errorf("create schema: %w", err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)"); err != nil {
		return fmt.Errorf("create schema_version: %w", err)
	}
	var v int
	err = conn.QueryRow(ctx, "SELECT version FROM schema_version").Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		if _, err := conn.Exec(ctx, "INSERT INTO schema_version VALUES (0)"); err != nil {
			return fmt.Errorf("init schema_version: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if v > SchemaVersion {
		return fmt.Errorf("schema %q is at version %d, this hubrelay knows up to %d: run a newer hubrelay: %w",
			schema, v, SchemaVersion, ErrSchemaTooNew)
	}
	for ; v < SchemaVersion; v++ {
		tx, err := conn.Begin(ctx)
		if err != nil {
			return fmt.Errorf("migrate to version %d: %w", v+1, err)
		}
		if _, err := tx.Exec(ctx, migrations[v]); err != nil {
			tx.Rollback(ctx)
			return fmt.Errorf("migrate to version %d: %w", v+1, err)
		}
		if _, err := tx.Exec(ctx, "UPDATE schema_version SET version = $1", v+1); err != nil {
			tx.Rollback(ctx)
			return fmt.Errorf("migrate to version %d: %w", v+1, err)
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("migrate to version %d: %w", v+1, err)
		}
	}
	return nil
}
