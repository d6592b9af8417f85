//! How commands, events and notifications travel between functions.
//!
//! Appending events is part of a store [`Commit`](crate::store::Commit), so
//! that an event exists exactly when its writes do; the bus delivers what was
//! appended to each consumer, in order, and carries notifications back to the
//! shell holding the request.

pub mod memory;
pub mod postgres;

pub use memory::MemoryBus;
pub use postgres::PgBus;

use crate::store::Event;
use async_trait::async_trait;
use low_contract::Message;
use tokio::sync::{broadcast, mpsc};

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Invalid(String),
}

/// One event handed to one consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Position in the log; the consumer's checkpoint after processing it.
    pub position: u64,
    pub event: Event,
}

/// What became of a submitted command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Appended to the log.
    Accepted,
    /// A command with this id is already in the log; nothing was appended.
    Duplicate,
}

/// The deliveries of one consumer, in log order.
#[async_trait]
pub trait Subscription: Send {
    /// The next delivery; `None` once the bus has shut down.
    async fn next(&mut self) -> Option<Delivery>;
    /// Gives back a delivery taken by [`next`](Self::next) but not
    /// processed (its consumer is stopping), for the consumer's next
    /// subscription to deliver first. A bus that reads from the consumer's
    /// stored checkpoint finds it again there and needs nothing.
    async fn put_back(&mut self, _delivery: Delivery) {}
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Appends a command to the log, for whichever consumer handles it.
    /// A bus that dedupes command ids appends a repeated one only once.
    async fn submit(&self, command: Event) -> Result<Submitted, BusError>;
    /// Deliveries on `topics` for the consumer `consumer`, from just after
    /// what it has processed: subscribing again (other topics) while the
    /// previous subscription is still alive, and dropping that one after,
    /// hands over without losing or repeating a delivery.
    async fn subscribe(&self, consumer: &str, topics: &[String]) -> Result<Box<dyn Subscription>, BusError>;
    /// Notifications for requests waiting in this shell. Taken once.
    async fn notifications(&self) -> Result<mpsc::UnboundedReceiver<Message>, BusError>;
    /// The notifications already sent for the request `correlation_id`, for
    /// answering a repeated command. Buses that keep none return none.
    async fn notified(&self, _correlation_id: &str) -> Result<Vec<Message>, BusError> {
        Ok(vec![])
    }
    /// Whether the bus can be used now (for `/readyz`); the reason when not.
    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }
    /// Every event and command appended from now on, for live watchers (the
    /// GraphQL `events` subscription). Best effort: a watcher that falls
    /// behind is told it lagged and skips ahead.
    fn watch_events(&self) -> Result<broadcast::Receiver<Event>, BusError> {
        Err(BusError::Invalid("watching events is not supported by this bus".into()))
    }
}
