//! The Postgres store. A [`Commit`] is one transaction: the checkpoint
//! advance (first, so that a second processor of the same delivery waits on
//! the row and then finds it already advanced; it also tells whether a
//! rebuild switched the read model under the step), the write ops (integrity by
//! constraints and version conditions, never read-then-write), the events
//! appended to the log, and the notifications (kept, and announced with
//! `pg_notify`, which is transactional). Parking an event (the `parked`
//! table) and applying a parked one are part of a commit as well.

use crate::backend::postgres::PgBus;
use crate::backend::postgres::bus::Committing;
use crate::backend::postgres::database::{
    Database, EVENTS_CHANNEL, NOTIFICATIONS_CHANNEL, describe, describe_pool, is_unavailable,
};
use crate::backend::store::writes;
use crate::backend::{Chained, Commit, Parked, Store, StoreError, Written};
use async_trait::async_trait;
use low_contract::{Document, Query, Value, WriteOp};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

pub struct PgStore {
    db: Arc<Database>,
    /// When a chained part was last declined.
    declined: Declined,
    /// This shell's bus, told at once of what a commit appended (its
    /// consumers and waiting requests need not wait for the NOTIFY).
    bus: Option<PgBus>,
    /// On the read path: its connections come from the read pool.
    reads: bool,
}

impl PgStore {
    pub fn new(db: Arc<Database>) -> Self {
        Self { db, declined: Declined::default(), bus: None, reads: false }
    }

    /// A store for the read path (the API's queries, the responses'
    /// documents): its own pool, so reads wait for reads, never commits for
    /// reads. Not for commits.
    pub fn for_reads(db: Arc<Database>) -> Self {
        Self { db, declined: Declined::default(), bus: None, reads: true }
    }

    /// A store whose commits wake `bus`'s consumers and answer its waiting
    /// requests directly, in this shell; the other shells hear the NOTIFY.
    pub fn with_bus(db: Arc<Database>, bus: PgBus) -> Self {
        Self { db, declined: Declined::default(), bus: Some(bus), reads: false }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let pool = if self.reads { self.db.read_pool() } else { self.db.pool() };
        pool.get().await.map_err(|e| StoreError::Unavailable(describe_pool(&e)))
    }

    /// A commit, with its chained parts (see [`Store::commit_chained`]):
    /// how many of them applied.
    async fn commit_with(&self, commit: Commit, chained: Vec<Chained>) -> Result<usize, StoreError> {
        // Untagged without a bus: the NOTIFY's echo is what wakes this shell.
        let tag = self.bus.as_ref().map_or("", PgBus::echo_tag);
        let bound = Bound::new(&commit, tag)?;
        // Each chained part is a commit of its own inside the transaction,
        // its checkpoint moved by `CHAIN` rather than `ADVANCE`.
        let parts: Vec<(String, Vec<String>, Commit)> = chained
            .into_iter()
            .take(sql::SAVEPOINTS.len())
            .map(|c| {
                let part = Commit { ops: c.ops, events: c.events, notify: c.notify, ..Commit::default() };
                (c.consumer, c.topics, part)
            })
            .collect();
        let parts_bound =
            parts.iter().map(|(_, _, part)| Bound::new(part, tag)).collect::<Result<Vec<_>, _>>()?;
        let parts_of: Vec<(&str, &[String], &Bound)> = parts
            .iter()
            .zip(&parts_bound)
            .map(|((consumer, topics, _), bound)| (consumer.as_str(), topics.as_slice(), bound))
            .collect();
        // Parts nearly always apply: they go without savepoints (whose
        // subtransactions cost ~200 µs of a flight under load) unless one
        // was declined lately, and when one does not apply, the transaction
        // is rolled back and flown again with them.
        let mut savepoints = parts.is_empty() || self.declined.recently();
        let (applied, committing) = loop {
            match self.fly(&commit, &bound, &parts_of, savepoints).await? {
                Flown::Committed { applied, committing } => break (applied, committing),
                Flown::Dropped => return Ok(0),
                Flown::Declined => {
                    self.declined.now();
                    savepoints = true;
                }
            }
        };
        drop(parts_bound);
        for (index, (consumer, _, _)) in parts.iter().enumerate() {
            crate::metrics::chained(consumer, index < applied);
        }
        if let Some(bus) = &self.bus {
            let mut parts = parts;
            parts.truncate(applied);
            // The chained consumers have processed every event of this
            // transaction: the others are woken for them.
            let done: Vec<&str> = parts.iter().map(|(consumer, _, _)| consumer.as_str()).collect();
            let topics: BTreeSet<&str> = std::iter::once(&commit)
                .chain(parts.iter().map(|(_, _, part)| part))
                .flat_map(|c| c.events.iter().map(|e| e.topic.as_str()))
                .collect();
            bus.wake_local_but(topics, &done);
            // An answer may name what its part or any before it wrote.
            drop(bound);
            let answers = std::iter::once(commit).chain(parts.into_iter().map(|(_, _, part)| part));
            let mut written = Written::default();
            let mut answers = answers.peekable();
            while let Some(mut answer) = answers.next() {
                let more = answers.peek().is_some();
                if more || !answer.notify.is_empty() {
                    written.extend(writes(std::mem::take(&mut answer.ops)));
                }
                let notify: Vec<_> =
                    answer.notify.into_iter().filter(|n| n.correlation_id.is_some()).collect();
                if !notify.is_empty() {
                    // The last answer takes what was written; one before it, a copy.
                    let seen = if more { written.clone() } else { std::mem::take(&mut written) };
                    bus.notify_local(notify, seen);
                }
            }
        }
        if let Some(committing) = committing {
            committing.answered();
        }
        Ok(applied)
    }

    /// One transaction of `commit` and its chained `parts`, each part after
    /// a savepoint of its own when `savepoints`: committed with the parts
    /// that applied, or rolled back whole when a part did not apply and
    /// there were no savepoints to roll back to.
    async fn fly(
        &self,
        commit: &Commit,
        bound: &Bound<'_>,
        parts: &[(&str, &[String], &Bound<'_>)],
        savepoints: bool,
    ) -> Result<Flown, StoreError> {
        let mut tx = Flight::new(self.client().await?);
        let client = tx.client()?;
        let statements = bound.statements(client).await?;
        let mut chained_statements = vec![];
        for ((consumer, topics, part), savepoint) in parts.iter().zip(sql::SAVEPOINTS) {
            let advance = client.prepare_cached(sql::CHAIN).await.map_err(store_error)?;
            let mut part_statements = vec![];
            if savepoints {
                let savepoint = client.prepare_cached(savepoint).await.map_err(store_error)?;
                part_statements.push((savepoint, vec![], Expect::Any));
            }
            part_statements.push((advance, vec![consumer as &(dyn ToSql + Sync), topics], Expect::Chained));
            part_statements.extend(part.statements(client).await?);
            chained_statements.push(part_statements);
        }
        // One flight, `BEGIN` included: tokio-postgres pipelines requests
        // polled together, and the server runs them in order, so the
        // checkpoint row is still taken first. A failed statement fails the
        // ones after it (a savepoint's rollback recovers the transaction).
        let (begun, results, chained_results) = futures::join!(
            client.batch_execute("BEGIN"),
            futures::future::join_all(statements.iter().map(|(sql, params, expect)| run(
                client,
                sql,
                params.as_slice(),
                expect
            ))),
            futures::future::join_all(chained_statements.iter().flatten().map(|(sql, params, expect)| run(
                client,
                sql,
                params.as_slice(),
                expect
            )))
        );
        // Until the commit answers, the listener keeps the echo of these
        // notifications (it is what hands them over if the answer is lost).
        let notified =
            results.iter().chain(&chained_results).flatten().flat_map(|d| d.notified.iter().copied());
        let committing = self.bus.as_ref().map(|bus| bus.committing(notified.collect()));
        let expected = statements.iter().map(|(_, _, expect)| expect);
        let verdict =
            begun.map_err(store_error).and_then(|()| settle(commit, results.into_iter().zip(expected)));
        if !matches!(verdict, Ok(Verdict::Apply)) {
            // What the statements said wins over a failed rollback.
            tx.roll_back(committing).await;
            return verdict.map(|_| Flown::Dropped);
        }
        // The parts apply up to the first that cannot.
        let mut results = chained_results.into_iter();
        let mut applied = 0;
        for ((consumer, _, part), part_statements) in parts.iter().zip(&chained_statements) {
            let outcome = results.by_ref().take(part_statements.len());
            match settle(part.commit, outcome.zip(part_statements.iter().map(|(_, _, expect)| expect))) {
                Ok(Verdict::Apply) => applied += 1,
                outcome => {
                    tracing::debug!(%consumer, "the chained steps do not apply, their events go to the consumer: {outcome:?}");
                    break;
                }
            }
        }
        if applied < parts.len() && !savepoints {
            tx.roll_back(committing).await;
            return Ok(Flown::Declined);
        }
        tx.end(match sql::ROLLBACK_TO.get(applied) {
            Some(rollback) if applied < parts.len() => rollback,
            _ => "COMMIT",
        })
        .await?;
        Ok(Flown::Committed { applied, committing })
    }

    /// Deletes every document of `collections` and moves `consumer` back to
    /// the start of the log, in one transaction (for a replay in place).
    /// Every generation of them goes (the one served, the previous one kept
    /// by a rebuild): the collections are served under their own names again.
    pub async fn reset(&self, consumer: &str, collections: &[String]) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        let deleted = tx
            .execute(
                "DELETE FROM documents WHERE collection = ANY($1) OR collection IN (
                     SELECT physical FROM read_models WHERE collection = ANY($1)
                     UNION ALL SELECT previous FROM read_models WHERE collection = ANY($1))",
                &[&collections],
            )
            .await
            .map_err(store_error)?;
        tx.execute("DELETE FROM read_models WHERE collection = ANY($1)", &[&collections])
            .await
            .map_err(store_error)?;
        tx.execute(
            "INSERT INTO checkpoints (consumer) VALUES ($1)
             ON CONFLICT (consumer) DO UPDATE SET tx = '0', position = 0, updated_at = now()",
            &[&consumer],
        )
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(deleted)
    }
}

/// The physical name of the collection named by the parameter `$n`: the
/// generation served now (see `read_models`), resolved within the
/// statement's own snapshot. Written out in each statement rather than
/// called as `lowshell_collection($n)`: a SQL function is not inlined here,
/// and costs a plan per call (0.04 ms to 0.1 ms a read, measured).
macro_rules! served {
    ($n:literal) => {
        concat!("coalesce((SELECT physical FROM read_models WHERE collection = ", $n, "), ", $n, ")")
    };
}

/// The statements of a commit (prepared once per connection).
mod sql {
    /// Moves the consumer's checkpoint to the event at `$2`, if it is not
    /// there or beyond already (then: no row). On a concurrent step for the
    /// same consumer it waits for the row, then sees the other's checkpoint.
    /// No row either when the event at `$2` is not the step's (`$3`): a
    /// crash lost it (its append was never flushed, nor answered) and the
    /// position went to another event, which this step must not pass over.
    ///
    /// Its one column: whether a rebuild switched the consumer's read model
    /// since this transaction began (`now()` is its start, after the step's
    /// lookups): a step that waited at the switch for this row decided on
    /// the previous generation's documents. The switch stamps the row it
    /// holds (`switched_at`), so the advance, which updates the row's latest
    /// version once the switch commits, returns the stamp with it.
    pub const ADVANCE: &str = "INSERT INTO checkpoints (consumer, tx, position)
         SELECT $1, e.tx, e.position FROM events e WHERE e.position = $2 AND e.id = $3
         ON CONFLICT (consumer) DO UPDATE
         SET tx = EXCLUDED.tx, position = EXCLUDED.position, updated_at = now()
         WHERE (checkpoints.tx, checkpoints.position) < (EXCLUDED.tx, EXCLUDED.position)
         RETURNING coalesce(checkpoints.switched_at > now(), false)";
    /// [`ADVANCE`] for a group commit: to the event at `$2` (id `$3`) only
    /// if the checkpoint is before the group's first event, at `$4` (id `$5`).
    pub const ADVANCE_FROM: &str = "INSERT INTO checkpoints (consumer, tx, position)
         SELECT $1, e.tx, e.position FROM events e WHERE e.position = $2 AND e.id = $3
         ON CONFLICT (consumer) DO UPDATE
         SET tx = EXCLUDED.tx, position = EXCLUDED.position, updated_at = now()
         WHERE (checkpoints.tx, checkpoints.position) <
             (SELECT f.tx, f.position FROM events f WHERE f.position = $4 AND f.id = $5)
         RETURNING coalesce(checkpoints.switched_at > now(), false)";
    /// Moves a chained consumer's checkpoint (`$1`, reading the topics
    /// `$2`) to the last event this transaction has appended so far — only
    /// if it had processed every event of its topics before: none but this
    /// transaction's follows its checkpoint, and no older transaction is
    /// still running (one could yet append some, ordered before these).
    /// No row otherwise (nor when the consumer has no checkpoint yet). Its
    /// one column: as [`ADVANCE`]'s.
    pub const CHAIN: &str = "UPDATE checkpoints c SET tx = e.tx, position = e.position, updated_at = now()
         FROM (SELECT tx, position FROM events WHERE tx = pg_current_xact_id()
               ORDER BY position DESC LIMIT 1) e
         WHERE c.consumer = $1
           AND pg_snapshot_xmin(pg_current_snapshot()) = pg_current_xact_id()
           AND NOT EXISTS (SELECT 1 FROM events f WHERE f.topic = ANY($2)
               AND (f.tx, f.position) > (c.tx, c.position) AND f.tx <> pg_current_xact_id())
         RETURNING coalesce(c.switched_at > now(), false)";
    /// Where each of a commit's chained parts starts (one per part, so
    /// many parts at most): rolled back to, with the parts after it, when
    /// it cannot apply.
    pub const SAVEPOINTS: [&str; 4] =
        ["SAVEPOINT chained_0", "SAVEPOINT chained_1", "SAVEPOINT chained_2", "SAVEPOINT chained_3"];
    /// How a transaction ends whose chained parts apply up to the one at
    /// that index.
    pub const ROLLBACK_TO: [&str; 4] = [
        "ROLLBACK TO SAVEPOINT chained_0; COMMIT",
        "ROLLBACK TO SAVEPOINT chained_1; COMMIT",
        "ROLLBACK TO SAVEPOINT chained_2; COMMIT",
        "ROLLBACK TO SAVEPOINT chained_3; COMMIT",
    ];
    // Every statement on `documents` names the collection through
    // `served!`: the generation served now.
    /// The rows [`INSERT`] and [`PUT`] write: the documents `$1`
    /// (collections), `$2` (keys), `$3` (bodies), in order.
    macro_rules! documents_given {
        () => {
            concat!(
                "INSERT INTO documents (collection, key, version, body)
                 SELECT ",
                served!("d.collection"),
                ", d.key, 1, d.body
                 FROM unnest($1::text[], $2::text[], $3::jsonb[]) WITH ORDINALITY AS d(collection, key, body, n)
                 ORDER BY d.n"
            )
        };
    }
    /// The row [`INSERT_ONE`] and [`PUT_ONE`] write: the document `$1`, `$2`, `$3`.
    macro_rules! document_given {
        () => {
            concat!(
                "INSERT INTO documents (collection, key, version, body) VALUES (",
                served!("$1"),
                ", $2, 1, $3)"
            )
        };
    }
    /// What a put does to a document that exists.
    macro_rules! replace {
        () => {
            " ON CONFLICT (collection, key) DO UPDATE SET version = documents.version + 1, body = EXCLUDED.body"
        };
    }
    /// Inserts the documents `$1`, `$2`, `$3` — keys all distinct — each
    /// unless its key exists: the keys inserted.
    pub const INSERT: &str =
        concat!(documents_given!(), " ON CONFLICT (collection, key) DO NOTHING RETURNING key");
    /// [`INSERT`] of one document: a simpler statement, planned faster.
    pub const INSERT_ONE: &str =
        concat!(document_given!(), " ON CONFLICT (collection, key) DO NOTHING RETURNING key");
    /// Creates or replaces the documents `$1`, `$2`, `$3` (keys all distinct).
    pub const PUT: &str = concat!(documents_given!(), replace!());
    /// [`PUT`] of one document.
    pub const PUT_ONE: &str = concat!(document_given!(), replace!());
    pub const UPDATE_IF_VERSION: &str = concat!(
        "UPDATE documents SET version = version + 1, body = $3 WHERE collection = ",
        served!("$1"),
        " AND key = $2 AND version = $4"
    );
    pub const DELETE: &str =
        concat!("DELETE FROM documents WHERE collection = ", served!("$1"), " AND key = $2");
    pub const DELETE_IF_VERSION: &str =
        concat!("DELETE FROM documents WHERE collection = ", served!("$1"), " AND key = $2 AND version = $3");
    /// Appends events, in order, and wakes their topics' consumers (`$11`
    /// the channel, `$12` the tag of a shell that wakes its own, see
    /// `PgBus::echo_tag`): one NOTIFY per topic. A command names itself
    /// (`command_id`), as the bus's own append does; an event names the
    /// command it serves (its correlation id). A command id in the log
    /// already fails the commit (the bus then appends it alone, which tells
    /// a repeat).
    pub const APPEND: &str = "WITH e AS (
             INSERT INTO events
             (id, topic, kind, payload, correlation_id, causation_id, command_id, function, version, subject, claims)
             SELECT e.id, e.topic, e.kind, e.payload, e.correlation_id, e.causation_id,
                 CASE WHEN e.topic = 'commands' THEN e.id ELSE e.correlation_id END,
                 e.function, e.version, e.subject, e.claims
             FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::text[], $6::text[],
                         $7::text[], $8::text[], $9::text[], $10::jsonb[])
                  WITH ORDINALITY AS e(id, topic, kind, payload, correlation_id, causation_id,
                                      function, version, subject, claims, n)
             ORDER BY e.n
             RETURNING topic)
         SELECT pg_notify($11, t.topic || $12::text) FROM (SELECT DISTINCT topic FROM e) t";
    /// [`APPEND`] of one event.
    pub const APPEND_ONE: &str = "WITH e AS (
             INSERT INTO events
             (id, topic, kind, payload, correlation_id, causation_id, command_id, function, version, subject, claims)
             VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $2 = 'commands' THEN $1 ELSE $5 END, $7, $8, $9, $10)
             RETURNING topic)
         SELECT pg_notify($11, e.topic || $12::text) FROM e";
    /// [`NOTIFY`] of one notification.
    pub const NOTIFY_ONE: &str = "WITH n AS (
             INSERT INTO notifications (correlation_id, message) VALUES ($1, $2) RETURNING id, message::text AS text)
         SELECT n.id, pg_notify($3, n.id || $4::text
             || CASE WHEN octet_length(n.text) < 7900 THEN ' ' || n.text ELSE '' END)
         FROM n";
    /// Keeps the notifications (`$1` correlation ids, `$2` messages) and
    /// announces each: its id, the committing shell's tag (`$4`, see
    /// `PgBus::echo_tag`; empty without a bus), and the message itself when
    /// it fits in a NOTIFY payload (8000 bytes), so the shells need not read
    /// it back.
    pub const NOTIFY: &str = "WITH n AS (
             INSERT INTO notifications (correlation_id, message)
             SELECT m.correlation_id, m.message
             FROM unnest($1::text[], $2::jsonb[]) WITH ORDINALITY AS m(correlation_id, message, n)
             ORDER BY m.n
             RETURNING id, message::text AS text)
         SELECT n.id, pg_notify($3, n.id || $4::text
             || CASE WHEN octet_length(n.text) < 7900 THEN ' ' || n.text ELSE '' END)
         FROM n ORDER BY n.id";
    pub const GET: &str = concat!(
        "SELECT $1::text, key, version, body FROM documents WHERE collection = ",
        served!("$1"),
        " AND key = $2"
    );
    /// `COLLATE "C"`: the same key order as the memory store's, so a capped
    /// answer holds the same documents in both.
    pub const FIND: &str = concat!(
        "SELECT $1::text, key, version, body FROM documents WHERE collection = ",
        served!("$1"),
        r#" AND body -> $2::text = $3::jsonb ORDER BY key COLLATE "C" LIMIT $4"#
    );
    /// Removes the record of the parked event a retry applies (first, so
    /// that a concurrent retry of the same event waits, then finds none).
    pub const UNPARK: &str = "DELETE FROM parked WHERE consumer = $1 AND position = $2";
    pub const PARK: &str = "INSERT INTO parked (consumer, position, event, error, attempts)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (consumer, position) DO UPDATE
         SET event = EXCLUDED.event, error = EXCLUDED.error, attempts = EXCLUDED.attempts, attempted_at = now()";
}

type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;

/// What a statement's row count must be.
enum Expect {
    /// The checkpoint moved; else the step was done already. Moved while
    /// its read model switched: a conflict, retried with a fresh lookup.
    Advanced,
    /// The checkpoint moved past a group; else some of it was done already.
    /// The read model switched: as for [`Expect::Advanced`].
    AdvancedGroup,
    /// A chained consumer's checkpoint moved ([`sql::CHAIN`]); else, or
    /// when its read model switched, the chained part does not apply.
    Chained,
    /// The parked record was removed; else another retry applied it.
    Unparked,
    /// A row was written; else this conflict.
    Row(String),
    /// Each of these keys was written; else the conflict beside the first
    /// that was not.
    Keys(Vec<(String, String)>),
    /// Notifications kept: their ids.
    Notified,
    Any,
}

/// What a commit asks of a step already applied.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Every statement did what it must: commit.
    Apply,
    /// The step (or the parked event's retry) was applied already, by
    /// another shell or by an attempt whose answer was lost: applying it
    /// again would process the event twice, so the transaction is dropped.
    Duplicate,
}

/// How a transaction of a commit ended.
enum Flown {
    /// Committed, with this many chained parts (`committing`: the echo of
    /// its notifications, kept until the caller has handed them over).
    Committed { applied: usize, committing: Option<Committing> },
    /// Rolled back: the commit's step was applied already. Nothing to
    /// hand over, no one to wake.
    Dropped,
    /// Rolled back whole: a chained part did not apply, and the parts had
    /// no savepoints.
    Declined,
}

/// When a chained part was last declined: for a while after, parts go
/// with savepoints at once (a decline without them costs a transaction).
#[derive(Default)]
struct Declined(std::sync::Mutex<Option<Instant>>);

impl Declined {
    /// How long after a decline parts keep their savepoints.
    const FOR: Duration = Duration::from_secs(1);

    fn now(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    fn recently(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|at| at.elapsed() < Self::FOR)
    }
}

/// A commit's values converted for Postgres, checked before any statement
/// runs; the statements' parameters borrow from here.
struct Bound<'c> {
    commit: &'c Commit,
    position: Option<i64>,
    batch_from: Option<(i64, &'c String)>,
    /// The write ops, in order, as statements.
    writes: Vec<Writes<'c>>,
    unpark: Option<(&'c str, i64)>,
    park: Option<(&'c Parked, i64, Value, i32)>,
    /// After the topic in the NOTIFYs of the events, and after the id in
    /// those of the notifications (see `PgBus::echo_tag`).
    tag: &'c str,
    events: Events<'c>,
    /// The notifications' correlation ids and messages, as [`sql::NOTIFY`] takes them.
    notifications: (Vec<&'c str>, Vec<Value>),
}

/// The events of a commit as [`sql::APPEND`] takes them: a column each.
#[derive(Default)]
struct Events<'c> {
    ids: Vec<&'c str>,
    topics: Vec<&'c str>,
    kinds: Vec<&'c str>,
    payloads: Vec<&'c Value>,
    correlations: Vec<Option<&'c str>>,
    causations: Vec<Option<&'c str>>,
    functions: Vec<Option<&'c str>>,
    versions: Vec<Option<&'c str>>,
    /// Who caused each: its `subject` and `claims` columns.
    subjects: Vec<Option<&'c str>>,
    claims: Vec<Option<&'c Value>>,
}

impl Events<'_> {
    /// The statement appending them, and its parameters but the last two
    /// (the channel and the tag); none without events.
    fn append(&self) -> Option<(&'static str, Params<'_>)> {
        let e = self;
        match e.ids.len() {
            0 => None,
            1 => Some((
                sql::APPEND_ONE,
                vec![
                    &e.ids[0],
                    &e.topics[0],
                    &e.kinds[0],
                    &e.payloads[0],
                    &e.correlations[0],
                    &e.causations[0],
                    &e.functions[0],
                    &e.versions[0],
                    &e.subjects[0],
                    &e.claims[0],
                ],
            )),
            _ => Some((
                sql::APPEND,
                vec![
                    &e.ids,
                    &e.topics,
                    &e.kinds,
                    &e.payloads,
                    &e.correlations,
                    &e.causations,
                    &e.functions,
                    &e.versions,
                    &e.subjects,
                    &e.claims,
                ],
            )),
        }
    }
}

/// The most documents one statement writes.
const WRITES_MOST: usize = 64;

/// One statement of a commit's write ops: a run of inserts (or of puts)
/// on distinct keys goes as one, so a group of steps costs a statement per
/// run rather than per document; the rest one each.
enum Writes<'c> {
    /// Replace at a version: `$4`.
    Update {
        collection: &'c String,
        key: &'c String,
        body: &'c Value,
        expected: i64,
        conflict: String,
    },
    Delete {
        collection: &'c String,
        key: &'c String,
    },
    /// Remove at a version: `$3`.
    DeleteAt {
        collection: &'c String,
        key: &'c String,
        expected: i64,
        conflict: String,
    },
    Many {
        insert: bool,
        collections: Vec<&'c str>,
        keys: Vec<&'c str>,
        bodies: Vec<&'c Value>,
        /// Per insert, the conflict when its key exists.
        conflicts: Vec<String>,
    },
}

impl<'c> Writes<'c> {
    /// `ops` as statements, in order.
    fn of(ops: &'c [WriteOp]) -> Result<Vec<Self>, StoreError> {
        let mut writes: Vec<Self> = vec![];
        for op in ops {
            let (insert, collection, key, body) = match op {
                WriteOp::Insert { collection, key, body } => (true, collection, key, body),
                WriteOp::UpdateIfVersion { collection, key, body, expected_version: 0 } => {
                    (true, collection, key, body)
                }
                WriteOp::Put { collection, key, body } => (false, collection, key, body),
                WriteOp::UpdateIfVersion { collection, key, body, expected_version } => {
                    writes.push(Writes::Update {
                        collection,
                        key,
                        body,
                        expected: i64_of(*expected_version, "expected version")?,
                        conflict: format!("`{collection}/{key}` is not at version {expected_version}"),
                    });
                    continue;
                }
                WriteOp::DeleteIfVersion { collection, key, expected_version } => {
                    writes.push(Writes::DeleteAt {
                        collection,
                        key,
                        expected: i64_of(*expected_version, "expected version")?,
                        conflict: format!("`{collection}/{key}` is not at version {expected_version}"),
                    });
                    continue;
                }
                WriteOp::Delete { collection, key } => {
                    writes.push(Writes::Delete { collection, key });
                    continue;
                }
            };
            let conflict = match op {
                WriteOp::Insert { .. } => format!("`{collection}/{key}` already exists"),
                _ => format!("`{collection}/{key}` is not at version 0"),
            };
            match writes.last_mut() {
                // Distinct keys: a statement writes a row once, and its
                // returned keys tell which insert conflicted.
                Some(Writes::Many { insert: run, collections, keys, bodies, conflicts })
                    if *run == insert && keys.len() < WRITES_MOST && !keys.contains(&key.as_str()) =>
                {
                    collections.push(collection);
                    keys.push(key);
                    bodies.push(body);
                    conflicts.push(conflict);
                }
                _ => writes.push(Writes::Many {
                    insert,
                    collections: vec![collection],
                    keys: vec![key],
                    bodies: vec![body],
                    conflicts: vec![conflict],
                }),
            }
        }
        Ok(writes)
    }

    /// The statement's text, parameters and what it must do.
    fn statement(&self) -> (&'static str, Params<'_>, Expect) {
        match self {
            Writes::Update { collection, key, body, expected, conflict } => {
                (sql::UPDATE_IF_VERSION, vec![collection, key, body, expected], Expect::Row(conflict.clone()))
            }
            Writes::Delete { collection, key } => (sql::DELETE, vec![collection, key], Expect::Any),
            Writes::DeleteAt { collection, key, expected, conflict } => {
                (sql::DELETE_IF_VERSION, vec![collection, key, expected], Expect::Row(conflict.clone()))
            }
            Writes::Many { insert, collections, keys, bodies, conflicts } => {
                let (sql, params): (_, Params) = match (insert, collections.len()) {
                    (true, 1) => (sql::INSERT_ONE, vec![&collections[0], &keys[0], &bodies[0]]),
                    (true, _) => (sql::INSERT, vec![collections, keys, bodies]),
                    (false, 1) => (sql::PUT_ONE, vec![&collections[0], &keys[0], &bodies[0]]),
                    (false, _) => (sql::PUT, vec![collections, keys, bodies]),
                };
                let expect = match insert {
                    true => Expect::Keys(
                        keys.iter().map(|k| k.to_string()).zip(conflicts.iter().cloned()).collect(),
                    ),
                    false => Expect::Any,
                };
                (sql, params, expect)
            }
        }
    }
}

impl<'c> Bound<'c> {
    fn new(commit: &'c Commit, tag: &'c str) -> Result<Self, StoreError> {
        let position = commit.checkpoint.as_ref().map(|c| i64_of(c.position, "log position")).transpose()?;
        let batch_from = commit
            .batch_from
            .as_ref()
            .map(|(p, id)| i64_of(*p, "log position").map(|p| (p, id)))
            .transpose()?;
        let writes = Writes::of(&commit.ops)?;
        let unpark = commit
            .unpark
            .as_ref()
            .map(|u| i64_of(u.position, "log position").map(|p| (u.consumer.as_str(), p)))
            .transpose()?;
        let park = commit
            .park
            .as_ref()
            .map(|p| {
                let event = serde_json::to_value(&p.event)
                    .map_err(|e| StoreError::Invalid(format!("parked event is not JSON: {e}")))?;
                let attempts = i32::try_from(p.attempts).unwrap_or(i32::MAX);
                Ok::<_, StoreError>((p, i64_of(p.position, "log position")?, event, attempts))
            })
            .transpose()?;
        let mut notifications = (vec![], vec![]);
        for n in &commit.notify {
            let Some(correlation) = &n.correlation_id else { continue };
            let message = serde_json::to_value(n)
                .map_err(|e| StoreError::Invalid(format!("notification is not JSON: {e}")))?;
            notifications.0.push(correlation.as_str());
            notifications.1.push(message);
        }
        let mut events = Events::default();
        for event in &commit.events {
            let m = &event.message;
            let (subject, claims) = super::bus::audit(m);
            events.ids.push(&m.id);
            events.topics.push(&event.topic);
            events.kinds.push(&m.kind);
            events.payloads.push(&m.payload);
            events.correlations.push(m.correlation_id.as_deref());
            events.causations.push(m.causation_id.as_deref());
            events.functions.push(event.function.as_deref());
            events.versions.push(event.version.as_deref());
            events.subjects.push(subject);
            events.claims.push(claims);
        }
        Ok(Self { commit, position, batch_from, writes, unpark, park, tag, events, notifications })
    }

    /// The statements, in order, each with what its row count must be: the
    /// checkpoint advance first, then the parked record, the write ops (a
    /// statement per run of inserts or puts), the events (one statement,
    /// waking their topics), the notifications (one statement).
    async fn statements(
        &self,
        tx: &deadpool_postgres::ClientWrapper,
    ) -> Result<Vec<(Statement, Params<'_>, Expect)>, StoreError> {
        let commit = self.commit;
        let mut statements: Vec<(Statement, Params, Expect)> = vec![];
        match (&commit.checkpoint, &self.position, &self.batch_from) {
            (Some(checkpoint), Some(position), None) => {
                let sql = tx.prepare_cached(sql::ADVANCE).await.map_err(store_error)?;
                statements.push((
                    sql,
                    vec![&checkpoint.consumer, position, &checkpoint.event],
                    Expect::Advanced,
                ));
            }
            (Some(checkpoint), Some(position), Some((from, first))) => {
                let sql = tx.prepare_cached(sql::ADVANCE_FROM).await.map_err(store_error)?;
                let params: Params = vec![&checkpoint.consumer, position, &checkpoint.event, from, first];
                statements.push((sql, params, Expect::AdvancedGroup));
            }
            _ => {}
        }
        if let Some((consumer, position)) = &self.unpark {
            let sql = tx.prepare_cached(sql::UNPARK).await.map_err(store_error)?;
            statements.push((sql, vec![consumer, position], Expect::Unparked));
        }
        if let Some((record, position, event, attempts)) = &self.park {
            let sql = tx.prepare_cached(sql::PARK).await.map_err(store_error)?;
            let params: Params = vec![&record.consumer, position, event, &record.error, attempts];
            statements.push((sql, params, Expect::Any));
        }
        for writes in &self.writes {
            let (text, params, expect) = writes.statement();
            let sql = tx.prepare_cached(text).await.map_err(store_error)?;
            statements.push((sql, params, expect));
        }
        if let Some((text, mut params)) = self.events.append() {
            let sql = tx.prepare_cached(text).await.map_err(store_error)?;
            params.extend([&EVENTS_CHANNEL as &(dyn ToSql + Sync), &self.tag]);
            statements.push((sql, params, Expect::Any));
        }
        let (correlations, messages) = &self.notifications;
        let notify: Option<(_, Params)> = match correlations.len() {
            0 => None,
            1 => Some((sql::NOTIFY_ONE, vec![&correlations[0], &messages[0]])),
            _ => Some((sql::NOTIFY, vec![correlations, messages])),
        };
        if let Some((text, mut params)) = notify {
            let sql = tx.prepare_cached(text).await.map_err(store_error)?;
            params.extend([&NOTIFICATIONS_CHANNEL as &(dyn ToSql + Sync), &self.tag]);
            statements.push((sql, params, Expect::Notified));
        }
        Ok(statements)
    }
}

/// What a statement of a commit did.
struct Done {
    /// Rows written (or, for the checkpoint advance, moved).
    rows: u64,
    /// The checkpoint advance found its read model switched under the step.
    switched: bool,
    /// The keys a multi-row insert wrote.
    keys: Vec<String>,
    /// The ids of the notifications kept.
    notified: Vec<i64>,
}

impl Done {
    fn rows(rows: u64) -> Self {
        Self { rows, switched: false, keys: vec![], notified: vec![] }
    }
}

/// Runs one statement of a commit: the checkpoint advance returns its row
/// (with the switch's verdict), every other statement only its count.
async fn run(
    tx: &tokio_postgres::Client,
    sql: &Statement,
    params: &[&(dyn ToSql + Sync)],
    expect: &Expect,
) -> Result<Done, tokio_postgres::Error> {
    match expect {
        Expect::Advanced | Expect::AdvancedGroup | Expect::Chained => {
            let rows = tx.query(sql, params).await?;
            let switched = match rows.first() {
                Some(row) => row.try_get::<_, bool>(0)?,
                None => false,
            };
            Ok(Done { switched, ..Done::rows(rows.len() as u64) })
        }
        Expect::Keys(_) => {
            let rows = tx.query(sql, params).await?;
            let keys = rows.iter().map(|r| r.try_get::<_, String>(0)).collect::<Result<_, _>>()?;
            Ok(Done { keys, ..Done::rows(rows.len() as u64) })
        }
        Expect::Notified => {
            let rows = tx.query(sql, params).await?;
            let notified = rows.iter().map(|r| r.try_get::<_, i64>(0)).collect::<Result<_, _>>()?;
            Ok(Done { notified, ..Done::rows(rows.len() as u64) })
        }
        _ => tx.execute(sql, params).await.map(Done::rows),
    }
}

/// Reads the statements' row counts against what each must be: the first
/// failure (a conflict, or the database's error), or whether to apply.
fn settle<'e>(
    commit: &Commit,
    results: impl IntoIterator<Item = (Result<Done, tokio_postgres::Error>, &'e Expect)>,
) -> Result<Verdict, StoreError> {
    let mut failure = None;
    for (result, expect) in results {
        match (result, expect) {
            (Ok(Done { rows: 0, .. }), Expect::Advanced) => {
                let checkpoint = commit.checkpoint.as_ref();
                tracing::info!(
                    consumer = checkpoint.map_or("", |c| c.consumer.as_str()),
                    position = checkpoint.map_or(0, |c| c.position),
                    "already processed (or its event is no longer in the log); discarding the step"
                );
                return Ok(Verdict::Duplicate);
            }
            (Ok(Done { rows: 0, .. }), Expect::AdvancedGroup) => {
                return Err(StoreError::Conflict(
                    "the checkpoint is not before the group's first event: some of it was processed already"
                        .into(),
                ));
            }
            (Ok(Done { rows: 0, .. }), Expect::Unparked) => {
                let unpark = commit.unpark.as_ref();
                tracing::info!(
                    consumer = unpark.map_or("", |u| u.consumer.as_str()),
                    position = unpark.map_or(0, |u| u.position),
                    "the parked event was applied already; discarding the duplicate retry"
                );
                return Ok(Verdict::Duplicate);
            }
            (Ok(Done { rows: 0, .. }), Expect::Chained) => {
                failure.get_or_insert_with(|| {
                    StoreError::Conflict(
                        "the chained consumer had not processed everything before these events".into(),
                    )
                });
            }
            (Ok(Done { switched: true, .. }), Expect::Advanced | Expect::AdvancedGroup | Expect::Chained) => {
                failure.get_or_insert_with(|| {
                    StoreError::Conflict(
                        "the read model switched to a new generation during the step (`host replay`)".into(),
                    )
                });
            }
            (Ok(Done { rows: 0, .. }), Expect::Row(conflict)) => {
                failure.get_or_insert_with(|| StoreError::Conflict(conflict.clone()));
            }
            (Ok(Done { keys: written, .. }), Expect::Keys(keys)) if written.len() < keys.len() => {
                if let Some((_, conflict)) = keys.iter().find(|(key, _)| !written.contains(key)) {
                    failure.get_or_insert_with(|| StoreError::Conflict(conflict.clone()));
                }
            }
            (Ok(_), _) => {}
            (Err(e), _) => {
                failure.get_or_insert_with(|| store_error(e));
            }
        }
    }
    failure.map_or(Ok(Verdict::Apply), Err)
}

/// Maps a database error to what the executor can act on.
pub fn store_error(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(c)
            if *c == SqlState::UNIQUE_VIOLATION
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            StoreError::Conflict(describe(&e))
        }
        _ if is_unavailable(&e) => StoreError::Unavailable(describe(&e)),
        _ => StoreError::Invalid(describe(&e)),
    }
}

fn version(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn document(row: &Row) -> Result<Document, StoreError> {
    Ok(Document {
        collection: row.try_get(0).map_err(store_error)?,
        key: row.try_get(1).map_err(store_error)?,
        version: version(row.try_get(2).map_err(store_error)?),
        body: row.try_get(3).map_err(store_error)?,
    })
}

/// A count, position or time from the database (never negative there).
fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i64_of(n: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Invalid(format!("{what} {n} is out of range")))
}

/// A commit's connection while its transaction is open. `BEGIN` goes in
/// the same flight as the statements (`Client::transaction` would wait for
/// it: a round trip more). Dropped before it [ended](Self::end) (the commit
/// given up on, or its connection failed), the connection leaves the pool,
/// and closing it ends the transaction on the server: the pool never lends
/// a connection inside a transaction.
struct Flight {
    client: Option<deadpool_postgres::Object>,
    /// `BEGIN` may have been sent (from the start: the statements are
    /// prepared first): not back to the pool before it ended.
    open: bool,
}

impl Flight {
    fn new(client: deadpool_postgres::Object) -> Self {
        Self { client: Some(client), open: true }
    }

    fn client(&self) -> Result<&deadpool_postgres::ClientWrapper, StoreError> {
        self.client.as_deref().ok_or_else(|| StoreError::Unavailable("the connection was given up".into()))
    }

    /// Ends the transaction with `COMMIT` or `ROLLBACK`; the connection goes
    /// back to the pool only once that is done.
    async fn end(&mut self, how: &str) -> Result<(), StoreError> {
        self.client()?.batch_execute(how).await.map_err(store_error)?;
        self.open = false;
        Ok(())
    }

    /// Rolls back a transaction whose `COMMIT` was never sent: its
    /// notifications (`committing`) will have no echo to wait for. A failed
    /// rollback only takes the connection out of the pool (see `Flight`).
    async fn roll_back(&mut self, committing: Option<Committing>) {
        if let Err(e) = self.end("ROLLBACK").await {
            tracing::debug!("could not roll back a commit not applied: {e}");
        }
        if let Some(committing) = committing {
            committing.answered();
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if self.open
            && let Some(client) = self.client.take()
        {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// A pooled connection lent for a read that its caller may give up on (a
/// step out of time drops the read). Dropped while its query is in flight,
/// it cancels the query and leaves the pool: the next user of the
/// connection would otherwise queue behind a query no one waits for.
struct Read {
    client: Option<deadpool_postgres::Object>,
    in_flight: bool,
}

impl Read {
    fn new(client: deadpool_postgres::Object) -> Self {
        Self { client: Some(client), in_flight: false }
    }

    async fn run<'a, T, F>(
        &'a mut self,
        query: impl FnOnce(&'a deadpool_postgres::Object) -> F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let Some(client) = &self.client else {
            return Err(StoreError::Unavailable("the connection was given up".into()));
        };
        self.in_flight = true;
        let result = query(client).await.map_err(store_error);
        self.in_flight = false;
        result
    }
}

impl Drop for Read {
    fn drop(&mut self) {
        let Some(client) = self.client.take().filter(|_| self.in_flight) else { return };
        let token = client.cancel_token();
        let client = deadpool_postgres::Object::take(client);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            if let Err(e) = token.cancel_query(tokio_postgres::NoTls).await {
                tracing::debug!("could not cancel an abandoned read: {e}");
            }
            drop(client);
        });
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ready(&self) -> Result<(), String> {
        let client = self.client().await.map_err(|e| e.to_string())?;
        client
            .simple_query("SELECT 1")
            .await
            .map(drop)
            .map_err(|e| format!("the database does not answer: {e}"))
    }

    fn reads_are_remote(&self) -> bool {
        true
    }

    async fn get(&self, collection: &str, key: &str) -> Result<Option<Document>, StoreError> {
        let mut read = Read::new(self.client().await?);
        let row = read
            .run(|client| async move {
                let get = client.prepare_cached(sql::GET).await?;
                client.query_opt(&get, &[&collection, &key]).await
            })
            .await?;
        row.as_ref().map(document).transpose()
    }

    async fn find(
        &self,
        collection: &str,
        field: &str,
        value: &Value,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        let mut read = Read::new(self.client().await?);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = read
            .run(|client| async move {
                let find = client.prepare_cached(sql::FIND).await?;
                client.query(&find, &[&collection, &field, value, &limit]).await
            })
            .await?;
        rows.iter().map(document).collect()
    }

    /// The reads sent together on one connection (pipelined: the server
    /// answers them in order), a round trip for the plan rather than one a
    /// read.
    async fn lookup(&self, queries: &[&Query], limit: usize) -> Result<Vec<Vec<Document>>, StoreError> {
        if queries.is_empty() {
            return Ok(vec![]);
        }
        let mut read = Read::new(self.client().await?);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let found = read
            .run(|client| async move {
                let get = client.prepare_cached(sql::GET).await?;
                let find = client.prepare_cached(sql::FIND).await?;
                let reads = queries.iter().map(|query| {
                    let (statement, params): (_, Params) = match query {
                        Query::Key { collection, key } => (&get, vec![collection, key]),
                        Query::Field { collection, field, value } => {
                            (&find, vec![collection, field, value, &limit])
                        }
                    };
                    async move { client.query(statement, &params).await }
                });
                futures::future::try_join_all(reads).await
            })
            .await?;
        found.iter().map(|rows| rows.iter().map(document).collect()).collect()
    }

    async fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // `COLLATE "C"`: the same byte order as the memory store's BTreeMap.
        let rows = client
            .query(
                concat!(
                    "SELECT $1::text, key, version, body FROM documents WHERE collection = ",
                    served!("$1"),
                    r#" AND ($2::text IS NULL OR key COLLATE "C" > $2::text) ORDER BY key COLLATE "C" LIMIT $3"#
                ),
                &[&collection, &after, &limit],
            )
            .await
            .map_err(store_error)?;
        rows.iter().map(document).collect()
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        self.commit_with(commit, vec![]).await.map(drop)
    }

    fn chains(&self) -> bool {
        true
    }

    async fn commit_chained(&self, commit: Commit, chained: Vec<Chained>) -> Result<usize, StoreError> {
        self.commit_with(commit, chained).await
    }

    async fn parked(&self, consumer: Option<&str>) -> Result<Vec<Parked>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT consumer, position, event, error, attempts,
                        (extract(epoch FROM parked_at) * 1000)::bigint,
                        (extract(epoch FROM attempted_at) * 1000)::bigint
                 FROM parked WHERE $1::text IS NULL OR consumer = $1
                 ORDER BY consumer, position",
                &[&consumer],
            )
            .await
            .map_err(store_error)?;
        rows.iter().map(parked).collect()
    }

    async fn parked_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT consumer, count(*) FROM parked GROUP BY consumer", &[])
            .await
            .map_err(store_error)?;
        rows.iter()
            .map(|r| Ok((r.try_get(0).map_err(store_error)?, unsigned(r.try_get(1).map_err(store_error)?))))
            .collect()
    }

    async fn parked_failed(&self, consumer: &str, position: u64, error: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        let position = i64_of(position, "log position")?;
        client
            .execute(
                "UPDATE parked SET attempts = attempts + 1, error = $3, attempted_at = now()
                 WHERE consumer = $1 AND position = $2",
                &[&consumer, &position, &error],
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

/// A row of `parked`.
fn parked(row: &Row) -> Result<Parked, StoreError> {
    let event: Value = row.try_get(2).map_err(store_error)?;
    let attempts: i32 = row.try_get(4).map_err(store_error)?;
    let ms = |i: usize| -> Result<u64, StoreError> {
        Ok(unsigned(row.try_get::<_, Option<i64>>(i).map_err(store_error)?.unwrap_or(0)))
    };
    Ok(Parked {
        consumer: row.try_get(0).map_err(store_error)?,
        position: unsigned(row.try_get(1).map_err(store_error)?),
        event: serde_json::from_value(event)
            .map_err(|e| StoreError::Invalid(format!("unreadable parked event: {e}")))?,
        error: row.try_get(3).map_err(store_error)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        parked_at_ms: ms(5)?,
        attempted_at_ms: ms(6)?,
    })
}
