"""`invite-resolver`, in Python: answers `InviteCustomer` and `RenameCustomer`
with the customer's document once the projector says it is up to date, or
fails with the reason the handler rejected the command for. Does exactly what
the Rust one (guest-functions/invite-resolver) does, and passes the same
scenarios.
"""

import low


class InviteResolver(low.Resolver):
    def meta(self):
        return low.Meta.resolver("invite-resolver", ["InviteCustomer", "RenameCustomer"])

    def resolve(self, command, seen, env):
        for notification in seen:
            if notification.kind == low.REJECTED:
                reason = notification.text("reason")
                return low.fail(reason if reason is not None else "the invitation was rejected")
            if notification.kind == low.PROJECTION_COMPLETE:
                collection, key = notification.text("collection"), notification.text("key")
                if collection is not None and key is not None:
                    return low.respond_document(collection, key)
        return low.pending()


WitWorld = low.export_resolver(InviteResolver)
