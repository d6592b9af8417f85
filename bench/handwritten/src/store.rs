//! Where customers live: in the process or in Postgres. Both do the same
//! thing per invitation — claim the email (unique), append the event, write
//! the customer — atomically.

use crate::{memory::Memory, postgres::Postgres};
use async_graphql::SimpleObject;

/// A customer invited by email: the `customers` document the shell's
/// projector writes, and the type the shell's schema calls `Customer`.
#[derive(Debug, Clone, PartialEq, SimpleObject)]
pub struct Customer {
    /// A random (v4) UUID, as the shell's `env.new-id` gives.
    pub id: async_graphql::ID,
    pub email: String,
    /// Whether an invitation was sent.
    pub invited: bool,
}

impl Customer {
    pub fn new_invited(id: String, email: String) -> Self {
        Self { id: id.into(), email, invited: true }
    }
}

/// Why the store could not answer.
#[derive(Debug)]
pub enum StoreError {
    /// The database cannot be reached now; a retry may work.
    Unavailable(String),
    /// Anything else.
    Internal(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable(e) => write!(f, "the database is unavailable: {e}"),
            Self::Internal(e) => write!(f, "{e}"),
        }
    }
}

/// The store this process was started with.
pub enum Store {
    Memory(Memory),
    Postgres(Postgres),
}

impl Store {
    /// Invites `email`: a new customer, or the customer who already has it.
    pub async fn invite(&self, email: &str) -> Result<Customer, StoreError> {
        match self {
            Self::Memory(m) => m.invite(email),
            Self::Postgres(p) => p.invite(email).await,
        }
    }

    /// The customer with this id, if any.
    pub async fn customer(&self, id: &str) -> Result<Option<Customer>, StoreError> {
        match self {
            Self::Memory(m) => m.customer(id),
            Self::Postgres(p) => p.customer(id).await,
        }
    }
}
