//! `invite-resolver`: answers `InviteCustomer` and `RenameCustomer` with the customer's document
//! once the projector says it is up to date, or fails with the reason the
//! handler rejected the command for.

use customer_events::{InviteCustomer, RenameCustomer};
use low_contract::*;

pub struct InviteResolver;

impl Resolver for InviteResolver {
    fn meta() -> Meta {
        Meta::resolver("invite-resolver", [InviteCustomer::KIND, RenameCustomer::KIND])
    }

    fn resolve(_command: &Message, seen: &[Message], _env: &dyn Env) -> Resolution {
        for notification in seen {
            match notification.kind.as_str() {
                REJECTED => {
                    let reason = notification.text("reason").unwrap_or("the invitation was rejected");
                    return Resolution::Fail(reason.into());
                }
                PROJECTION_COMPLETE => {
                    if let (Some(collection), Some(key)) =
                        (notification.text("collection"), notification.text("key"))
                    {
                        return Resolution::RespondDocument {
                            collection: collection.into(),
                            key: key.into(),
                        };
                    }
                }
                _ => {}
            }
        }
        Resolution::Pending
    }
}

export_resolver!(InviteResolver);

#[cfg(test)]
mod tests {
    use super::*;
    use low_contract::testing::Given;

    fn command() -> Message {
        Message::new("c-1", "InviteCustomer", json!({ "email": "a@b.c" })).correlated("c-1")
    }

    #[test]
    fn waits_until_something_is_known() {
        Given::<InviteResolver>::notifications([]).when(command()).then_waits();
    }

    #[test]
    fn answers_with_the_projected_document() {
        let done =
            Message::new("n-1", PROJECTION_COMPLETE, json!({ "collection": "customers", "key": "cust-1" }));
        Given::<InviteResolver>::notifications([done])
            .when(command())
            .then_responds_with_document("customers", "cust-1");
    }

    #[test]
    fn fails_with_the_rejection_reason() {
        let rejected = Message::new("n-1", REJECTED, json!({ "reason": "Email is required" }));
        Given::<InviteResolver>::notifications([rejected]).when(command()).then_fails("Email is required");
    }
}
