-- The SQL the shell runs for one `InviteCustomer` in Postgres mode
-- (host/src/backend/postgres/store.rs, bus.rs) when the command is chained
-- to its steps — as the shell runs a command whenever no other waits to be
-- appended: the handler's and the projector's reads, then one transaction
-- with the command, both steps' writes and events, both checkpoints and
-- the notification for the requester (answered from the commit's own
-- writes, nothing read back). As one pgbench transaction: the ceiling for
-- benchmark 3. Run by `host/benches/postgres.rs` with
-- `pgbench -n -M prepared -f invite.sql`, on a database the shell migrated
-- and whose two checkpoints exist. With no consumer running, a checkpoint
-- left behind under concurrency stays behind: most of its updates then
-- move nothing, as a declined chain's.
\set n random(1, 1000000000000000)

-- invite-customer's lookup, then customer-projector's on its event.
SELECT 'invites'::text, key, version, body FROM documents
WHERE collection = coalesce((SELECT physical FROM read_models WHERE collection = 'invites'), 'invites')
  AND key = 'u' || :n || '@example.com';
SELECT 'customers'::text, key, version, body FROM documents
WHERE collection = coalesce((SELECT physical FROM read_models WHERE collection = 'customers'), 'customers')
  AND key = 'id-' || :n;

BEGIN;
-- The command appended, its topic woken.
WITH e AS (
    INSERT INTO events (id, topic, kind, payload, correlation_id, causation_id, command_id, function, version, subject, claims)
    VALUES ('c-' || :n, 'commands', 'InviteCustomer', jsonb_build_object('email', 'u' || :n || '@example.com'),
            'c-' || :n, NULL, 'c-' || :n, NULL, NULL, NULL, NULL)
    RETURNING topic)
SELECT pg_notify('lowshell_events', e.topic || ' tag') FROM e;
-- invite-customer's part: its checkpoint past the command (when it misses
-- nothing by it), the invite, `CustomerInvited`.
UPDATE checkpoints c SET tx = e.tx, position = e.position, updated_at = now()
FROM (SELECT tx, position FROM events WHERE tx = pg_current_xact_id() ORDER BY position DESC LIMIT 1) e
WHERE c.consumer = 'invite-customer'
  AND pg_snapshot_xmin(pg_current_snapshot()) = pg_current_xact_id()
  AND NOT EXISTS (SELECT 1 FROM events f WHERE f.topic = ANY('{commands}')
      AND (f.tx, f.position) > (c.tx, c.position) AND f.tx <> pg_current_xact_id())
RETURNING coalesce(c.switched_at > now(), false);
INSERT INTO documents (collection, key, version, body)
VALUES (coalesce((SELECT physical FROM read_models WHERE collection = 'invites'), 'invites'),
        'u' || :n || '@example.com', 1,
        jsonb_build_object('email', 'u' || :n || '@example.com', 'customer-id', 'id-' || :n))
ON CONFLICT (collection, key) DO NOTHING RETURNING key;
WITH e AS (
    INSERT INTO events (id, topic, kind, payload, correlation_id, causation_id, command_id, function, version, subject, claims)
    VALUES ('e-' || :n, 'customer', 'CustomerInvited',
            jsonb_build_object('customer-id', 'id-' || :n, 'email', 'u' || :n || '@example.com'),
            'c-' || :n, 'c-' || :n, 'c-' || :n, 'invite-customer', 'v1', NULL, NULL)
    RETURNING topic)
SELECT pg_notify('lowshell_events', e.topic || ' tag') FROM e;
-- customer-projector's part: its checkpoint past the event, the customer,
-- the notification for the requester.
UPDATE checkpoints c SET tx = e.tx, position = e.position, updated_at = now()
FROM (SELECT tx, position FROM events WHERE tx = pg_current_xact_id() ORDER BY position DESC LIMIT 1) e
WHERE c.consumer = 'customer-projector'
  AND pg_snapshot_xmin(pg_current_snapshot()) = pg_current_xact_id()
  AND NOT EXISTS (SELECT 1 FROM events f WHERE f.topic = ANY('{customer}')
      AND (f.tx, f.position) > (c.tx, c.position) AND f.tx <> pg_current_xact_id())
RETURNING coalesce(c.switched_at > now(), false);
INSERT INTO documents (collection, key, version, body)
VALUES (coalesce((SELECT physical FROM read_models WHERE collection = 'customers'), 'customers'),
        'id-' || :n, 1,
        jsonb_build_object('id', 'id-' || :n, 'email', 'u' || :n || '@example.com', 'invited', true))
ON CONFLICT (collection, key) DO UPDATE SET version = documents.version + 1, body = EXCLUDED.body;
WITH n AS (
    INSERT INTO notifications (correlation_id, message)
    VALUES ('c-' || :n, jsonb_build_object('id', 'p-' || :n, 'kind', 'ProjectionComplete',
            'payload', jsonb_build_object('collection', 'customers', 'key', 'id-' || :n),
            'correlation-id', 'c-' || :n))
    RETURNING id, message::text AS text)
SELECT n.id, pg_notify('lowshell_notifications', n.id || ' tag'
    || CASE WHEN octet_length(n.text) < 7900 THEN ' ' || n.text ELSE '' END)
FROM n;
COMMIT;
