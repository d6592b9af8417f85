//! The in-process bus: unbounded channels per consumer. Nothing is retained:
//! an event reaches the consumers subscribed when it is appended. It does
//! remember the last [`REMEMBERED`] idempotent commands — id, fingerprint,
//! the notifications they caused and their first answer — so that a
//! repeated command id is answered without running the command again.
//!
//! A consumer subscribed again while its previous subscription is alive (a
//! function deployed with other inputs) takes that subscription's queue
//! over: from then on the queue receives the new topics, and what it holds
//! already — less the topics no longer wanted — is delivered first, together
//! with what the previous subscription [put back](Subscription::put_back).
//! Nothing is dropped or delivered twice across the switch.
//!
//! A commit may carry the steps another consumer took on its events
//! (chained, see [`Store::commit_chained`](crate::backend::Store)): those
//! events are then not delivered to that consumer. The bus knows for each
//! consumer what it was sent and what it committed past, so such steps
//! apply only for a consumer that has processed everything sent to it.

use crate::backend::Event;
use crate::backend::{
    Answer, Bus, BusError, CommandChain, Delivery, NotificationSink, Requests, Submitted, Subscription,
    Written, fingerprint,
};
use crate::maps::Map;
use async_trait::async_trait;
use low_contract::Message;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::{broadcast, mpsc};

/// Appended events kept for slow watchers of [`Bus::watch_events`].
const WATCH_BUFFER: usize = 1024;
/// Appended commands and events kept for [`Bus::audit`]; older ones are forgotten.
pub const AUDITED: usize = 10_000;

struct Subscriber {
    consumer: String,
    topics: Vec<String>,
    tx: mpsc::UnboundedSender<Delivery>,
    /// The queue's receiving end, shared by the consumer's subscriptions;
    /// gone when the last of them is dropped.
    queue: Weak<tokio::sync::Mutex<Queue>>,
    /// The position of the last delivery sent to it, and the last one its
    /// consumer committed past: caught up when `done` is not behind `sent`.
    sent: u64,
    done: u64,
}

/// One consumer's deliveries, in log order.
struct Queue {
    rx: mpsc::UnboundedReceiver<Delivery>,
    /// Taken but not processed by a subscription that stopped; delivered first.
    put_back: VecDeque<Delivery>,
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
    commands: Map<String, Remembered>,
}

struct Inner {
    subscribers: Mutex<Vec<Subscriber>>,
    notify: NotificationSink,
    position: AtomicU64,
    recent: Mutex<Recent>,
    watchers: broadcast::Sender<Arc<Event>>,
    /// The latest [`AUDITED`] appended, oldest first.
    trail: Mutex<VecDeque<Delivery>>,
    /// Runs a submitted command's steps before it is appended, when the
    /// consumers that take them are idle (see [`Bus::chain_commands`]).
    chain: Mutex<Option<Weak<dyn CommandChain>>>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            subscribers: Mutex::default(),
            notify: NotificationSink::default(),
            position: AtomicU64::default(),
            recent: Mutex::default(),
            watchers: broadcast::Sender::new(WATCH_BUFFER),
            trail: Mutex::default(),
            chain: Mutex::default(),
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

    /// Delivers `events` to their subscribers and `notify` to the requester,
    /// with what their commit `written`.
    pub fn append(&self, events: Vec<Event>, notify: Vec<Message>, written: Written) {
        self.appending().append(events, &[], notify, written);
    }

    /// Whether at most one request waits for its answer (the one whose
    /// command may be submitted now): then a commit's events are worth
    /// taking on the committing task (chained) rather than handing them to
    /// their consumers' tasks. Under load those tasks working side by side,
    /// each on what queued for it, cost less.
    pub fn at_rest(&self) -> bool {
        self.inner.notify.waiting() <= 1
    }

    /// Holds the bus for one commit: no other append comes between what it
    /// checks and what it appends.
    pub fn appending(&self) -> Appending<'_> {
        Appending { inner: &self.inner, subscribers: lock(&self.inner.subscribers) }
    }
}

/// The bus held for one commit (see [`MemoryBus::appending`]).
pub struct Appending<'a> {
    inner: &'a Inner,
    subscribers: MutexGuard<'a, Vec<Subscriber>>,
}

impl Appending<'_> {
    /// Whether `consumer` is subscribed and has committed past everything
    /// sent to it: then it can take steps on what is appended next in the
    /// appending commit itself.
    pub fn caught_up(&self, consumer: &str) -> bool {
        self.subscribers.iter().any(|s| s.consumer == consumer && !s.tx.is_closed() && s.done >= s.sent)
    }

    /// `consumer` committed past the delivery at `position`.
    pub fn processed(&mut self, consumer: &str, position: u64) {
        if let Some(s) = self.subscribers.iter_mut().find(|s| s.consumer == consumer) {
            s.done = s.done.max(position);
        }
    }

    /// Delivers `events` to their subscribers — but to the consumers in
    /// `done`, which took their steps on them in this commit and move past
    /// them — and `notify` to the requester, with what their commit
    /// `written`.
    pub fn append(mut self, events: Vec<Event>, done: &[String], notify: Vec<Message>, written: Written) {
        let inner = self.inner;
        if !events.is_empty() {
            let mut trail = lock(&inner.trail);
            let mut last = 0;
            for event in events {
                let position = inner.position.fetch_add(1, Ordering::Relaxed) + 1;
                last = position;
                crate::metrics::event_appended(&event.topic);
                // One copy, shared by the trail and every consumer sent it.
                let event = Arc::new(event);
                trail.push_back(Delivery { position, event: Arc::clone(&event) });
                if trail.len() > AUDITED {
                    trail.pop_front();
                }
                // Nobody watching is fine; watchers share the one copy too.
                if inner.watchers.receiver_count() > 0 {
                    let _ = inner.watchers.send(Arc::clone(&event));
                }
                // A closed channel is a consumer that stopped: forget it.
                self.subscribers.retain_mut(|s| {
                    if !s.topics.contains(&event.topic) || done.contains(&s.consumer) {
                        return true;
                    }
                    s.sent = position;
                    s.tx.send(Delivery { position, event: Arc::clone(&event) }).is_ok()
                });
            }
            for consumer in done {
                self.processed(consumer, last);
            }
        }
        drop(self.subscribers);
        if !notify.is_empty() {
            let mut recent = lock(&inner.recent);
            for message in &notify {
                if let Some(command) =
                    message.correlation_id.as_ref().and_then(|c| recent.commands.get_mut(c))
                {
                    command.notified.push(message.clone());
                }
            }
        }
        inner.notify.send(notify, written);
    }
}

/// A command being submitted through the chain: appended alone if the
/// submission is dropped before the chain appended it (the request went
/// away while its steps ran), so that an accepted command is never lost.
/// The chain's memory commit does not suspend: once it starts it ends, and
/// the submission cannot be dropped between the command's append and
/// [`Pending::appended`].
struct Pending<'a> {
    bus: &'a MemoryBus,
    command: Option<Event>,
}

impl Pending<'_> {
    fn appended(mut self) {
        self.command = None;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(command) = self.command.take() {
            self.bus.append(vec![command], vec![], Written::default());
        }
    }
}

struct MemorySubscription {
    consumer: String,
    topics: Vec<String>,
    queue: Arc<tokio::sync::Mutex<Queue>>,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Option<Delivery> {
        let mut queue = self.queue.lock().await;
        loop {
            let delivery = match queue.put_back.pop_front() {
                Some(d) => d,
                None => queue.rx.recv().await?,
            };
            // Queued for an earlier subscription of this consumer, on a topic
            // it reads no more.
            if !self.topics.contains(&delivery.event.topic) {
                continue;
            }
            // What is still queued behind this delivery.
            crate::metrics::consumer_lag(&self.consumer, (queue.rx.len() + queue.put_back.len()) as u64);
            return Some(delivery);
        }
    }

    async fn put_back(&mut self, delivery: Delivery) {
        self.queue.lock().await.put_back.push_front(delivery);
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
        let chain = lock(&self.inner.chain).as_ref().and_then(Weak::upgrade);
        if let Some(chain) = chain {
            let pending = Pending { bus: self, command: Some(command) };
            match chain.append(pending.command.as_slice()).await {
                Some(Ok(())) => pending.appended(),
                // Appended alone (dropping `pending`): its consumers take it.
                Some(Err(e)) => tracing::debug!("could not append the command with its steps: {e}"),
                None => {}
            }
            return Ok(Submitted::Accepted);
        }
        self.append(vec![command], vec![], Written::default());
        Ok(Submitted::Accepted)
    }

    async fn audit(&self, subject: Option<&str>, limit: usize) -> Result<Vec<Delivery>, BusError> {
        let trail = lock(&self.inner.trail);
        let caused = |d: &&Delivery| {
            subject.is_none_or(|s| d.event.message.principal.as_ref().is_some_and(|p| p.subject == s))
        };
        Ok(trail.iter().rev().filter(caused).take(limit).cloned().collect())
    }

    async fn remember(&self, command: &Message, answer: Answer) -> Result<Answer, BusError> {
        let mut recent = lock(&self.inner.recent);
        // Forgotten already (older than the last REMEMBERED): nothing to keep it with.
        let Some(known) = recent.commands.get_mut(&command.id) else { return Ok(answer) };
        Ok(known.answer.get_or_insert(answer).clone())
    }

    async fn subscribe(&self, consumer: &str, topics: &[String]) -> Result<Box<dyn Subscription>, BusError> {
        let mut subscribers = lock(&self.inner.subscribers);
        subscribers.retain(|s| !s.tx.is_closed());
        // Under the lock that appends take: no event falls between the old
        // topics and the new ones.
        let taken_over = subscribers
            .iter_mut()
            .find(|s| s.consumer == consumer)
            .and_then(|s| Some((s.queue.upgrade()?, s)))
            .map(|(queue, s)| {
                s.topics = topics.to_vec();
                queue
            });
        let queue = match taken_over {
            Some(queue) => queue,
            None => {
                let (tx, rx) = mpsc::unbounded_channel();
                // Nothing behind yet (and its steps may all be chained, which
                // never reads the queue).
                crate::metrics::consumer_lag(consumer, 0);
                let queue = Arc::new(tokio::sync::Mutex::new(Queue { rx, put_back: VecDeque::new() }));
                subscribers.push(Subscriber {
                    consumer: consumer.to_owned(),
                    topics: topics.to_vec(),
                    tx,
                    queue: Arc::downgrade(&queue),
                    sent: 0,
                    done: 0,
                });
                queue
            }
        };
        Ok(Box::new(MemorySubscription { consumer: consumer.to_owned(), topics: topics.to_vec(), queue }))
    }

    fn watch_events(&self) -> Result<broadcast::Receiver<Arc<Event>>, BusError> {
        Ok(self.inner.watchers.subscribe())
    }

    fn chain_commands(&self, chain: Weak<dyn CommandChain>) {
        *lock(&self.inner.chain) = Some(chain);
    }

    async fn notifications(&self, requests: Weak<dyn Requests>) -> Result<(), BusError> {
        self.inner.notify.take(requests)
    }

    async fn notified(&self, correlation_id: &str) -> Result<Vec<Message>, BusError> {
        let recent = lock(&self.inner.recent);
        Ok(recent.commands.get(correlation_id).map(|c| c.notified.clone()).unwrap_or_default())
    }
}

#[cfg(test)]
pub(super) mod tests {
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

    /// A `Happened` event with id `id` on `topic`.
    pub(in crate::backend::memory) fn event(topic: &str, id: &str) -> Event {
        Event {
            topic: topic.into(),
            message: Message::new(id, "Happened", json!({})),
            function: None,
            version: None,
            at_ms: 0,
        }
    }

    async fn ids(sub: &mut Box<dyn Subscription>) -> Vec<String> {
        let mut ids = vec![];
        while let Ok(Some(d)) = tokio::time::timeout(std::time::Duration::from_millis(50), sub.next()).await {
            ids.push(d.event.message.id.clone());
        }
        ids
    }

    #[tokio::test]
    async fn subscribing_again_with_other_topics_takes_the_queue_over() {
        let bus = MemoryBus::new();
        let mut old = bus.subscribe("f", &["a".into(), "b".into()]).await.expect("subscribe");
        bus.append(
            vec![event("a", "a1"), event("b", "b1"), event("c", "c1"), event("a", "a2")],
            vec![],
            Written::default(),
        );
        let taken = old.next().await.expect("a1");
        old.put_back(taken).await;

        let mut new = bus.subscribe("f", &["a".into(), "c".into()]).await.expect("subscribe again");
        drop(old);
        bus.append(vec![event("b", "b2"), event("c", "c2"), event("a", "a3")], vec![], Written::default());

        // What was queued (less `b`), then only the new topics; c1 came before
        // the switch, when the consumer did not read `c`.
        assert_eq!(ids(&mut new).await, ["a1", "a2", "c2", "a3"]);
    }

    #[tokio::test]
    async fn a_repeated_command_is_not_appended_and_sees_earlier_notifications() {
        let bus = MemoryBus::new();
        let mut sub = bus.subscribe("f", &[COMMANDS_TOPIC.into()]).await.expect("subscribe");
        assert_eq!(bus.submit(command("c1"), true).await.expect("submit"), Submitted::Accepted);
        bus.append(vec![], vec![Message::new("n1", "Done", json!({})).correlated("c1")], Written::default());
        assert_eq!(
            bus.submit(command("c1"), true).await.expect("submit"),
            Submitted::Duplicate { answer: None }
        );
        let mut other = command("c1");
        other.message.payload = json!({ "x": 1 });
        assert_eq!(bus.submit(other, true).await.expect("submit"), Submitted::KeyReused);
        assert_eq!(sub.next().await.map(|d| d.event.message.id.clone()), Some("c1".into()));
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

    /// A chain whose steps never end.
    struct Stuck;

    #[async_trait]
    impl CommandChain for Stuck {
        async fn append(&self, _commands: &[Event]) -> Option<Result<(), crate::backend::StoreError>> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_command_whose_submission_goes_away_while_its_steps_run_is_appended_still() {
        let bus = MemoryBus::new();
        let mut sub = bus.subscribe("f", &[COMMANDS_TOPIC.into()]).await.expect("subscribe");
        let chain: Arc<dyn CommandChain> = Arc::new(Stuck);
        bus.chain_commands(Arc::downgrade(&chain));
        let submit = bus.submit(command("c1"), false);
        assert!(tokio::time::timeout(std::time::Duration::from_millis(20), submit).await.is_err());
        assert_eq!(ids(&mut sub).await, ["c1"]);
    }
}
