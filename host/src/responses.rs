//! The response path: ties a request waiting in this shell to the
//! notifications its command causes. Each notification is shown, with those
//! seen before it, to the command's resolver, which answers pending, a
//! document, a value, or a failure.

use crate::backend::{Answer, Bus, BusError, Requests, Submitted};
use crate::backend::{Event, Store, StoreError, Written};
use crate::executor::now_ms;
use crate::maps::Map;
use crate::registry::Registry;
use low_contract::{COMMANDS_TOPIC, FAILED, Message, PROJECTION_COMPLETE, REJECTED, Resolution, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};
use tracing::Instrument;

/// Why a request got no value. The texts are for the log: GraphQL clients
/// get a stable message and code for each (see [`crate::graphql::schema`]),
/// and only a rejection's reason verbatim.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResponseError {
    /// The function (or its resolver) refused the command; the message is for the user.
    #[error("{0}")]
    Rejected(String),
    /// The command was taken but could not be carried out (a guest failed,
    /// a step kept conflicting, the answer could not be read).
    #[error("{0}")]
    Failed(String),
    #[error("no response to command {command_id} within {after:?}")]
    Timeout { command_id: String, after: Duration },
    /// The bus or the store cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
    /// The shell could not handle the command for a reason of its own.
    #[error("{0}")]
    Internal(String),
    /// The command's id (its idempotency key) names another command, of
    /// another kind or payload. Nothing was submitted.
    #[error("command {command_id} was submitted before with another payload")]
    KeyReused { command_id: String },
    /// Too many requests wait for their responses already. Nothing was submitted.
    #[error("{limit} requests are waiting for their responses already")]
    Overloaded { limit: usize },
}

impl From<Answer> for Result<Value, ResponseError> {
    fn from(answer: Answer) -> Self {
        match answer {
            Answer::Ok(value) => Ok(value),
            Answer::Rejected(reason) => Err(ResponseError::Rejected(reason)),
        }
    }
}

/// What a resolver of a request is shown. Shared with the resolver
/// running (a snapshot is an `Arc` clone, not a copy of every message); a
/// notification arriving meanwhile copies it first.
#[derive(Clone)]
struct Shown {
    command: Message,
    seen: Vec<Message>,
    /// What the commits that sent `seen` wrote, where known, latest last:
    /// an answer naming one of those documents is taken from here.
    written: Vec<Arc<Written>>,
}

/// The default of [`Responses::start`]'s `max_pending`.
pub const MAX_PENDING: usize = 10_000;

struct Pending {
    shown: Arc<Shown>,
    /// Whether the command's first answer is kept for its repeats.
    idempotent: bool,
    /// Everyone waiting on this request (a repeated command waits too).
    replies: Vec<oneshot::Sender<Result<Value, ResponseError>>>,
    /// Tells one waiting request that there is something new to resolve.
    /// The resolver runs on the request's own task, not on one spawned per
    /// notification: a task and a hop less on every answer.
    wake: Arc<Notify>,
}

pub struct Responses {
    /// The requests waiting in this shell, by correlation id.
    pending: Mutex<Map<String, Pending>>,
    /// Requests waiting, over every id: the replies in `pending`. Changed
    /// with `pending` locked; read without: the store asks on every commit
    /// whether the shell is at rest.
    waiting: AtomicUsize,
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    timeout: Duration,
    max_pending: usize,
}

/// Takes a request's reply out of `pending` however its future ends:
/// answered, failed, timed out, or dropped because the client went away (or
/// HTTP's request timeout struck). Without it, an abandoned request would
/// keep its entry, command and notifications for good.
struct Waiting<'a> {
    responses: &'a Responses,
    id: &'a str,
    response: Option<oneshot::Receiver<Result<Value, ResponseError>>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // Closing the receiver first marks this request's reply as abandoned.
        drop(self.response.take());
        self.responses.give_up(self.id);
    }
}

impl Responses {
    /// Takes the bus's notifications and starts routing them. At most
    /// `max_pending` requests wait at once; further ones are refused.
    pub async fn start(
        registry: Arc<Registry>,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        timeout: Duration,
        max_pending: usize,
    ) -> Result<Arc<Self>, crate::backend::BusError> {
        let responses = Arc::new(Self {
            pending: Mutex::default(),
            waiting: AtomicUsize::new(0),
            registry,
            store,
            bus,
            timeout,
            max_pending,
        });
        let requests: Weak<dyn Requests> = Arc::downgrade(&responses) as Weak<Self>;
        responses.bus.notifications(requests).await?;
        Ok(responses)
    }

    fn pending(&self) -> MutexGuard<'_, Map<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `n` replies off the count (with `pending` locked).
    fn forget(&self, n: usize) {
        let left = self.waiting.load(Ordering::Relaxed).saturating_sub(n);
        self.waiting.store(left, Ordering::Relaxed);
        crate::metrics::pending_requests(left);
    }

    /// Requests waiting for their responses now.
    pub fn pending_requests(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Submits `command` and waits for its response. The command's
    /// correlation id (its id when unset) names the request.
    ///
    /// An `idempotent` command's id is its idempotency key: a command whose
    /// id the bus already holds is not appended again, and is answered with
    /// the first answer kept for it, else from the notifications it already
    /// caused and those to come (the first run may still be going on, in
    /// this shell or another). A repeat with another payload is refused.
    pub async fn request(
        self: &Arc<Self>,
        mut command: Message,
        idempotent: bool,
    ) -> Result<Value, ResponseError> {
        let id = command.correlation_id.get_or_insert_with(|| command.id.clone()).clone();
        let (reply, response) = oneshot::channel();
        let wake = {
            let mut table = self.pending();
            let waiting = self.waiting.load(Ordering::Relaxed);
            if waiting >= self.max_pending {
                return Err(ResponseError::Overloaded { limit: self.max_pending });
            }
            let entry = table.entry(id.clone()).or_insert_with(|| Pending {
                shown: Arc::new(Shown { command: command.clone(), seen: vec![], written: vec![] }),
                idempotent,
                replies: vec![],
                wake: Arc::default(),
            });
            entry.idempotent |= idempotent;
            entry.replies.push(reply);
            let wake = Arc::clone(&entry.wake);
            self.waiting.store(waiting + 1, Ordering::Relaxed);
            crate::metrics::pending_requests(waiting + 1);
            wake
        };
        let mut waiting = Waiting { responses: self, id: &id, response: Some(response) };
        // A request for the same id may have registered first with another
        // payload: the logged command is the one to resolve with.
        let logged = idempotent.then(|| command.clone());
        let event = Event {
            topic: COMMANDS_TOPIC.into(),
            message: command,
            function: None,
            version: None,
            at_ms: now_ms(),
        };
        match self.bus.submit(event, idempotent).await {
            Ok(Submitted::Accepted) => {
                if let Some(logged) = logged
                    && let Some(p) = self.pending().get_mut(&id)
                {
                    Arc::make_mut(&mut p.shown).command = logged;
                }
            }
            Ok(Submitted::Duplicate { answer: Some(answer) }) => {
                tracing::info!(command = %id, "repeated command: answering with its first answer");
                return answer.into();
            }
            Ok(Submitted::Duplicate { answer: None }) => {
                tracing::info!(command = %id, "repeated command: answering from its first run");
                match self.bus.notified(&id).await {
                    Ok(past) => {
                        // What their commits wrote is not known now: the answer is read.
                        let unknown = Arc::new(Written::default());
                        for notification in past {
                            self.deliver(notification, &unknown);
                        }
                    }
                    Err(e) => tracing::warn!(command = %id, "cannot read earlier notifications: {e}"),
                }
            }
            Ok(Submitted::KeyReused) => return Err(ResponseError::KeyReused { command_id: id.clone() }),
            Err(BusError::Unavailable(e)) => {
                return Err(ResponseError::Unavailable(format!("could not submit command {id}: {e}")));
            }
            Err(e @ BusError::Invalid(_)) => {
                return Err(ResponseError::Internal(format!("could not submit command {id}: {e}")));
            }
        }
        let Some(response) = waiting.response.as_mut() else {
            return Err(ResponseError::Internal(format!("command {id} lost its reply")));
        };
        match tokio::time::timeout(self.timeout, self.answer(&id, &wake, response)).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => {
                Err(ResponseError::Internal(format!("the shell stopped before command {id} was answered")))
            }
            Err(_) => Err(ResponseError::Timeout { command_id: id.clone(), after: self.timeout }),
        }
    }

    /// Waits for the answer to `id`, resolving on this task each time
    /// `wake` says a notification came (any of the request's waiters may
    /// resolve; whichever finishes answers them all).
    async fn answer(
        &self,
        id: &str,
        wake: &Notify,
        response: &mut oneshot::Receiver<Result<Value, ResponseError>>,
    ) -> Result<Result<Value, ResponseError>, oneshot::error::RecvError> {
        loop {
            tokio::select! {
                biased;
                result = &mut *response => return result,
                () = wake.notified() => {}
            }
            // Answered meanwhile: the reply is on its way.
            let Some((shown, idempotent)) = self.snapshot(id) else { continue };
            let Shown { command, seen, written } = &*shown;
            let span = tracing::debug_span!(
                "resolve",
                command = %command.kind,
                command_id = %command.id,
                correlation_id = %id,
                notification = seen.last().map_or("", |n| n.kind.as_str()),
            );
            let resolved = self.resolve(command, seen, written).instrument(span).await;
            if let Some(result) = resolved {
                let result = if idempotent { self.keep(command, result).await } else { result };
                self.finish(id, result);
            }
        }
    }

    /// What a resolver of `id` is shown now.
    fn snapshot(&self, id: &str) -> Option<(Arc<Shown>, bool)> {
        let pending = self.pending();
        let p = pending.get(id)?;
        Some((Arc::clone(&p.shown), p.idempotent))
    }

    /// Forgets the waiters of `id` that stopped waiting.
    fn give_up(&self, id: &str) {
        let mut table = self.pending();
        let Some(p) = table.get_mut(id) else { return };
        let before = p.replies.len();
        p.replies.retain(|r| !r.is_closed());
        let (gone, empty) = (before - p.replies.len(), p.replies.is_empty());
        if empty {
            table.remove(id);
        } else if gone > 0 && !p.shown.seen.is_empty() {
            // The one that left may have been resolving: another waiter takes over.
            p.wake.notify_one();
        }
        self.forget(gone);
    }

    /// Shows a notification to the request it belongs to, if it waits here.
    fn deliver(&self, notification: Message, written: &Arc<Written>) {
        let Some(id) = notification.correlation_id.clone() else { return };
        let failed = (notification.kind == FAILED)
            .then(|| notification.text("reason").unwrap_or("the command failed").to_owned());
        let wake = {
            let mut pending = self.pending();
            // Not waiting here: another shell holds the request, or it timed out.
            let Some(p) = pending.get_mut(&id) else { return };
            // Seen already (a repeated command reads earlier ones while new ones arrive).
            if p.shown.seen.iter().any(|s| s.id == notification.id) {
                return;
            }
            let shown = Arc::make_mut(&mut p.shown);
            shown.seen.push(notification);
            if !written.is_empty() {
                shown.written.push(Arc::clone(written));
            }
            Arc::clone(&p.wake)
        };
        if let Some(reason) = failed {
            self.finish(&id, Err(ResponseError::Failed(reason)));
            return;
        }
        // One waiter resolves; a permit is kept if none is waiting this instant.
        wake.notify_one();
    }

    /// Keeps an idempotent command's first answer (a value or a
    /// rejection; failures are resolved again) for its repeats, and answers
    /// with the one kept — an earlier one if another request, maybe in
    /// another shell, kept one first.
    async fn keep(
        &self,
        command: &Message,
        result: Result<Value, ResponseError>,
    ) -> Result<Value, ResponseError> {
        let answer = match &result {
            Ok(value) => Answer::Ok(value.clone()),
            Err(ResponseError::Rejected(reason)) => Answer::Rejected(reason.clone()),
            Err(_) => return result,
        };
        match self.bus.remember(command, answer).await {
            Ok(kept) => kept.into(),
            Err(e) => {
                tracing::warn!(command = %command.id, "cannot keep the first answer (a repeat will resolve it again): {e}");
                result
            }
        }
    }

    fn finish(&self, id: &str, result: Result<Value, ResponseError>) {
        let done = {
            let mut table = self.pending();
            let done = table.remove(id);
            self.forget(done.as_ref().map_or(0, |p| p.replies.len()));
            done
        };
        for reply in done.into_iter().flat_map(|p| p.replies) {
            // The requester may have given up (timeout); nothing to do then.
            let _ = reply.send(result.clone());
        }
    }

    /// `None` while the answer is still pending.
    async fn resolve(
        &self,
        command: &Message,
        seen: &[Message],
        written: &[Arc<Written>],
    ) -> Option<Result<Value, ResponseError>> {
        let resolver = self.registry.current().resolver_for(&command.kind).cloned();
        let resolution = match resolver {
            Some(resolver) => {
                let resolved = match resolver.start(None).await {
                    Ok(mut call) => call.resolve(command, seen).await,
                    Err(e) => Err(e),
                };
                match resolved {
                    Ok(resolution) => resolution,
                    Err(e) => return Some(Err(ResponseError::Failed(e.to_string()))),
                }
            }
            None => default_resolution(seen.last()?),
        };
        match resolution {
            Resolution::Pending => None,
            Resolution::Respond(value) => Some(Ok(value)),
            Resolution::Fail(reason) => Some(Err(ResponseError::Rejected(reason))),
            Resolution::RespondDocument { collection, key } => {
                // Read-your-writes without a read: the document as the
                // commit that notified this request left it, when this shell
                // made that commit (else, or not written there: the store).
                let slot = (collection, key);
                let (collection, key) = match written.iter().rev().find_map(|w| w.get(&slot)) {
                    Some(Some(body)) => return Some(Ok(body.clone())),
                    Some(None) => {
                        let (collection, key) = slot;
                        return Some(Err(ResponseError::Failed(format!(
                            "document `{collection}/{key}` does not exist"
                        ))));
                    }
                    None => slot,
                };
                Some(match self.store.get(&collection, &key).await {
                    Ok(Some(document)) => Ok(document.body),
                    Ok(None) => {
                        Err(ResponseError::Failed(format!("document `{collection}/{key}` does not exist")))
                    }
                    Err(e @ StoreError::Unavailable(_)) => Err(ResponseError::Unavailable(format!(
                        "cannot read the answer `{collection}/{key}`: {e}"
                    ))),
                    Err(e) => Err(ResponseError::Failed(format!(
                        "cannot read the answer `{collection}/{key}`: {e}"
                    ))),
                })
            }
        }
    }
}

impl Requests for Responses {
    fn notified(self: Arc<Self>, notification: Message, written: &Arc<Written>) {
        self.deliver(notification, written);
    }

    fn waiting(&self) -> usize {
        self.pending_requests()
    }
}

/// For a command without a resolver: a rejection fails, a projected
/// document answers, any other notification answers with its payload.
fn default_resolution(last: &Message) -> Resolution {
    match last.kind.as_str() {
        REJECTED => Resolution::Fail(last.text("reason").unwrap_or("rejected").into()),
        PROJECTION_COMPLETE => match (last.text("collection"), last.text("key")) {
            (Some(collection), Some(key)) => {
                Resolution::RespondDocument { collection: collection.into(), key: key.into() }
            }
            _ => Resolution::Respond(last.payload.clone()),
        },
        _ => Resolution::Respond(last.payload.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Commit;
    use crate::backend::memory::{MemoryBus, MemoryStore};
    use crate::registry::Functions;
    use low_contract::{WriteOp, json};

    /// A shell whose requests read answers from an empty store, and the
    /// store its functions commit to: an answer found only in the second
    /// came with the notification, not from a read.
    async fn shell() -> (Arc<Responses>, MemoryStore) {
        let bus = MemoryBus::new();
        let committed = MemoryStore::new(bus.clone());
        let elsewhere: Arc<dyn Store> = Arc::new(MemoryStore::new(MemoryBus::new()));
        let registry = Arc::new(Registry::new(Functions::new([]).expect("no functions")));
        let responses =
            Responses::start(registry, elsewhere, Arc::new(bus), Duration::from_secs(10), MAX_PENDING)
                .await
                .expect("responses");
        (responses, committed)
    }

    /// A request for the command `id`, once it waits (beside any waiting already).
    async fn waiting(
        responses: &Arc<Responses>,
        id: &str,
    ) -> tokio::task::JoinHandle<Result<Value, ResponseError>> {
        let before = responses.pending_requests();
        let command = Message::new(id, "InviteCustomer", json!({ "email": "a@b.c" }));
        let request = tokio::spawn({
            let responses = Arc::clone(responses);
            async move { responses.request(command, false).await }
        });
        while responses.pending_requests() == before {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        request
    }

    /// The projector's commit of the customer `key`, notifying `request`;
    /// the customer it wrote.
    async fn project(committed: &MemoryStore, request: &str, key: &str) -> Value {
        let customer = json!({ "id": key, "email": "a@b.c", "invited": true });
        let put = WriteOp::Put { collection: "customers".into(), key: key.into(), body: customer.clone() };
        let commit = Commit { ops: vec![put], notify: vec![projected(request, key)], ..Commit::default() };
        committed.commit(commit).await.expect("commit");
        customer
    }

    fn projected(request: &str, key: &str) -> Message {
        Message::new(
            format!("n-{request}"),
            PROJECTION_COMPLETE,
            json!({ "collection": "customers", "key": key }),
        )
        .correlated(request)
    }

    #[tokio::test]
    async fn the_answer_is_the_document_as_the_notifying_commit_wrote_it() {
        let (responses, committed) = shell().await;
        let request = waiting(&responses, "c-1").await;
        let customer = project(&committed, "c-1", "cust-1").await;
        assert_eq!(request.await.expect("the request").expect("an answer"), customer);
    }

    #[tokio::test]
    async fn every_waiter_on_a_command_gets_the_answer_though_one_left() {
        let (responses, committed) = shell().await;
        let left = waiting(&responses, "c-3").await;
        let first = waiting(&responses, "c-3").await;
        let second = waiting(&responses, "c-3").await;
        // A client goes away: the others still resolve and are answered.
        left.abort();
        while responses.pending_requests() > 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let customer = project(&committed, "c-3", "cust-3").await;
        assert_eq!(first.await.expect("the first request").expect("an answer"), customer);
        assert_eq!(second.await.expect("the second request").expect("an answer"), customer);
        assert_eq!(responses.pending_requests(), 0);
    }

    #[tokio::test]
    async fn a_document_the_commit_did_not_write_is_read_from_the_store() {
        let (responses, committed) = shell().await;
        let request = waiting(&responses, "c-2").await;
        // The commit wrote another document: the answer is read, and this
        // shell's store has no `customers/cust-2`.
        let other = WriteOp::Put { collection: "customers".into(), key: "cust-9".into(), body: json!({}) };
        let commit =
            Commit { ops: vec![other], notify: vec![projected("c-2", "cust-2")], ..Commit::default() };
        committed.commit(commit).await.expect("commit");
        let answer = request.await.expect("the request");
        assert_eq!(answer, Err(ResponseError::Failed("document `customers/cust-2` does not exist".into())));
    }
}
