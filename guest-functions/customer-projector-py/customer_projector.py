"""`customer-projector`, in Python: keeps the `customers` read model up to
date from the `customer` events (`CustomerInvited`, `CustomerInviteFailed`,
`CustomerRenamed`), and tells the requester when a customer's document is
ready (`ProjectionComplete`). Does exactly what the Rust one
(guest-functions/customer-projector) does, and passes the same scenarios.

Built against the `function-lean` world (componentize-py cannot export a
function named `write`); the SDK exports `meta`, `lookup` and
`operate_and_write` from it.
"""

import low

# The read model served as `customer(id)` / `customers(first, after)`.
CUSTOMERS = "customers"


class CustomerProjector(low.Function):
    def meta(self):
        return low.Meta.projector("customer-projector", ["customer"]).model(
            low.ModelSpec(
                "Customer",
                CUSTOMERS,
                "id",
                [
                    low.FieldSpec("id", "id", True),
                    low.FieldSpec("email", "text", True),
                    low.FieldSpec("invited", "boolean", True, "Whether an invitation was sent"),
                ],
                public=True,
                # Emails are personal: with `[http.auth]` on, only callers with a token read them.
                authenticated=True,
                description="A customer invited by email",
            )
        )

    def lookup(self, input, store, env):
        id = input.text("customer-id")
        return [] if id is None else [low.by_key("customer", CUSTOMERS, id)]

    def operate(self, input, data, env):
        current = data.first("customer")
        id = input.text("customer-id")
        if id is None:
            return low.ignore()
        email = input.payload.get("email") if isinstance(input.payload, dict) else None
        if input.kind == "CustomerInvited":
            return low.emit(env.message("Customer", {"id": id, "email": email, "invited": True}))
        # Nothing changes, but the requester waits for the document: emit it
        # as it stands so that `write` confirms it.
        if input.kind == "CustomerInviteFailed":
            return low.emit(env.message("Customer", current.body)) if current else low.ignore()
        # The customer as it was, with the new email.
        if input.kind == "CustomerRenamed":
            customer = dict(current.body) if current else {"id": id, "invited": True}
            customer["email"] = email
            return low.emit(env.message("Customer", customer))
        return low.ignore()

    def write(self, output, env):
        id = output.text("id")
        if output.kind != "Customer" or id is None:
            return low.WritePlan()
        return low.WritePlan(
            ops=[low.put(CUSTOMERS, id, output.payload)],
            notify=[
                low.Message(f"{output.id}-projected", low.PROJECTION_COMPLETE, {"collection": CUSTOMERS, "key": id})
            ],
        )


WitWorld = low.export_function(CustomerProjector)
