//! The Postgres bus: the `events` table is the log, so the bus reads it and
//! the [`PgStore`](crate::backend::postgres::PgStore) appends to it.
//!
//! - `submit` appends a command (once per command id: a repeat appends
//!   nothing); an idempotent one is bound to its fingerprint in
//!   `command_results`, in the same statement, where its first answer is
//!   kept too (`remember`).
//! - A subscription is one consumer (one function). The shell that holds the
//!   consumer's lease (a session advisory lock on a dedicated connection)
//!   reads from the stored checkpoint; the other shells stand by and take
//!   over when that connection goes away (the shell stopped or died). Work is
//!   thus spread per function across shells, never doubled: the checkpoint
//!   advance in the step's transaction is conditional as well.
//! - Reads follow `(tx, position)` and stop below the oldest transaction
//!   still running (`pg_snapshot_xmin`), so no event is skipped when
//!   transactions commit out of order; an aborted one leaves no stall.
//! - A function's work may be split into partitions (`[consumers.NAME]
//!   partitions`): each partition is a consumer of its own (checkpoint and
//!   lease), and each shell takes its fair share of them — the count over the
//!   shells present (each holds a shared advisory lock on its listening
//!   connection) — handing extra ones over when shells join, taking over a
//!   departed shell's within a poll interval.
//! - LISTEN/NOTIFY wakes consumers and carries notifications to the shells;
//!   polling is the fallback.

/// The columns of an `events` row (alias `e`) that [`delivery`] reads, in
/// its order: every query that hands events to `delivery` selects these.
macro_rules! event_columns {
    () => {
        "e.position, e.tx::text, e.topic, e.id, e.kind, e.payload, e.correlation_id, e.causation_id, \
         e.function, e.version, (extract(epoch FROM e.at) * 1000)::bigint, e.subject, e.claims"
    };
}
pub(crate) use event_columns;

use crate::backend::Event;
use crate::backend::postgres::database::{
    Database, EVENTS_CHANNEL, LOCK_NAMESPACE, NOTIFICATIONS_CHANNEL, PRESENCE, describe, describe_pool,
    lease_holders, lease_id, live_shells, try_lease,
};
use crate::backend::{
    Answer, Bus, BusError, CommandChain, Delivery, Holder, NotificationSink, Partition, Requests, Submitted,
    Subscription, Written, fingerprint,
};
use async_trait::async_trait;
use futures::FutureExt;
use low_contract::{Message, Principal};
use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_postgres::{AsyncMessage, Client, Row, Statement};

/// How often consumers look at the log when no NOTIFY woke them.
pub const POLL: Duration = Duration::from_millis(500);
/// The first re-read after a wake that found nothing (see `PgSubscription::recheck`).
const HELD_BACK: Duration = Duration::from_millis(2);
/// Deliveries read at once.
const BATCH: i64 = 100;
const RECONNECT: Duration = Duration::from_secs(1);
/// How far back, in notification ids, a reconnected listener looks again
/// (ids are taken before commit, so recent ones can commit out of order).
const CATCH_UP: i64 = 1000;
/// Between the topic and the sending bus's tag in a NOTIFY of appended
/// events; after the id in a NOTIFY of a notification.
const TAG_MARK: &str = " lowshell-";
/// Commands appended in one statement at most (see [`append_commands`]).
const APPEND_BATCH: usize = 64;
/// Commands waiting for the appender before submitters wait for room.
const APPEND_QUEUE: usize = 1024;

#[derive(Clone)]
pub struct PgBus {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    /// Bumped on every NOTIFY of new events (and on reconnects): what the
    /// tail of the log for the watchers waits on.
    wake: watch::Sender<u64>,
    /// The consumers' wake-ups: bumped when one of their topics gets
    /// events (on reconnects: all).
    wakers: Mutex<Vec<Waker>>,
    /// Marks this bus's own NOTIFYs of appended events (after the topic,
    /// see [`echo_tag`](PgBus::echo_tag)): it has woken its consumers for
    /// them already, so their echo is ignored.
    tag: String,
    /// [`TAG_MARK`] and `tag`: what follows the topic in those NOTIFYs.
    echo: String,
    notify: NotificationSink,
    /// The highest notification id forwarded, to catch up after a reconnect.
    last_notification: AtomicI64,
    /// Live watchers of the log (the `events` subscription), fed by one
    /// tail of the log started with the first watcher.
    watchers: broadcast::Sender<Arc<Event>>,
    tailing: AtomicBool,
    /// Partitions whose lease this shell holds, by function: its share.
    held: Mutex<HashMap<String, usize>>,
    /// The shells running on the database, and when they were counted.
    shells: Mutex<Option<(Instant, usize)>>,
    /// Set when the shell stops: the listener lets its connection go.
    closed: watch::Sender<bool>,
    /// Commands waiting to be appended (see [`append_commands`]).
    appends: mpsc::Sender<Append>,
    chain: Chain,
    /// The echoes of this shell's own notifications that may matter (see
    /// [`Committing`]).
    echoes: Mutex<Echoes>,
}

/// This shell's notifications whose echo may have to be handed over: the
/// committing task hands them over itself, with the documents its commit
/// wrote, once it learns the commit applied; the echo matters only when it
/// never learns (the connection failed at `COMMIT`). Any other echo is of a
/// notification handed over already, and is ignored.
#[derive(Default)]
struct Echoes {
    /// In a commit that has not answered yet, by id: the echo, once heard
    /// (the commit may answer after its NOTIFY arrives).
    awaiting: HashMap<i64, Option<String>>,
    /// In a commit that never answered, and since when: handed over as soon
    /// as heard.
    unsure: HashMap<i64, Instant>,
}

/// The most notifications of commits that never said whether they applied
/// kept for their echo; the oldest go first.
const UNSURE_MOST: usize = 4096;

/// Where the appender hands commands to be appended with their steps
/// ([`Bus::chain_commands`]), once the executor took them.
type Chain = Mutex<Option<Weak<dyn CommandChain>>>;

/// A consumer of this shell's wake-up: its name, the topics it reads.
struct Waker {
    consumer: String,
    topics: Vec<String>,
    wake: watch::Sender<u64>,
}

/// Notifications of a transaction committing ([`PgBus::committing`]).
pub(crate) struct Committing {
    inner: Arc<Inner>,
    ids: Vec<i64>,
    answered: bool,
}

impl Committing {
    /// The commit answered (applied or not): its committing task hands the
    /// notifications over itself.
    pub(crate) fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for Committing {
    /// Without an answer, hands over the echoes heard meanwhile, and those
    /// still to come as soon as they are.
    fn drop(&mut self) {
        // Most commits carry no notification: nothing to look up.
        if self.ids.is_empty() {
            return;
        }
        let heard = self.inner.echoes().answered(&self.ids, self.answered);
        if !heard.is_empty() {
            tracing::debug!(notifications = heard.len(), "a commit never answered: handing over its echoes");
        }
        for payload in heard {
            let Some(id) = forward_carried(&self.inner, &payload) else { continue };
            // Too large to be carried: read back, on a task of its own.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                tracing::warn!(id, "cannot read a notification outside the runtime");
                continue;
            };
            let inner = Arc::clone(&self.inner);
            runtime.spawn(async move {
                match inner.db.pool().get().await {
                    Ok(client) => forward_since(&inner, &client, READ_NOTIFICATION, id).await,
                    Err(e) => tracing::warn!(id, "cannot read a notification: {}", describe_pool(&e)),
                }
            });
        }
    }
}

impl Echoes {
    /// The notifications `ids` are in a commit that has not answered yet.
    fn committing(&mut self, ids: &[i64]) {
        self.awaiting.extend(ids.iter().map(|id| (*id, None)));
    }

    /// Heard the echo of `id`: whether to hand it over now.
    fn heard(&mut self, id: i64, payload: &str) -> bool {
        if let Some(heard) = self.awaiting.get_mut(&id) {
            *heard = Some(payload.to_owned());
            return false;
        }
        self.unsure.remove(&id).is_some()
    }

    /// The commit of `ids` is over: whether it `answered`. Without an
    /// answer, the echoes heard meanwhile, to hand over; the others are
    /// handed over when heard.
    fn answered(&mut self, ids: &[i64], answered: bool) -> Vec<String> {
        let heard: Vec<(i64, Option<String>)> =
            ids.iter().filter_map(|id| Some((*id, self.awaiting.remove(id)?))).collect();
        if answered {
            return vec![];
        }
        let unheard: Vec<i64> = heard.iter().filter(|(_, echo)| echo.is_none()).map(|(id, _)| *id).collect();
        if self.unsure.len() + unheard.len() > UNSURE_MOST {
            let mut oldest: Vec<(i64, Instant)> = self.unsure.iter().map(|(id, at)| (*id, *at)).collect();
            oldest.sort_by_key(|(_, at)| *at);
            for (id, _) in oldest.into_iter().take(unheard.len()) {
                self.unsure.remove(&id);
            }
        }
        let now = Instant::now();
        self.unsure.extend(unheard.into_iter().map(|id| (id, now)));
        heard.into_iter().filter_map(|(_, echo)| echo).collect()
    }
}

impl Inner {
    fn echoes(&self) -> std::sync::MutexGuard<'_, Echoes> {
        self.echoes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Heard the echo of this shell's notification `id`: whether to hand
    /// it over now (its commit never answered). Kept while its commit has
    /// not answered yet; ignored once it has.
    fn echo(&self, id: &str, payload: &str) -> bool {
        let Ok(id) = id.parse::<i64>() else { return true };
        self.echoes().heard(id, payload)
    }

    /// Wakes the consumers reading `topic` (every consumer for `None`),
    /// and the tail of the log.
    fn wake(&self, topic: Option<&str>) {
        self.wake_but(topic, &[]);
    }

    /// [`wake`](Self::wake), but not the consumers `done`, which have
    /// processed what woke the others already (a chained commit).
    fn wake_but(&self, topic: Option<&str>, done: &[&str]) {
        self.wake.send_modify(|n| *n += 1);
        let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        // A subscription dropped: its waker goes.
        wakers.retain(|w| !w.wake.is_closed());
        for Waker { consumer, topics, wake: tx } in wakers.iter() {
            if done.contains(&consumer.as_str()) {
                continue;
            }
            if topic.is_none_or(|topic| topics.iter().any(|t| t == topic)) {
                tx.send_modify(|n| *n += 1);
            }
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This shell's fair share of `count` partitions: the count over the
    /// shells running (counted again at most every poll interval).
    async fn share(&self, client: &Client, count: u32) -> Result<usize, tokio_postgres::Error> {
        let cached = *self.shells.lock().unwrap_or_else(|p| p.into_inner());
        let shells = match cached {
            Some((at, shells)) if at.elapsed() < POLL => shells,
            _ => {
                let shells = live_shells(client).await?.max(1);
                *self.shells.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), shells));
                shells
            }
        };
        Ok((count as usize).div_ceil(shells))
    }

    /// Hands notifications to this shell's waiting requests (once the
    /// responses have taken the receiving end).
    fn forward(&self, messages: impl IntoIterator<Item = Message>) {
        self.notify.send(messages, Written::default());
    }
}

fn unavailable(e: &tokio_postgres::Error) -> BusError {
    BusError::Unavailable(describe(e))
}

/// A statement's error: unavailable when the database cannot be reached,
/// else refused.
fn refused(e: tokio_postgres::Error) -> BusError {
    if crate::backend::postgres::database::is_unavailable(&e) {
        unavailable(&e)
    } else {
        BusError::Invalid(describe(&e))
    }
}

fn no_connection(e: deadpool_postgres::PoolError) -> BusError {
    BusError::Unavailable(describe_pool(&e))
}

impl PgBus {
    /// Starts listening (and keeps reconnecting the listener while the shell runs).
    pub fn start(db: Arc<Database>) -> Self {
        let (wake, _) = watch::channel(0);
        let (appends, queue) = mpsc::channel(APPEND_QUEUE);
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let echo = format!("{TAG_MARK}{tag}");
        let bus = Self {
            inner: Arc::new(Inner {
                db,
                wake,
                wakers: Mutex::default(),
                tag,
                echo,
                notify: NotificationSink::default(),
                last_notification: AtomicI64::new(0),
                watchers: broadcast::Sender::new(WATCH_BUFFER),
                tailing: AtomicBool::new(false),
                held: Mutex::default(),
                shells: Mutex::default(),
                closed: watch::Sender::new(false),
                appends,
                chain: Chain::default(),
                echoes: Mutex::default(),
            }),
        };
        tokio::spawn(append_commands(Arc::downgrade(&bus.inner), queue));
        tokio::spawn(listen(Arc::downgrade(&bus.inner)));
        bus
    }

    fn subscription(
        &self,
        consumer: String,
        topics: &[String],
        partition: Option<(String, Partition)>,
    ) -> PgSubscription {
        let (tx, wake) = watch::channel(0);
        let waker = Waker { consumer: consumer.clone(), topics: topics.to_vec(), wake: tx };
        self.inner.wakers.lock().unwrap_or_else(|p| p.into_inner()).push(waker);
        PgSubscription {
            inner: Arc::clone(&self.inner),
            consumer,
            topics: topics.to_vec(),
            partition,
            lease: None,
            lease_id: None,
            candidate: None,
            buffer: VecDeque::new(),
            caught_up: false,
            wake,
            recheck: HELD_BACK,
        }
    }

    /// Wakes this shell's consumers of `topics` at once after it appended
    /// events to them, rather than when Postgres echoes the NOTIFY back
    /// (which, tagged with [`echo_tag`](Self::echo_tag), is then ignored).
    pub(crate) fn wake_local<'t>(&self, topics: impl IntoIterator<Item = &'t str>) {
        self.wake_local_but(topics, &[]);
    }

    /// [`wake_local`](Self::wake_local), but not the consumers `done`.
    pub(crate) fn wake_local_but<'t>(&self, topics: impl IntoIterator<Item = &'t str>, done: &[&str]) {
        for topic in topics {
            self.inner.wake_but(Some(topic), done);
        }
    }

    /// What follows the topic in the NOTIFY of events this shell appends
    /// and wakes its consumers for itself ([`wake_local`](Self::wake_local)):
    /// its listener ignores that echo, the other shells wake on the topic.
    pub(crate) fn echo_tag(&self) -> &str {
        &self.inner.echo
    }

    /// The notifications `ids` (this shell's) are in a transaction about to
    /// commit: their echo waits for the commit's answer. Once the returned
    /// guard is told the answer came ([`Committing::answered`]), their echo
    /// is ignored; dropped without an answer, it is handed over.
    pub(crate) fn committing(&self, ids: Vec<i64>) -> Committing {
        if !ids.is_empty() {
            self.inner.echoes().committing(&ids);
        }
        Committing { inner: Arc::clone(&self.inner), ids, answered: false }
    }

    /// Hands notifications this shell has just committed to its waiting
    /// requests at once. Their NOTIFY's echo is ignored (see [`Echoes`]).
    pub(crate) fn notify_local(&self, messages: impl IntoIterator<Item = Message>, written: Written) {
        self.inner.notify.send(messages, written);
    }

    /// Appends an idempotent command, alone ([`SUBMIT_IDEMPOTENT`]): whether
    /// it was appended (else its id was in the log).
    async fn append_idempotent(&self, command: &Event) -> Result<bool, BusError> {
        let client = self.inner.db.pool().get().await.map_err(no_connection)?;
        let m = &command.message;
        let print = fingerprint(&m.kind, &m.payload);
        let (subject, claims) = audit(m);
        let tag = self.echo_tag();
        let submit = client.prepare_cached(SUBMIT_IDEMPOTENT).await.map_err(refused)?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 11] = [
            &m.id,
            &command.topic,
            &m.kind,
            &m.payload,
            &m.correlation_id,
            &m.causation_id,
            &EVENTS_CHANNEL,
            &print,
            &subject,
            &claims,
            &tag,
        ];
        let rows = client.query(&submit, &params).await.map_err(refused)?;
        Ok(!rows.is_empty())
    }

    /// Where a replay of the log started now ends: the oldest transaction
    /// still running. Every event below it is committed (or rolled back),
    /// so [`history`](Self::history) up to it is final.
    pub async fn horizon(&self) -> Result<Horizon, BusError> {
        let client = self.inner.db.pool().get().await.map_err(no_connection)?;
        let row = client
            .query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[])
            .await
            .map_err(|e| read_error(&e))?;
        row.try_get(0).map(Horizon).map_err(|e| read_error(&e))
    }

    /// How many events on `topics` lie after `consumer`'s stored checkpoint
    /// and below `horizon`.
    pub async fn pending(
        &self,
        consumer: &str,
        topics: &[String],
        horizon: &Horizon,
    ) -> Result<u64, BusError> {
        let client = self.inner.db.pool().get().await.map_err(no_connection)?;
        let row = client
            .query_one(
                "SELECT count(*) FROM events e
                 WHERE e.topic = ANY($2) AND e.tx < $3::text::xid8 AND (e.tx, e.position) >
                     (coalesce((SELECT tx FROM checkpoints WHERE consumer = $1), '0'::xid8),
                      coalesce((SELECT position FROM checkpoints WHERE consumer = $1), 0))",
                &[&consumer, &topics, &horizon.0],
            )
            .await
            .map_err(|e| read_error(&e))?;
        let count: i64 = row.try_get(0).map_err(|e| read_error(&e))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// The next `limit` events on `topics` after `consumer`'s stored
    /// checkpoint and below `horizon`, in log order (for a replay, which
    /// moves the checkpoint as it goes).
    pub async fn history(
        &self,
        consumer: &str,
        topics: &[String],
        horizon: &Horizon,
        limit: i64,
    ) -> Result<Vec<Delivery>, BusError> {
        let client = self.inner.db.pool().get().await.map_err(no_connection)?;
        // Ordered by the `xid8` column, qualified: an unqualified `tx`
        // would name the `tx::text` output column, and "1000" sorts before "744".
        let rows = client
            .query(
                concat!(
                    "WITH c AS (
                     SELECT coalesce((SELECT tx FROM checkpoints WHERE consumer = $1), '0'::xid8) AS tx,
                            coalesce((SELECT position FROM checkpoints WHERE consumer = $1), 0) AS position)
                 SELECT ",
                    event_columns!(),
                    "
                 FROM events e, c
                 WHERE e.topic = ANY($2) AND (e.tx, e.position) > (c.tx, c.position)
                   AND e.tx < $3::text::xid8
                 ORDER BY e.tx, e.position
                 LIMIT $4"
                ),
                &[&consumer, &topics, &horizon.0, &limit],
            )
            .await
            .map_err(|e| read_error(&e))?;
        rows.iter().map(|r| delivery(r).map(|(_, d)| d)).collect()
    }
}

/// Appended events kept for slow watchers of [`Bus::watch_events`].
const WATCH_BUFFER: usize = 1024;

/// The log after `(tx, position)`, below the oldest transaction still
/// running: what every shell's watchers see, in log order.
const TAIL: &str = concat!(
    "SELECT ",
    event_columns!(),
    "
     FROM events e
     WHERE (e.tx, e.position) > ($1::text::xid8, $2)
       AND e.tx < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY e.tx, e.position
     LIMIT $3"
);

/// Where the log ends now (below the running transactions): watching starts there.
const TAIL_START: &str = "SELECT e.tx::text, e.position, e.id FROM events e
     WHERE e.tx < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY e.tx DESC, e.position DESC LIMIT 1";

/// When the server started: a tail's cursor is checked against it.
const STARTED: &str = "SELECT pg_postmaster_start_time()::text";

/// After the server restarted: the cursor `($1, $2)` if its event (`$3`)
/// is still there, else the last event before it that was appended before the
/// server started. A crash loses the appends not yet flushed (commands are
/// appended without waiting for the flush), and the restarted server hands
/// their transaction ids and positions out again: a cursor past a lost
/// event would sort the new events below itself and never show them.
const TAIL_ANCHOR: &str = "SELECT e.tx::text, e.position, e.id FROM events e
     WHERE (e.tx, e.position) <= ($1::text::xid8, $2)
       AND (e.at < pg_postmaster_start_time() OR ((e.tx, e.position) = ($1::text::xid8, $2) AND e.id = $3))
     ORDER BY e.tx DESC, e.position DESC LIMIT 1";

/// Where a tail has got to in the log (the last event shown), and the
/// start of the server it read that from.
#[derive(Clone)]
struct Cursor {
    tx: String,
    position: i64,
    id: String,
    started: String,
}

impl Cursor {
    /// The start of the log.
    fn start(started: &str) -> Self {
        Cursor { tx: "0".into(), position: 0, id: String::new(), started: started.to_owned() }
    }

    /// At the event of `row` ([`TAIL_START`], [`TAIL_ANCHOR`]).
    fn at(row: &Row, started: &str) -> Result<Self, BusError> {
        let bad = |e: tokio_postgres::Error| unavailable(&e);
        Ok(Cursor {
            tx: row.try_get(0).map_err(bad)?,
            position: row.try_get(1).map_err(bad)?,
            id: row.try_get(2).map_err(bad)?,
            started: started.to_owned(),
        })
    }
}

/// Reads the log as it grows and hands every event to the watchers, woken
/// like the consumers (NOTIFY, polling). Stops when the last watcher has
/// gone; the next watcher starts it again, from the end of the log then.
async fn tail(inner: Arc<Inner>) {
    let mut wake = inner.wake.subscribe();
    let mut cursor: Option<Cursor> = None;
    loop {
        while inner.watchers.receiver_count() > 0 {
            wake.borrow_and_update();
            if let Err(e) = tail_once(&inner, &mut cursor).await {
                tracing::warn!("cannot read the log for the event watchers, retrying: {e}");
            }
            if let Ok(Err(_)) = tokio::time::timeout(POLL, wake.changed()).await {
                inner.tailing.store(false, Ordering::SeqCst);
                return;
            }
        }
        inner.tailing.store(false, Ordering::SeqCst);
        // A watcher that arrived while stopping must not be left without a tail.
        if inner.watchers.receiver_count() == 0 || inner.tailing.swap(true, Ordering::SeqCst) {
            return;
        }
    }
}

/// Forwards what was appended after `cursor` (everything, in batches).
async fn tail_once(inner: &Inner, cursor: &mut Option<Cursor>) -> Result<(), BusError> {
    let client = inner.db.pool().get().await.map_err(no_connection)?;
    let started = client.query_one(STARTED, &[]).await.map_err(|e| unavailable(&e))?;
    let started: String = started.try_get(0).map_err(|e| unavailable(&e))?;
    let mut at = match cursor.as_ref() {
        Some(at) if at.started == started => at.clone(),
        Some(at) => {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&at.tx, &at.position, &at.id];
            let anchor = client.query_opt(TAIL_ANCHOR, &params).await.map_err(|e| unavailable(&e))?;
            let anchor = match anchor {
                Some(row) => Cursor::at(&row, &started)?,
                None => Cursor::start(&started),
            };
            tracing::info!(
                from = ?(&at.tx, at.position),
                to = ?(&anchor.tx, anchor.position),
                "the database restarted: event watchers go on after the last event appended before"
            );
            anchor
        }
        None => match client.query_opt(TAIL_START, &[]).await.map_err(|e| unavailable(&e))? {
            Some(row) => Cursor::at(&row, &started)?,
            None => Cursor::start(&started),
        },
    };
    *cursor = Some(at.clone());
    let read = client.prepare_cached(TAIL).await.map_err(|e| unavailable(&e))?;
    loop {
        let rows = client.query(&read, &[&at.tx, &at.position, &BATCH]).await.map_err(|e| unavailable(&e))?;
        for row in &rows {
            let (tx, delivery) = delivery(row)?;
            at.tx = tx;
            at.position = i64::try_from(delivery.position).unwrap_or(i64::MAX);
            at.id.clone_from(&delivery.event.message.id);
            // Nobody watching any more is fine: the loop ends at its next turn.
            let _ = inner.watchers.send(delivery.event);
        }
        *cursor = Some(at.clone());
        if (rows.len() as i64) < BATCH {
            return Ok(());
        }
    }
}

/// The end of a replay: a transaction id, below which the log is final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Horizon(String);

/// A failed read of the log: unavailable, or refused (not worth retrying).
fn read_error(e: &tokio_postgres::Error) -> BusError {
    if crate::backend::postgres::database::is_unavailable(e) {
        unavailable(e)
    } else {
        BusError::Invalid(describe(e))
    }
}

/// A NOTIFY of appended events: its topic, and whether the bus tagged
/// `tag` sent it (see [`PgBus::echo_tag`]). A bare topic comes from a store
/// without a bus, or from a shell that does not tag its NOTIFYs.
fn heard<'p>(payload: &'p str, tag: &str) -> (&'p str, bool) {
    match payload.rsplit_once(TAG_MARK) {
        Some((topic, sender)) => (topic, sender == tag),
        None => (payload, false),
    }
}

/// The listener: one dedicated connection with LISTEN on both channels.
async fn listen(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let connected = strong
            .db
            .dedicated(move |m| {
                if let AsyncMessage::Notification(n) = m {
                    let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
                }
            })
            .await;
        let client = match connected {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!("cannot listen for events, retrying: {}", describe(&e));
                drop(strong);
                tokio::time::sleep(RECONNECT).await;
                continue;
            }
        };
        if let Err(e) =
            client.batch_execute(&format!("LISTEN {EVENTS_CHANNEL}; LISTEN {NOTIFICATIONS_CHANNEL}")).await
        {
            tracing::warn!("cannot listen for events, retrying: {}", describe(&e));
            drop(strong);
            tokio::time::sleep(RECONNECT).await;
            continue;
        }
        // Present while this connection lives: other shells count it when
        // they share partitions out.
        if let Err(e) =
            client.query_one("SELECT pg_advisory_lock_shared($1, $2)", &[&LOCK_NAMESPACE, &PRESENCE]).await
        {
            tracing::warn!("cannot announce this shell to the others, retrying: {}", describe(&e));
            drop(strong);
            tokio::time::sleep(RECONNECT).await;
            continue;
        }
        tracing::debug!("listening for events and notifications");
        // Whatever was missed while not listening, the consumers find by
        // polling, and the responses by catching up.
        strong.wake(None);
        catch_up(&strong, &client).await;
        let mut closed = strong.closed.subscribe();
        drop(strong);
        loop {
            tokio::select! {
                message = rx.recv() => {
                    let Some((channel, payload)) = message else { break };
                    let Some(strong) = inner.upgrade() else { return };
                    if channel == EVENTS_CHANNEL {
                        match heard(&payload, &strong.tag) {
                            // Woken already, when it committed.
                            (_, true) => {}
                            (topic, false) => strong.wake(Some(topic)),
                        }
                    } else if channel == NOTIFICATIONS_CHANNEL {
                        let announced = Announced::parse(&payload);
                        let own = announced.sender == Some(strong.tag.as_str());
                        if !own || strong.echo(announced.id, &payload) {
                            forward_notification(&strong, &client, &payload).await;
                        }
                    }
                }
                // The shell stopped: close the connection, so that the
                // other shells stop counting this one.
                // (Or the bus is gone: the sender with it.)
                () = async { drop(closed.wait_for(|closed| *closed).await) } => return,
            }
        }
        tracing::warn!("the listening connection closed; reconnecting");
        tokio::time::sleep(RECONNECT).await;
    }
}

/// A notification's NOTIFY (`id [lowshell-TAG] [message]`): its id, the
/// committing shell's tag (none from older shells), and the message (empty
/// when it did not fit). The message is JSON, so never starts with the mark.
#[derive(Debug, PartialEq)]
struct Announced<'p> {
    id: &'p str,
    sender: Option<&'p str>,
    message: &'p str,
}

impl<'p> Announced<'p> {
    fn parse(payload: &'p str) -> Self {
        let (id, rest) = payload.split_once(' ').unwrap_or((payload, ""));
        match rest.strip_prefix(TAG_MARK.trim_start()) {
            Some(tagged) => {
                let (sender, message) = tagged.split_once(' ').unwrap_or((tagged, ""));
                Self { id, sender: Some(sender), message }
            }
            None => Self { id, sender: None, message: rest },
        }
    }
}

/// Hands the notification announced by a NOTIFY to the responses: the
/// payload is its id, the committing shell's tag (older shells send none)
/// and, when it fits, the message itself; else it is read.
async fn forward_notification(inner: &Inner, client: &Client, payload: &str) {
    if let Some(id) = forward_carried(inner, payload) {
        forward_since(inner, client, READ_NOTIFICATION, id).await;
    }
}

const READ_NOTIFICATION: &str = "SELECT id, message FROM notifications WHERE id = $1";

/// Hands the notification a NOTIFY carries to the responses; `Some(id)`
/// when it carries only its id (too large), to be read by that.
fn forward_carried(inner: &Inner, payload: &str) -> Option<i64> {
    let Announced { id, message, .. } = Announced::parse(payload);
    let id = id.parse::<i64>().ok()?;
    match serde_json::from_str::<Message>(message) {
        Ok(message) => {
            inner.last_notification.fetch_max(id, Ordering::Relaxed);
            inner.forward([message]);
            None
        }
        Err(_) => Some(id),
    }
}

/// After a reconnect: notifications committed while not listening (the
/// most recent ones, again; the responses ignore what they have seen).
async fn catch_up(inner: &Inner, client: &Client) {
    let last = inner.last_notification.load(Ordering::Relaxed);
    if last > 0 {
        let sql = "SELECT id, message FROM notifications WHERE id > $1 ORDER BY id";
        forward_since(inner, client, sql, last.saturating_sub(CATCH_UP)).await;
    } else {
        // First connection: nothing is waiting yet; note where the log of notifications is.
        match client.query_one("SELECT coalesce(max(id), 0) FROM notifications", &[]).await {
            Ok(row) => {
                inner.last_notification.fetch_max(row.try_get(0).unwrap_or(0), Ordering::Relaxed);
            }
            Err(e) => tracing::warn!("cannot read notifications: {}", describe(&e)),
        }
    }
}

async fn forward_since(inner: &Inner, client: &Client, sql: &str, id: i64) {
    if !inner.notify.taken() {
        return;
    }
    let rows = match client.query(sql, &[&id]).await {
        Ok(rows) => rows,
        Err(e) => return tracing::warn!(id, "cannot read notifications: {}", describe(&e)),
    };
    for row in rows {
        let id: i64 = row.try_get(0).unwrap_or(0);
        inner.last_notification.fetch_max(id, Ordering::Relaxed);
        match row.try_get::<_, serde_json::Value>(1).map(serde_json::from_value::<Message>) {
            Ok(Ok(message)) => inner.forward([message]),
            _ => tracing::warn!(id, "unreadable notification"),
        }
    }
}

/// A row of `events` as a delivery, with its transaction id.
pub(crate) fn delivery(row: &Row) -> Result<(String, Delivery), BusError> {
    let bad = |e: tokio_postgres::Error| BusError::Invalid(format!("unreadable event: {}", describe(&e)));
    let position: i64 = row.try_get(0).map_err(bad)?;
    let tx: String = row.try_get(1).map_err(bad)?;
    let at: Option<i64> = row.try_get(10).map_err(bad)?;
    let message = Message {
        id: row.try_get(3).map_err(bad)?,
        kind: row.try_get(4).map_err(bad)?,
        payload: row.try_get(5).map_err(bad)?,
        correlation_id: row.try_get(6).map_err(bad)?,
        causation_id: row.try_get(7).map_err(bad)?,
        principal: principal(row.try_get(11).map_err(bad)?, row.try_get(12).map_err(bad)?),
    };
    let event = Event {
        topic: row.try_get(2).map_err(bad)?,
        message,
        function: row.try_get(8).map_err(bad)?,
        version: row.try_get(9).map_err(bad)?,
        at_ms: at.and_then(|a| u64::try_from(a).ok()).unwrap_or(0),
    };
    Ok((tx, Delivery { position: u64::try_from(position).unwrap_or(0), event: Arc::new(event) }))
}

/// The columns `subject` and `claims` of a message: who caused it.
pub(super) fn audit(message: &Message) -> (Option<&str>, Option<&serde_json::Value>) {
    match &message.principal {
        Some(p) => (Some(p.subject.as_str()), Some(&p.claims)),
        None => (None, None),
    }
}

/// The principal stored with an event: its subject, and its claims (none
/// for events appended before claims were kept).
pub(super) fn principal(subject: Option<String>, claims: Option<serde_json::Value>) -> Option<Principal> {
    subject.map(|subject| Principal::new(subject, claims.unwrap_or_else(|| serde_json::json!({}))))
}

/// A consumer's next deliveries: after its checkpoint, below the oldest
/// transaction still running.
const READ: &str = concat!(
    "WITH c AS (
         SELECT coalesce((SELECT tx FROM checkpoints WHERE consumer = $1), '0'::xid8) AS tx,
                coalesce((SELECT position FROM checkpoints WHERE consumer = $1), 0) AS position)
     SELECT ",
    event_columns!(),
    "
     FROM events e, c
     WHERE e.topic = ANY($2) AND (e.tx, e.position) > (c.tx, c.position)
       AND e.tx < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY e.tx, e.position
     LIMIT $3"
);

/// [`READ`] for one partition: the events whose key hashes to it ($4 the
/// payload field holding the key, none for the correlation id; $5 the
/// partitions; $6 this one).
const READ_PARTITION: &str = concat!(
    "WITH c AS (
         SELECT coalesce((SELECT tx FROM checkpoints WHERE consumer = $1), '0'::xid8) AS tx,
                coalesce((SELECT position FROM checkpoints WHERE consumer = $1), 0) AS position)
     SELECT ",
    event_columns!(),
    "
     FROM events e, c
     WHERE e.topic = ANY($2) AND (e.tx, e.position) > (c.tx, c.position)
       AND e.tx < pg_snapshot_xmin(pg_current_snapshot())
       AND (hashtext(coalesce(e.payload->>$4::text, e.correlation_id, e.id))::bigint + 2147483648) % $5 = $6
     ORDER BY e.tx, e.position
     LIMIT $3"
);

/// The audit trail: the latest commands and events, newest first, only
/// those of subject $1 when it is given (by the `events_subject` index).
const AUDIT: &str = concat!(
    "SELECT ",
    event_columns!(),
    "
     FROM events e
     WHERE $1::text IS NULL OR e.subject = $1
     ORDER BY e.position DESC
     LIMIT $2"
);

/// A new partition starts where its function's consumer had got to.
const SEED_PARTITION: &str = "INSERT INTO checkpoints (consumer, tx, position)
     SELECT $1, tx, position FROM checkpoints WHERE consumer = $2
     ON CONFLICT (consumer) DO NOTHING";

/// Appends commands ($1..$8: arrays of their columns, in arrival order),
/// each once (a repeated id appends nothing), and wakes the consumers with
/// one NOTIFY per topic (tagged with `$10`, see [`PgBus::echo_tag`]);
/// returns the ids appended.
///
/// Committed without waiting for the WAL flush (`synchronous_commit` off
/// for this transaction only, `s`): nobody is told of a command until a
/// step it caused has committed — synchronously, which flushes the WAL
/// up to that commit and so this one's too. A crash before that loses
/// a command whose request got an error, never one that was answered.
const APPEND: &str = "WITH s AS (SELECT set_config('synchronous_commit', 'off', true)),
     e AS (
         INSERT INTO events (id, topic, kind, payload, correlation_id, causation_id, command_id, subject, claims)
         SELECT c.id, c.topic, c.kind, c.payload, c.correlation_id, c.causation_id, c.id, c.subject, c.claims
         FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::text[], $6::text[], $7::text[], $8::jsonb[])
              WITH ORDINALITY AS c(id, topic, kind, payload, correlation_id, causation_id, subject, claims, n)
         ORDER BY c.n
         ON CONFLICT (id) WHERE topic = 'commands' DO NOTHING
         RETURNING id, topic),
     n AS (SELECT count(pg_notify($9, t.topic || $10::text)) FROM (SELECT DISTINCT topic FROM e) t, s)
     SELECT e.id, (SELECT count FROM n) FROM e";

/// [`APPEND`] for one idempotent command: its fingerprint ($8) is kept in
/// `command_results` when — and in the same statement as — the command is
/// appended, so a duplicate (which waits for the first's transaction on the
/// unique index) always finds it. `$11`: the NOTIFY's tag. Not waiting
/// for the WAL flush, as [`APPEND`].
const SUBMIT_IDEMPOTENT: &str = "WITH s AS (SELECT set_config('synchronous_commit', 'off', true)),
     e AS (
         INSERT INTO events (id, topic, kind, payload, correlation_id, causation_id, command_id, subject, claims)
         VALUES ($1, $2, $3, $4, $5, $6, $1, $9, $10)
         ON CONFLICT (id) WHERE topic = 'commands' DO NOTHING
         RETURNING id),
     k AS (
         INSERT INTO command_results (command_id, fingerprint) SELECT id, $8 FROM e
         ON CONFLICT (command_id) DO NOTHING)
     SELECT pg_notify($7, $2 || $11::text) FROM e, s";

/// What a duplicate is compared with: the logged command, and its
/// fingerprint and first answer when kept (not for commands logged before
/// `command_results` existed, nor once its row is pruned).
const LOGGED_COMMAND: &str = "SELECT e.kind, e.payload, r.fingerprint, r.result
     FROM events e LEFT JOIN command_results r ON r.command_id = e.id
     WHERE e.id = $1 AND e.topic = 'commands'";

/// Keeps a first answer; an answer kept before wins.
const REMEMBER: &str = "INSERT INTO command_results (command_id, fingerprint, result) VALUES ($1, $2, $3)
     ON CONFLICT (command_id) DO UPDATE SET result = coalesce(command_results.result, EXCLUDED.result)
     RETURNING result";

/// A command on its way to [`append_commands`], and where the outcome
/// goes: the command back, and whether it was appended (else its id was
/// in the log already).
struct Append {
    command: Event,
    done: Reply,
}

type Reply = oneshot::Sender<(Event, Result<bool, BusError>)>;

/// Appends the commands this shell's requests submit: those that came
/// while a statement ran go together in the next one ([`APPEND`]), so a
/// busy shell spends one statement, transaction and NOTIFY on many
/// commands, an idle one waits for nothing. When the executor takes them
/// ([`Bus::chain_commands`]), they are appended in one transaction with
/// their handler's steps instead. When a statement fails for another
/// reason than the database being away (a payload Postgres refuses, say),
/// its commands are appended one by one, so that only the bad one fails.
/// Ends when the bus is gone.
async fn append_commands(inner: Weak<Inner>, mut queue: mpsc::Receiver<Append>) {
    let mut batch = Vec::with_capacity(APPEND_BATCH);
    while queue.recv_many(&mut batch, APPEND_BATCH).await > 0 {
        let Some(inner) = inner.upgrade() else { break };
        let (commands, replies): (Vec<Event>, Vec<_>) = batch.drain(..).map(|a| (a.command, a.done)).unzip();
        // With more commands already waiting, the appender stays quick
        // (the consumers take the steps side by side with it).
        if queue.is_empty() && chained(&inner, &commands).await {
            for (command, reply) in commands.into_iter().zip(replies) {
                let _ = reply.send((command, Ok(true)));
            }
            continue;
        }
        let mut outcome = append(&inner.db, &inner.echo, &commands).await;
        if matches!(outcome, Err(BusError::Invalid(_))) && commands.len() > 1 {
            for (command, reply) in commands.into_iter().zip(replies) {
                let mut alone = append(&inner.db, &inner.echo, std::slice::from_ref(&command)).await;
                wake_appended(&inner, std::slice::from_ref(&command), &alone);
                answer(command, reply, &mut alone);
            }
        } else {
            wake_appended(&inner, &commands, &outcome);
            for (command, reply) in commands.into_iter().zip(replies) {
                answer(command, reply, &mut outcome);
            }
        }
    }
}

/// Appends `commands` with the steps they cause in this shell, when the
/// executor takes them: whether it did (the store then woke the consumers
/// that did not take their steps).
async fn chained(inner: &Inner, commands: &[Event]) -> bool {
    let chain = inner.chain.lock().unwrap_or_else(|p| p.into_inner()).as_ref().and_then(Weak::upgrade);
    let Some(chain) = chain else { return false };
    // A bug in the steps must not end the appender (every command after
    // would be refused): the commands are appended alone instead (an
    // append of a command already in the log appends nothing).
    match AssertUnwindSafe(chain.append(commands)).catch_unwind().await {
        Ok(Some(Ok(()))) => true,
        Ok(Some(Err(e))) => {
            tracing::debug!("commands not appended with their steps, appending them alone: {e}");
            false
        }
        Ok(None) => false,
        Err(_) => {
            tracing::error!("chaining commands to their steps panicked; appending them alone");
            false
        }
    }
}

/// Wakes this shell's consumers of the commands appended.
fn wake_appended(inner: &Inner, commands: &[Event], outcome: &Result<HashSet<String>, BusError>) {
    let Ok(appended) = outcome else { return };
    let topics: HashSet<&str> =
        commands.iter().filter(|c| appended.contains(&c.message.id)).map(|c| c.topic.as_str()).collect();
    for topic in topics {
        inner.wake(Some(topic));
    }
}

/// Tells a submitter whether its command was appended (taking its id from
/// the appended, so that a repeat in the same statement counts once).
fn answer(command: Event, reply: Reply, outcome: &mut Result<HashSet<String>, BusError>) {
    let appended = match outcome {
        Ok(ids) => Ok(ids.remove(&command.message.id)),
        Err(e) => Err(e.clone()),
    };
    // The request went away meanwhile: its command is appended all the same.
    let _ = reply.send((command, appended));
}

/// One [`APPEND`] of `batch`: the ids it appended.
async fn append(db: &Database, tag: &str, batch: &[Event]) -> Result<HashSet<String>, BusError> {
    let client = db.pool().get().await.map_err(no_connection)?;
    let statement = client.prepare_cached(APPEND).await.map_err(refused)?;
    let messages = || batch.iter().map(|c| &c.message);
    let ids: Vec<&str> = messages().map(|m| m.id.as_str()).collect();
    let topics: Vec<&str> = batch.iter().map(|c| c.topic.as_str()).collect();
    let kinds: Vec<&str> = messages().map(|m| m.kind.as_str()).collect();
    let payloads: Vec<&serde_json::Value> = messages().map(|m| &m.payload).collect();
    let correlations: Vec<Option<&str>> = messages().map(|m| m.correlation_id.as_deref()).collect();
    let causations: Vec<Option<&str>> = messages().map(|m| m.causation_id.as_deref()).collect();
    let (subjects, claims): (Vec<_>, Vec<_>) = messages().map(audit).unzip();
    let rows = client
        .query(
            &statement,
            &[
                &ids,
                &topics,
                &kinds,
                &payloads,
                &correlations,
                &causations,
                &subjects,
                &claims,
                &EVENTS_CHANNEL,
                &tag,
            ],
        )
        .await
        .map_err(refused)?;
    rows.iter().map(|r| r.try_get::<_, String>(0)).collect::<Result<_, _>>().map_err(refused)
}

struct PgSubscription {
    inner: Arc<Inner>,
    consumer: String,
    topics: Vec<String>,
    /// The function and the share of its work, when partitioned.
    partition: Option<(String, Partition)>,
    /// The dedicated connection holding the consumer's lease, once held,
    /// and the read of the log prepared on it.
    lease: Option<(Client, Statement)>,
    /// The lease's id (see [`lease_id`]), once known: it never changes.
    lease_id: Option<i32>,
    /// A connection waiting to get the lease.
    candidate: Option<Client>,
    buffer: VecDeque<Delivery>,
    /// The last read returned every event there was (a short batch, all of
    /// it readable): once the buffer is handed out, only a wake that came
    /// after that read (or the poll) can bring more.
    caught_up: bool,
    wake: watch::Receiver<u64>,
    /// How soon to read again after a wake found nothing: the event that
    /// woke this consumer is held back behind an older transaction still
    /// open (the read stops at the oldest one), and that transaction's own
    /// commit may wake nobody here (it appended to other topics, or
    /// nothing). Doubles from [`HELD_BACK`] to [`POLL`]; back to
    /// [`HELD_BACK`] once a read finds something.
    recheck: Duration,
}

impl PgSubscription {
    /// Takes the lease if free (and, for a partition, if this shell holds
    /// less than its share). `Ok(false)`: another shell consumes.
    async fn lease(&mut self) -> Result<bool, tokio_postgres::Error> {
        if self.lease.as_ref().is_some_and(|(c, _)| !c.is_closed()) {
            if self.surplus().await? {
                // Another shell joined: the lease goes (the connection
                // closes), and that shell takes the partition.
                tracing::info!(consumer = %self.consumer, "handing the partition over to another shell");
                self.lease = None;
                return Ok(false);
            }
            return Ok(true);
        }
        if self.lease.take().is_some() {
            tracing::warn!(consumer = %self.consumer, "lost the consumer lease");
            self.release();
        }
        let client = match self.candidate.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.inner.db.dedicated(|_| {}).await?,
        };
        if !self.claim(&client).await? {
            self.candidate = Some(client);
            return Ok(false);
        }
        let id = match self.lease_id {
            Some(id) => id,
            None => match lease_id(&client, &self.consumer).await {
                Ok(id) => *self.lease_id.insert(id),
                Err(e) => {
                    self.release();
                    return Err(e);
                }
            },
        };
        match self.take(client, id).await {
            Ok(true) => Ok(true),
            Ok(false) => {
                self.release();
                Ok(false)
            }
            Err(e) => {
                self.release();
                Err(e)
            }
        }
    }

    /// Tries the lease on `client`; once held, prepares the read (and seeds
    /// a new partition's checkpoint).
    async fn take(&mut self, client: Client, id: i32) -> Result<bool, tokio_postgres::Error> {
        if !try_lease(&client, id).await? {
            self.candidate = Some(client);
            return Ok(false);
        }
        tracing::info!(consumer = %self.consumer, "holding the consumer lease");
        let read = match &self.partition {
            Some((function, _)) => {
                client.execute(SEED_PARTITION, &[&self.consumer, function]).await?;
                client.prepare(READ_PARTITION).await?
            }
            None => client.prepare(READ).await?,
        };
        self.lease = Some((client, read));
        Ok(true)
    }

    /// Counts a partition toward this shell's share before taking its
    /// lease; `false` when the share is full. Unpartitioned: always.
    async fn claim(&self, client: &Client) -> Result<bool, tokio_postgres::Error> {
        let Some((function, partition)) = &self.partition else { return Ok(true) };
        let share = self.inner.share(client, partition.count).await?;
        let mut held = self.inner.held();
        let mine = held.entry(function.clone()).or_default();
        Ok(*mine < share && {
            *mine += 1;
            true
        })
    }

    /// A partition held beyond this shell's share (shells joined): counted
    /// off, to be handed over.
    async fn surplus(&self) -> Result<bool, tokio_postgres::Error> {
        let (Some((function, partition)), Some((client, _))) = (&self.partition, &self.lease) else {
            return Ok(false);
        };
        let share = self.inner.share(client, partition.count).await?;
        let mut held = self.inner.held();
        let mine = held.entry(function.clone()).or_default();
        Ok(*mine > share && {
            *mine -= 1;
            true
        })
    }

    /// A claimed partition's lease is not (or no longer) held.
    fn release(&self) {
        if let Some((function, _)) = &self.partition
            && let Some(mine) = self.inner.held().get_mut(function)
        {
            *mine = mine.saturating_sub(1);
        }
    }

    /// Reads the next batch after the stored checkpoint.
    async fn fill(&mut self) -> Result<(), FillError> {
        self.caught_up = false;
        if !self.lease().await? {
            return Ok(());
        }
        let Some((client, read)) = &self.lease else { return Ok(()) };
        let rows = match &self.partition {
            Some((_, p)) => {
                let (count, index) = (i64::from(p.count), i64::from(p.index));
                client.query(read, &[&self.consumer, &self.topics, &BATCH, &p.key, &count, &index]).await?
            }
            None => client.query(read, &[&self.consumer, &self.topics, &BATCH]).await?,
        };
        let mut readable = true;
        for row in &rows {
            match delivery(row) {
                Ok((_, d)) => self.buffer.push_back(d),
                // Never skip an event: hand over those before it; the next
                // read starts at it again.
                Err(error) if self.buffer.is_empty() => {
                    return Err(FillError::Unreadable { position: row.try_get(0).ok(), error });
                }
                Err(_) => {
                    readable = false;
                    break;
                }
            }
        }
        self.caught_up = readable && (rows.len() as i64) < BATCH;
        // Consumer lag: what waits after the checkpoint. A short batch is all
        // of it; behind a full one (a backlog), the distance in positions from
        // the last one read to the end of the log (an upper bound: other
        // topics' events count too) — one index lookup, never a count over
        // the backlog, so catching up stays linear.
        let waiting = match rows.last().and_then(|r| r.try_get::<_, i64>(0).ok()) {
            Some(last) if rows.len() as i64 >= BATCH => {
                let end = client.query_one("SELECT coalesce(max(position), 0) FROM events", &[]).await?;
                u64::try_from(end.try_get::<_, i64>(0)?.saturating_sub(last)).unwrap_or(0) + rows.len() as u64
            }
            _ => rows.len() as u64,
        };
        crate::metrics::consumer_lag(&self.consumer, waiting);
        Ok(())
    }
}

impl Drop for PgSubscription {
    fn drop(&mut self) {
        if self.lease.is_some() {
            self.release();
        }
    }
}

/// Why a consumer could not read its next deliveries.
enum FillError {
    /// The connection or a statement failed: the lease is taken again.
    Database(tokio_postgres::Error),
    /// The event at `position` cannot be read (a row the shell cannot
    /// decode): the consumer stops before it rather than skip it.
    Unreadable { position: Option<i64>, error: BusError },
}

impl From<tokio_postgres::Error> for FillError {
    fn from(e: tokio_postgres::Error) -> Self {
        FillError::Database(e)
    }
}

#[async_trait]
impl Subscription for PgSubscription {
    fn try_next(&mut self) -> Option<Delivery> {
        self.buffer.pop_front()
    }

    /// The stored checkpoint has it: what is buffered goes (it follows the
    /// delivery given back), and the next call reads from the checkpoint.
    async fn put_back(&mut self, _delivery: Delivery) {
        self.buffer.clear();
        self.caught_up = false;
    }

    async fn next(&mut self) -> Option<Delivery> {
        // Caught up and not woken since the last read (the wake is marked
        // seen before each read, so whatever committed after it wakes this
        // one): another read would find nothing. Wait for a wake or the poll,
        // which also notices a lost lease.
        let mut woken = true;
        if self.buffer.is_empty() && self.caught_up && !self.wake.has_changed().unwrap_or(true) {
            // The last read's deliveries are all handed out: nothing waits.
            crate::metrics::consumer_lag(&self.consumer, 0);
            match tokio::time::timeout(POLL, self.wake.changed()).await {
                Ok(Err(_)) => return None,
                waited => woken = waited.is_ok(),
            }
        }
        loop {
            if let Some(d) = self.buffer.pop_front() {
                return Some(d);
            }
            self.wake.borrow_and_update();
            let mut wait = POLL;
            match self.fill().await {
                Ok(()) if !self.buffer.is_empty() => {
                    self.recheck = HELD_BACK;
                    continue;
                }
                // Woken for nothing visible: held back (or another
                // partition's event); look again soon, then less often.
                Ok(()) if woken && self.lease.is_some() => {
                    wait = self.recheck;
                    self.recheck = (self.recheck * 2).min(POLL);
                }
                Ok(()) => {}
                Err(FillError::Database(e)) => {
                    tracing::warn!(consumer = %self.consumer, "cannot read the log, retrying: {}", describe(&e));
                    self.lease = None;
                    self.candidate = None;
                }
                // The consumer waits at the event (its lag grows) until the
                // row can be read: said on every attempt, skipped never.
                Err(FillError::Unreadable { position, error }) => tracing::error!(
                    consumer = %self.consumer,
                    position,
                    "the next event in the log cannot be read; the consumer waits at it and tries again: {error}"
                ),
            }
            // Woken by a NOTIFY, or polling; `Err` inside: the bus is gone.
            // A re-read that found nothing yet keeps looking (less often).
            match tokio::time::timeout(wait, self.wake.changed()).await {
                Ok(Err(_)) => return None,
                waited => woken = waited.is_ok() || wait < POLL,
            }
        }
    }
}

#[async_trait]
impl Bus for PgBus {
    async fn ready(&self) -> Result<(), String> {
        let client = self.inner.db.pool().get().await.map_err(|e| no_connection(e).to_string())?;
        client
            .simple_query("SELECT 1")
            .await
            .map(drop)
            .map_err(|e| format!("the database does not answer: {e}"))
    }

    async fn audit(&self, subject: Option<&str>, limit: usize) -> Result<Vec<Delivery>, BusError> {
        let client = self.inner.db.pool().get().await.map_err(no_connection)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client.query(AUDIT, &[&subject, &limit]).await.map_err(|e| read_error(&e))?;
        rows.iter().map(|r| delivery(r).map(|(_, d)| d)).collect()
    }

    async fn submit(&self, command: Event, idempotent: bool) -> Result<Submitted, BusError> {
        let (command, appended) = if idempotent {
            let appended = self.append_idempotent(&command).await?;
            (command, appended)
        } else {
            let stopping = || BusError::Unavailable("the shell is stopping".into());
            let (done, outcome) = oneshot::channel();
            self.inner.appends.send(Append { command, done }).await.map_err(|_| stopping())?;
            let (command, appended) = outcome.await.map_err(|_| stopping())?;
            (command, appended?)
        };
        if appended {
            // The appender woke them for the others.
            if idempotent {
                self.wake_local([command.topic.as_str()]);
            }
            return Ok(Submitted::Accepted);
        }
        let client = self.inner.db.pool().get().await.map_err(no_connection)?;
        let m = &command.message;
        let print = fingerprint(&m.kind, &m.payload);
        // A duplicate id: the same command again, or the key reused for another.
        let logged = client.prepare_cached(LOGGED_COMMAND).await.map_err(refused)?;
        let Some(row) = client.query_opt(&logged, &[&m.id]).await.map_err(refused)? else {
            return Err(BusError::Invalid(format!("command {} is neither appended nor in the log", m.id)));
        };
        let bad =
            |e: tokio_postgres::Error| BusError::Invalid(format!("unreadable command: {}", describe(&e)));
        let kept: Option<String> = row.try_get(2).map_err(bad)?;
        let first = match kept {
            Some(kept) => kept,
            None => fingerprint(&row.try_get::<_, String>(0).map_err(bad)?, &row.try_get(1).map_err(bad)?),
        };
        if first != print {
            return Ok(Submitted::KeyReused);
        }
        let answer = row.try_get::<_, Option<serde_json::Value>>(3).map_err(bad)?.and_then(|answer| {
            serde_json::from_value(answer)
                .inspect_err(|e| tracing::warn!(command = %m.id, "unreadable kept answer, ignored: {e}"))
                .ok()
        });
        Ok(Submitted::Duplicate { answer })
    }

    async fn remember(&self, command: &Message, answer: Answer) -> Result<Answer, BusError> {
        let client = self.inner.db.pool().get().await.map_err(no_connection)?;
        let value = serde_json::to_value(&answer).map_err(|e| BusError::Invalid(e.to_string()))?;
        let remember = client.prepare_cached(REMEMBER).await.map_err(refused)?;
        let print = fingerprint(&command.kind, &command.payload);
        let row = client.query_one(&remember, &[&command.id, &print, &value]).await.map_err(refused)?;
        let kept: Option<serde_json::Value> = row.try_get(0).map_err(refused)?;
        match kept.map(serde_json::from_value::<Answer>) {
            Some(Ok(kept)) => Ok(kept),
            Some(Err(e)) => Err(BusError::Invalid(format!("unreadable kept answer: {e}"))),
            None => Ok(answer),
        }
    }

    fn watch_events(&self) -> Result<broadcast::Receiver<Arc<Event>>, BusError> {
        let rx = self.inner.watchers.subscribe();
        if !self.inner.tailing.swap(true, Ordering::SeqCst) {
            tokio::spawn(tail(Arc::clone(&self.inner)));
        }
        Ok(rx)
    }

    fn shares_work(&self) -> bool {
        true
    }

    fn chain_commands(&self, chain: Weak<dyn CommandChain>) {
        *self.inner.chain.lock().unwrap_or_else(|p| p.into_inner()) = Some(chain);
    }

    fn close(&self) {
        self.inner.closed.send_replace(true);
    }

    async fn subscribe_partition(
        &self,
        function: &str,
        topics: &[String],
        partition: Partition,
    ) -> Result<Box<dyn Subscription>, BusError> {
        if partition.count == 0 || partition.index >= partition.count {
            return Err(BusError::Invalid(format!(
                "no partition {} of {} for `{function}`",
                partition.index, partition.count
            )));
        }
        let consumer = partition.consumer(function);
        Ok(Box::new(self.subscription(consumer, topics, Some((function.to_owned(), partition)))))
    }

    async fn holders(&self) -> Result<Vec<Holder>, BusError> {
        let client = self.inner.db.pool().get().await.map_err(no_connection)?;
        let holders = lease_holders(&client).await.map_err(refused)?;
        Ok(holders.into_iter().map(|(consumer, shell)| Holder { consumer, shell }).collect())
    }

    async fn subscribe(&self, consumer: &str, topics: &[String]) -> Result<Box<dyn Subscription>, BusError> {
        Ok(Box::new(self.subscription(consumer.to_owned(), topics, None)))
    }

    async fn notifications(&self, requests: Weak<dyn Requests>) -> Result<(), BusError> {
        self.inner.notify.take(requests)
    }

    async fn notified(&self, correlation_id: &str) -> Result<Vec<Message>, BusError> {
        let client = self.inner.db.pool().get().await.map_err(no_connection)?;
        let rows = client
            .query(
                "SELECT message FROM notifications WHERE correlation_id = $1 ORDER BY id",
                &[&correlation_id],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<_, serde_json::Value>(0).ok())
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::{Announced, Echoes, TAG_MARK, UNSURE_MOST, heard};

    #[test]
    fn an_echo_is_handed_over_only_when_its_commit_never_answered() {
        let mut echoes = Echoes::default();
        // Heard before its commit answered; the commit answered: ignored, then and later.
        echoes.committing(&[1, 2]);
        assert!(!echoes.heard(1, "1 one"));
        assert!(echoes.answered(&[1, 2], true).is_empty());
        assert!(!echoes.heard(2, "2 two"), "answered: handed over by the committing task");
        assert!(!echoes.heard(1, "1 one"));
        // No answer: what was heard is handed over at once, the rest when heard, once.
        echoes.committing(&[3, 4]);
        assert!(!echoes.heard(3, "3 three"));
        assert_eq!(echoes.answered(&[3, 4], false), ["3 three"]);
        assert!(echoes.heard(4, "4 four"));
        assert!(!echoes.heard(4, "4 four"), "handed over once");
        // Commits never answered keep at most so many unheard echoes, the latest.
        let many: Vec<i64> = (10..10 + UNSURE_MOST as i64 + 5).collect();
        for id in &many {
            echoes.committing(&[*id]);
            assert!(echoes.answered(&[*id], false).is_empty());
        }
        assert_eq!(echoes.unsure.len(), UNSURE_MOST);
        assert!(echoes.heard(*many.last().expect("ids"), "latest"));
        assert!(echoes.awaiting.is_empty());
    }

    #[test]
    fn a_notification_names_its_shell_and_may_carry_the_message() {
        let (mine, message) = ("0123abcd", r#"{"id":"n-1","kind":"Done"}"#);
        let announced = |sender, message| Announced { id: "42", sender, message };
        let tagged = format!("42{TAG_MARK}{mine} {message}");
        assert_eq!(Announced::parse(&tagged), announced(Some(mine), message));
        // Too large to carry: only the id, to read.
        let bare = format!("42{TAG_MARK}{mine}");
        assert_eq!(Announced::parse(&bare), announced(Some(mine), ""));
        // Another shell's, and an older shell's (untagged).
        let other = format!("42{TAG_MARK}feedbeef {message}");
        assert_eq!(Announced::parse(&other), announced(Some("feedbeef"), message));
        let untagged = format!("42 {message}");
        assert_eq!(Announced::parse(&untagged), announced(None, message));
        // A message mentioning the mark is still someone's message.
        let sly = format!(r#"42 {{"text":"x{TAG_MARK}{mine} y"}}"#);
        assert_eq!(Announced::parse(&sly).sender, None);
    }

    #[test]
    fn a_notify_names_its_topic_and_tells_this_shells_own_echo() {
        let mine = "0123abcd";
        assert_eq!(heard(&format!("customer{TAG_MARK}{mine}"), mine), ("customer", true));
        assert_eq!(heard(&format!("customer{TAG_MARK}feedbeef"), mine), ("customer", false));
        // A bare topic: from a store without a bus, or an older shell.
        assert_eq!(heard("customer", mine), ("customer", false));
        assert_eq!(heard("a topic with spaces", mine), ("a topic with spaces", false));
    }
}
