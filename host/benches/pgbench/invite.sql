-- The SQL the shell runs for one `InviteCustomer` in Postgres mode
-- (host/src/bus/postgres.rs, host/src/store/postgres.rs), as one pgbench
-- transaction: the ceiling for benchmark 3. Run by `host/benches/postgres.rs`
-- with `pgbench -n -M prepared -f invite.sql`.
\set n random(1, 1000000000000000)

-- The request: the command appended to the log, consumers woken.
WITH e AS (
    INSERT INTO events (id, topic, kind, payload, correlation_id, causation_id, command_id)
    VALUES ('c-' || :n, 'commands', 'InviteCustomer', jsonb_build_object('email', 'u' || :n || '@example.com'),
            'c-' || :n, NULL, 'c-' || :n)
    ON CONFLICT (id) WHERE topic = 'commands' DO NOTHING
    RETURNING position)
SELECT position AS command, pg_notify('lowshell_events', 'commands') FROM e
\gset

-- invite-customer: the delivery, the lookup, then one transaction with the
-- checkpoint, the invite and the `CustomerInvited` event.
SELECT position, tx::text, topic, id, kind, payload, correlation_id, causation_id, function, version,
       (extract(epoch FROM at) * 1000)::bigint
FROM events WHERE position = :command AND tx < pg_snapshot_xmin(pg_current_snapshot());
SELECT collection, key, version, body FROM documents WHERE collection = 'invites' AND key = 'u' || :n || '@example.com';
BEGIN;
INSERT INTO checkpoints (consumer) VALUES ('invite-customer') ON CONFLICT (consumer) DO NOTHING;
UPDATE checkpoints c SET tx = e.tx, position = e.position, updated_at = now()
FROM events e
WHERE c.consumer = 'invite-customer' AND e.position = :command AND (c.tx, c.position) < (e.tx, e.position);
INSERT INTO documents (collection, key, version, body)
VALUES ('invites', 'u' || :n || '@example.com', 1,
        jsonb_build_object('email', 'u' || :n || '@example.com', 'customer-id', 'id-' || :n))
ON CONFLICT (collection, key) DO NOTHING;
INSERT INTO events (id, topic, kind, payload, correlation_id, causation_id, command_id, function, version)
VALUES ('e-' || :n, 'customer', 'CustomerInvited',
        jsonb_build_object('customer-id', 'id-' || :n, 'email', 'u' || :n || '@example.com'),
        'c-' || :n, 'c-' || :n, 'c-' || :n, 'invite-customer', 'v1')
RETURNING position AS invited
\gset
SELECT pg_notify('lowshell_events', 'customer');
COMMIT;

-- customer-projector: the delivery, the lookup, then the customer document
-- and the notification for the requester, with the checkpoint.
SELECT position, tx::text, topic, id, kind, payload, correlation_id, causation_id, function, version,
       (extract(epoch FROM at) * 1000)::bigint
FROM events WHERE position = :invited AND tx < pg_snapshot_xmin(pg_current_snapshot());
SELECT collection, key, version, body FROM documents WHERE collection = 'customers' AND key = 'id-' || :n;
BEGIN;
INSERT INTO checkpoints (consumer) VALUES ('customer-projector') ON CONFLICT (consumer) DO NOTHING;
UPDATE checkpoints c SET tx = e.tx, position = e.position, updated_at = now()
FROM events e
WHERE c.consumer = 'customer-projector' AND e.position = :invited AND (c.tx, c.position) < (e.tx, e.position);
INSERT INTO documents (collection, key, version, body)
VALUES ('customers', 'id-' || :n, 1,
        jsonb_build_object('id', 'id-' || :n, 'email', 'u' || :n || '@example.com', 'invited', true))
ON CONFLICT (collection, key) DO UPDATE SET version = documents.version + 1, body = EXCLUDED.body;
WITH n AS (
    INSERT INTO notifications (correlation_id, message)
    VALUES ('c-' || :n, jsonb_build_object('id', 'p-' || :n, 'kind', 'ProjectionComplete',
            'payload', jsonb_build_object('collection', 'customers', 'key', 'id-' || :n)))
    RETURNING id)
SELECT n.id AS notification, pg_notify('lowshell_notifications', n.id::text) FROM n
\gset
COMMIT;

-- The response: the notification read back, the resolver's document.
SELECT id, message FROM notifications WHERE id = :notification;
SELECT collection, key, version, body FROM documents WHERE collection = 'customers' AND key = 'id-' || :n;
