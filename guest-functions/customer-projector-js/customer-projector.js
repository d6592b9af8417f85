// `customer-projector`, in JavaScript: keeps the `customers` read model up to
// date from the `customer` events (`CustomerInvited`, `CustomerInviteFailed`,
// `CustomerRenamed`), and tells the requester when a customer's document is
// ready (`ProjectionComplete`). Does exactly what the Rust one
// (guest-functions/customer-projector) does, and passes the same scenarios.
import {
  exportFunction, Meta, Message, field, byKey, emit, ignore, put, WritePlan, PROJECTION_COMPLETE,
} from '../sdk/js/low.js';

/** The read model served as `customer(id)` / `customers(first, after)`. */
const CUSTOMERS = 'customers';

const projector = {
  meta: () =>
    Meta.projector('customer-projector', ['customer']).model({
      name: 'Customer',
      collection: CUSTOMERS,
      key: 'id',
      fields: [
        field('id', 'id', true),
        field('email', 'text', true),
        field('invited', 'boolean', true, 'Whether an invitation was sent'),
      ],
      public: true,
      // Emails are personal: with `[http.auth]` on, only callers with a token read them.
      authenticated: true,
      description: 'A customer invited by email',
    }),

  lookup(input) {
    const id = input.text('customer-id');
    return id === undefined ? [] : [byKey('customer', CUSTOMERS, id)];
  },

  operate(input, data, env) {
    const current = data.first('customer');
    const id = input.text('customer-id');
    if (id === undefined) return ignore();
    const email = input.payload?.email ?? null;
    switch (input.kind) {
      case 'CustomerInvited':
        return emit(env.message('Customer', { id, email, invited: true }));
      // Nothing changes, but the requester waits for the document: emit it
      // as it stands so that `write` confirms it.
      case 'CustomerInviteFailed':
        return current ? emit(env.message('Customer', current.body)) : ignore();
      // The customer as it was, with the new email.
      case 'CustomerRenamed': {
        const customer = current ? { ...current.body } : { id, invited: true };
        customer.email = email;
        return emit(env.message('Customer', customer));
      }
      default:
        return ignore();
    }
  },

  write(output) {
    const id = output.text('id');
    if (output.kind !== 'Customer' || id === undefined) return WritePlan();
    return WritePlan({
      ops: [put(CUSTOMERS, id, output.payload)],
      notify: [new Message(`${output.id}-projected`, PROJECTION_COMPLETE, { collection: CUSTOMERS, key: id })],
    });
  },
};

export const { meta, lookup, operate, write, operateAndWrite } = exportFunction(projector);
