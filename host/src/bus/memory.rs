//! The in-process bus: unbounded channels per consumer. Nothing is retained:
//! an event reaches the consumers subscribed when it is appended. It does
//! remember the last [`REMEMBERED`] idempotent commands — id, fingerprint,
//! the notifications they caused and their first answer — so that a
//! repeated command id is answered without running the command again.

use super::{Answer, Bus, BusError, Delivery, Submitted, Subscription, fingerprint};
use crate::store::Event;
use async_trait::async_trait;
use low_contract::Message;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{broadcast, mpsc};

/// Appended events kept for slow watchers of [`Bus::watch_events`].
const WATCH_BUFFER: usize = 1024;

struct Subscriber {
    topics: Vec<String>,
    tx: mpsc::UnboundedSender<Delivery>,
}

/// Idempotent commands whose ids (with fingerprints, notifications and
/// first answers) the memory bus remembers; older ones are forgotten.
pub const REMEMBERED: usize = 10_000;

/// What is remembered of one idempotent command.
struct Remembered {
    fingerprint: String,
    notified: Vec<Message>,
    answer: Option<Answer>,
}

/// Recent idempotent commands, oldest first.
#[derive(Default)]
struct Recent {
    order: VecDeque<String>,
    commands: HashMap<String, Remembered>,
}

struct Inner {
    subscribers: Mutex<Vec<Subscriber>>,
    notify: Mutex<Option<mpsc::UnboundedSender<Message>>>,
    position: AtomicU64,
    recent: Mutex<Recent>,
    watchers: broadcast::Sender<Event>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            subscribers: Mutex::default(),
            notify: Mutex::default(),
            position: AtomicU64::default(),
            recent: Mutex::default(),
            watchers: broadcast::Sender::new(WATCH_BUFFER),
        }
    }
}

/// Cheap to clone; clones share the same channels.
#[derive(Clone, Default)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Delivers `events` to their subscribers and `notify` to the requester.
    /// Called by the memory store inside its commit.
    pub fn append(&self, events: Vec<Event>, notify: Vec<Message>) {
        if !events.is_empty() {
            let mut subscribers = lock(&self.inner.subscribers);
            for event in events {
                let position = self.inner.position.fetch_add(1, Ordering::Relaxed) + 1;
                crate::metrics::event_appended(&event.topic);
                // Nobody watching is fine.
                let _ = self.inner.watchers.send(event.clone());
                // A closed channel is a consumer that stopped: forget it.
                subscribers.retain(|s| {
                    !s.topics.contains(&event.topic)
                        || s.tx.send(Delivery { position, event: event.clone() }).is_ok()
                });
            }
        }
        if !notify.is_empty() {
            let mut recent = lock(&self.inner.recent);
            for message in &notify {
                if let Some(command) =
                    message.correlation_id.as_ref().and_then(|c| recent.commands.get_mut(c))
                {
                    command.notified.push(message.clone());
                }
            }
        }
        if !notify.is_empty()
            && let Some(tx) = lock(&self.inner.notify).as_ref()
        {
            for message in notify {
                // The receiver is gone only while the shell shuts down.
                let _ = tx.send(message);
            }
        }
    }
}

struct MemorySubscription {
    consumer: String,
    rx: mpsc::UnboundedReceiver<Delivery>,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Option<Delivery> {
        let delivery = self.rx.recv().await;
        // What is still queued behind this delivery.
        crate::metrics::consumer_lag(&self.consumer, self.rx.len() as u64);
        delivery
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn submit(&self, command: Event, idempotent: bool) -> Result<Submitted, BusError> {
        if idempotent {
            let mut recent = lock(&self.inner.recent);
            let (id, message) = (&command.message.id, &command.message);
            let print = fingerprint(&message.kind, &message.payload);
            if let Some(known) = recent.commands.get(id) {
                if known.fingerprint != print {
                    return Ok(Submitted::KeyReused);
                }
                return Ok(Submitted::Duplicate { answer: known.answer.clone() });
            }
            let remembered = Remembered { fingerprint: print, notified: vec![], answer: None };
            recent.commands.insert(id.clone(), remembered);
            recent.order.push_back(id.clone());
            while recent.order.len() > REMEMBERED {
                if let Some(old) = recent.order.pop_front() {
                    recent.commands.remove(&old);
                }
            }
        }
        self.append(vec![command], vec![]);
        Ok(Submitted::Accepted)
    }

    async fn remember(&self, command: &Message, answer: Answer) -> Result<Answer, BusError> {
        let mut recent = lock(&self.inner.recent);
        // Forgotten already (older than the last REMEMBERED): nothing to keep it with.
        let Some(known) = recent.commands.get_mut(&command.id) else { return Ok(answer) };
        Ok(known.answer.get_or_insert(answer).clone())
    }

    async fn subscribe(&self, consumer: &str, topics: &[String]) -> Result<Box<dyn Subscription>, BusError> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.inner.subscribers).push(Subscriber { topics: topics.to_vec(), tx });
        Ok(Box::new(MemorySubscription { consumer: consumer.to_owned(), rx }))
    }

    fn watch_events(&self) -> Result<broadcast::Receiver<Event>, BusError> {
        Ok(self.inner.watchers.subscribe())
    }

    async fn notifications(&self) -> Result<mpsc::UnboundedReceiver<Message>, BusError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut slot = lock(&self.inner.notify);
        if slot.as_ref().is_some_and(|tx| !tx.is_closed()) {
            return Err(BusError::Invalid("notifications are already taken".into()));
        }
        *slot = Some(tx);
        Ok(rx)
    }

    async fn notified(&self, correlation_id: &str) -> Result<Vec<Message>, BusError> {
        let recent = lock(&self.inner.recent);
        Ok(recent.commands.get(correlation_id).map(|c| c.notified.clone()).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use low_contract::{COMMANDS_TOPIC, json};

    fn command(id: &str) -> Event {
        Event {
            topic: COMMANDS_TOPIC.into(),
            message: Message::new(id, "Do", json!({})).correlated(id),
            function: None,
            version: None,
            at_ms: 0,
        }
    }

    #[tokio::test]
    async fn a_repeated_command_is_not_appended_and_sees_earlier_notifications() {
        let bus = MemoryBus::new();
        let mut sub = bus.subscribe("f", &[COMMANDS_TOPIC.into()]).await.expect("subscribe");
        assert_eq!(bus.submit(command("c1"), true).await.expect("submit"), Submitted::Accepted);
        bus.append(vec![], vec![Message::new("n1", "Done", json!({})).correlated("c1")]);
        assert_eq!(
            bus.submit(command("c1"), true).await.expect("submit"),
            Submitted::Duplicate { answer: None }
        );
        let mut other = command("c1");
        other.message.payload = json!({ "x": 1 });
        assert_eq!(bus.submit(other, true).await.expect("submit"), Submitted::KeyReused);
        assert_eq!(sub.next().await.map(|d| d.event.message.id), Some("c1".into()));
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), sub.next()).await.is_err());
        let seen = bus.notified("c1").await.expect("notified");
        assert_eq!(seen.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["n1"]);
        // The first answer kept wins, and repeats get it.
        let first = Answer::Ok(json!({ "n": 1 }));
        let c1 = command("c1").message;
        assert_eq!(bus.remember(&c1, first.clone()).await.expect("remember"), first);
        assert_eq!(bus.remember(&c1, Answer::Ok(json!({ "n": 2 }))).await.expect("remember"), first);
        assert_eq!(
            bus.submit(command("c1"), true).await.expect("submit"),
            Submitted::Duplicate { answer: Some(first) }
        );
    }
}
