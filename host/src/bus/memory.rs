//! The in-process bus: unbounded channels per consumer. Nothing is retained:
//! an event reaches the consumers subscribed when it is appended.

use super::{Bus, BusError, Delivery, Subscription};
use crate::store::Event;
use async_trait::async_trait;
use low_contract::Message;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{broadcast, mpsc};

/// Appended events kept for slow watchers of [`Bus::watch_events`].
const WATCH_BUFFER: usize = 1024;

struct Subscriber {
    topics: Vec<String>,
    tx: mpsc::UnboundedSender<Delivery>,
}

struct Inner {
    subscribers: Mutex<Vec<Subscriber>>,
    notify: Mutex<Option<mpsc::UnboundedSender<Message>>>,
    position: AtomicU64,
    watchers: broadcast::Sender<Event>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            subscribers: Mutex::default(),
            notify: Mutex::default(),
            position: AtomicU64::default(),
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
    async fn submit(&self, command: Event) -> Result<(), BusError> {
        self.append(vec![command], vec![]);
        Ok(())
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
}
