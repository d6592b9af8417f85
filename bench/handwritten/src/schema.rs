//! The GraphQL surface the shell derives for the example functions, written
//! out: `InviteCustomer(email)` and `customer(id)`, with the shell's answers
//! and error messages and codes.

use crate::store::{Customer, Store, StoreError};
use async_graphql::{Context, EmptySubscription, ErrorExtensions, ID, Object, Schema};

pub type InviteSchema = Schema<Query, Mutation, EmptySubscription>;

/// The shell's query limits (`[graphql]` in `projects/basic.toml`).
const MAX_DEPTH: usize = 16;
const MAX_COMPLEXITY: usize = 1000;

pub fn build(store: Store) -> InviteSchema {
    Schema::build(Query, Mutation, EmptySubscription)
        .data(store)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .finish()
}

pub struct Query;

#[Object]
impl Query {
    /// The Customer with this id
    async fn customer(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Customer>> {
        ctx.data::<Store>()?.customer(&id).await.map_err(store_error)
    }
}

pub struct Mutation;

#[Object]
impl Mutation {
    /// Invite a customer by email; inviting an email twice returns the first customer
    #[graphql(name = "InviteCustomer")]
    async fn invite_customer(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Address to send the invitation to")] email: Option<String>,
    ) -> async_graphql::Result<Option<Customer>> {
        // As the shell: a missing email fails the arguments' check, a blank
        // one is the handler's rejection. The email is kept as given
        // (version 1 of `invite-customer` does not normalise it).
        let Some(email) = email else { return Err("Email is required".into()) };
        if email.trim().is_empty() {
            return Err(coded("Email is required", "REJECTED"));
        }
        ctx.data::<Store>()?.invite(&email).await.map(Some).map_err(store_error)
    }
}

/// A GraphQL error with the shell's stable `extensions.code`.
fn coded(message: &str, code: &'static str) -> async_graphql::Error {
    async_graphql::Error::new(message).extend_with(|_, e| e.set("code", code))
}

/// The shell's stable messages; the detail goes to the log.
fn store_error(e: StoreError) -> async_graphql::Error {
    match e {
        StoreError::Unavailable(_) => {
            tracing::warn!("request failed: {e}");
            coded("the service is unavailable; try again", "UNAVAILABLE")
        }
        StoreError::Internal(_) => {
            tracing::error!("request failed: {e}");
            coded("internal error", "INTERNAL")
        }
    }
}
