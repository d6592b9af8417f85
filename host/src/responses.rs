//! The response path: ties a request waiting in this shell to the
//! notifications its command causes. Each notification is shown, with those
//! seen before it, to the command's resolver, which answers pending, a
//! document, a value, or a failure.

use crate::bus::{Bus, Submitted};
use crate::executor::now_ms;
use crate::registry::Registry;
use crate::store::{Event, Store};
use low_contract::{COMMANDS_TOPIC, FAILED, Message, PROJECTION_COMPLETE, REJECTED, Resolution, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// Why a request got no value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResponseError {
    /// The function (or its resolver) refused the command; the message is for the user.
    #[error("{0}")]
    Rejected(String),
    /// The shell could not carry the command out.
    #[error("{0}")]
    Failed(String),
    #[error("no response to command {command_id} within {after:?}")]
    Timeout { command_id: String, after: Duration },
}

struct Pending {
    command: Message,
    seen: Vec<Message>,
    /// Everyone waiting on this request (a repeated command waits too).
    replies: Vec<oneshot::Sender<Result<Value, ResponseError>>>,
}

pub struct Responses {
    pending: Mutex<HashMap<String, Pending>>,
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    timeout: Duration,
}

impl Responses {
    /// Takes the bus's notifications and starts routing them.
    pub async fn start(
        registry: Arc<Registry>,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        timeout: Duration,
    ) -> Result<Arc<Self>, crate::bus::BusError> {
        let notifications = bus.notifications().await?;
        let responses = Arc::new(Self { pending: Mutex::default(), registry, store, bus, timeout });
        tokio::spawn(Arc::clone(&responses).route(notifications));
        Ok(responses)
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Submits `command` and waits for its response. The command's
    /// correlation id (its id when unset) names the request. A command whose
    /// id the bus already holds is not appended again: its response is
    /// resolved from the notifications it already caused (and those to come).
    pub async fn request(self: &Arc<Self>, mut command: Message) -> Result<Value, ResponseError> {
        let id = command.correlation_id.get_or_insert_with(|| command.id.clone()).clone();
        let (reply, response) = oneshot::channel();
        self.pending()
            .entry(id.clone())
            .or_insert_with(|| Pending { command: command.clone(), seen: vec![], replies: vec![] })
            .replies
            .push(reply);
        let event = Event {
            topic: COMMANDS_TOPIC.into(),
            message: command,
            function: None,
            version: None,
            at_ms: now_ms(),
        };
        match self.bus.submit(event).await {
            Ok(Submitted::Accepted) => {}
            Ok(Submitted::Duplicate) => {
                tracing::info!(command = %id, "repeated command: answering from its first run");
                match self.bus.notified(&id).await {
                    Ok(past) => {
                        for notification in past {
                            self.deliver(notification);
                        }
                    }
                    Err(e) => tracing::warn!(command = %id, "cannot read earlier notifications: {e}"),
                }
            }
            Err(e) => {
                self.give_up(&id);
                return Err(ResponseError::Failed(format!("could not submit command {id}: {e}")));
            }
        }
        match tokio::time::timeout(self.timeout, response).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => {
                Err(ResponseError::Failed(format!("the shell stopped before command {id} was answered")))
            }
            Err(_) => {
                self.give_up(&id);
                Err(ResponseError::Timeout { command_id: id, after: self.timeout })
            }
        }
    }

    /// Forgets the waiters of `id` that stopped waiting.
    fn give_up(&self, id: &str) {
        let mut pending = self.pending();
        if let Some(p) = pending.get_mut(id) {
            p.replies.retain(|r| !r.is_closed());
            if p.replies.is_empty() {
                pending.remove(id);
            }
        }
    }

    async fn route(self: Arc<Self>, mut notifications: mpsc::UnboundedReceiver<Message>) {
        while let Some(notification) = notifications.recv().await {
            self.deliver(notification);
        }
    }

    /// Shows a notification to the request it belongs to, if it waits here.
    fn deliver(self: &Arc<Self>, notification: Message) {
        let Some(id) = notification.correlation_id.clone() else { return };
        let snapshot = {
            let mut pending = self.pending();
            // Not waiting here: another shell holds the request, or it timed out.
            let Some(p) = pending.get_mut(&id) else { return };
            // Seen already (a repeated command reads earlier ones while new ones arrive).
            if p.seen.iter().any(|s| s.id == notification.id) {
                return;
            }
            p.seen.push(notification.clone());
            (p.command.clone(), p.seen.clone())
        };
        if notification.kind == FAILED {
            let reason = notification.text("reason").unwrap_or("the command failed").to_owned();
            self.finish(&id, Err(ResponseError::Failed(reason)));
            return;
        }
        let this = Arc::clone(self);
        let span = tracing::debug_span!(
            "resolve",
            command = %snapshot.0.kind,
            command_id = %snapshot.0.id,
            correlation_id = %id,
            notification = %notification.kind,
        );
        tokio::spawn(
            async move {
                let (command, seen) = snapshot;
                if let Some(result) = this.resolve(&command, &seen).await {
                    this.finish(&id, result);
                }
            }
            .instrument(span),
        );
    }

    fn finish(&self, id: &str, result: Result<Value, ResponseError>) {
        if let Some(p) = self.pending().remove(id) {
            for reply in p.replies {
                // The requester may have given up (timeout); nothing to do then.
                let _ = reply.send(result.clone());
            }
        }
    }

    /// `None` while the answer is still pending.
    async fn resolve(&self, command: &Message, seen: &[Message]) -> Option<Result<Value, ResponseError>> {
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
                Some(match self.store.get(&collection, &key).await {
                    Ok(Some(document)) => Ok(document.body),
                    Ok(None) => {
                        Err(ResponseError::Failed(format!("document `{collection}/{key}` does not exist")))
                    }
                    Err(e) => Err(ResponseError::Failed(e.to_string())),
                })
            }
        }
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
