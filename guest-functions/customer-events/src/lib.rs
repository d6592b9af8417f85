//! The customer domain's messages, shared by the functions that send and
//! receive them: the commands `invite-customer` accepts, and the events it
//! appends to [`CUSTOMER_TOPIC`] for `customer-projector`. A kind is a type
//! here, so a misspelt kind or field does not build.

use low_contract::Payload;
use serde::{Deserialize, Serialize};

/// Topic of the customer events.
pub const CUSTOMER_TOPIC: &str = "customer";

macro_rules! payload {
    ($($(#[$doc:meta])* $name:ident { $($(#[$field_meta:meta])* $field:ident: $ty:ty),* $(,)? })*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "kebab-case")]
        pub struct $name { $($(#[$field_meta])* pub $field: $ty),* }

        impl Payload for $name {
            const KIND: &'static str = stringify!($name);
        }
    )*};
}

payload! {
    /// Invite a customer by email.
    InviteCustomer {
        #[serde(default)]
        email: Option<String>,
    }
    /// Change a customer's email to one no other customer has.
    RenameCustomer {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        email: Option<String>,
    }
    /// A new customer, invited by email.
    CustomerInvited {
        customer_id: String,
        email: String,
    }
    /// The email was invited already: the customer it belongs to.
    CustomerInviteFailed {
        customer_id: String,
        email: String,
        reason: String,
    }
    /// A customer's email changed. `previous_version` is the version of the
    /// old email's invite as read (absent in events recorded before renames
    /// carried it).
    CustomerRenamed {
        customer_id: String,
        email: String,
        previous_email: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_version: Option<u64>,
    }
}
