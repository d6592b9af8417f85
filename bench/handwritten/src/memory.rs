//! `--memory`: everything in one `HashMap`-backed state behind a mutex, so
//! that an invitation's claim, event and customer happen as one step.

use crate::store::{Customer, StoreError};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

/// The state, behind one lock: held only for map operations, never across an `.await`.
#[derive(Default)]
pub struct Memory {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// email → customer id: the uniqueness claim.
    invites: HashMap<String, String>,
    /// customer id → customer: the read model.
    customers: HashMap<String, Customer>,
    /// The append-only event log.
    events: Vec<Event>,
}

/// What happened, as an event store would keep it.
#[expect(
    dead_code,
    reason = "the log is written as an event store's would be; this service never replays it"
)]
struct Event {
    id: String,
    at: SystemTime,
    kind: EventKind,
}

#[expect(dead_code, reason = "as `Event`")]
enum EventKind {
    CustomerInvited { customer_id: String, email: String },
    CustomerInviteFailed { customer_id: String, email: String, reason: &'static str },
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Memory {
    pub fn invite(&self, email: &str) -> Result<Customer, StoreError> {
        // Ids are drawn outside the lock, to keep it short.
        let (customer_id, event_id) = (new_id(), new_id());
        let mut state = self.lock()?;
        let State { invites, customers, events } = &mut *state;
        let at = SystemTime::now();
        if let Some(existing) = invites.get(email) {
            let customer = customers
                .get(existing)
                .cloned()
                .ok_or_else(|| StoreError::Internal(format!("{email} is claimed by an unknown customer")))?;
            events.push(Event {
                id: event_id,
                at,
                kind: EventKind::CustomerInviteFailed {
                    customer_id: existing.clone(),
                    email: email.to_owned(),
                    reason: "already invited",
                },
            });
            return Ok(customer);
        }
        invites.insert(email.to_owned(), customer_id.clone());
        events.push(Event {
            id: event_id,
            at,
            kind: EventKind::CustomerInvited { customer_id: customer_id.clone(), email: email.to_owned() },
        });
        let customer = Customer::new_invited(customer_id.clone(), email.to_owned());
        customers.insert(customer_id, customer.clone());
        Ok(customer)
    }

    pub fn customer(&self, id: &str) -> Result<Option<Customer>, StoreError> {
        Ok(self.lock()?.customers.get(id).cloned())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        // Poisoned only if a holder panicked mid-update: the state may be
        // inconsistent, so refuse rather than serve it.
        self.state.lock().map_err(|_| StoreError::Internal("the in-memory state is poisoned".into()))
    }
}
