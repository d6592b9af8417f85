// low: the LOW contract (wit/functions.wit) for functions written in JavaScript.
//
// The JavaScript counterpart of the Rust `low-contract` crate, as thin as it
// can be: payloads, bodies and values are plain objects (the WIT's JSON
// strings are parsed and serialised here, at the boundary), versions and
// times are numbers, and a function has the same parts as a Rust one:
//
//   import { exportFunction, Meta, byKey, emit, ignore, put, WritePlan } from '../sdk/js/low.js';
//   export const { meta, lookup, operate, write, operateAndWrite } = exportFunction({
//     meta: () => Meta.projector('greeter', ['greetings']),
//     lookup: (input, store, env) => [byKey('greeted', 'greeted', input.text('name'))],
//     operate: (input, data, env) => emit(env.message('Greeted', { ... })),
//     write: (output, env) => WritePlan({ ops: [put('greeted', ...)] }),
//   });
//
// or `exportResolver({ meta, resolve })` for a resolver. componentize-js
// builds the component from the module (`componentize({ sourcePath, witPath,
// worldName })`); the `store` import exists in the `function` world only, so
// it is passed in by the caller (see `exportFunction`).
import { log as wasmLog, newId, nowMs } from 'low:functions/env@0.1.0';

/** The topic commands arrive on. */
export const COMMANDS_TOPIC = 'commands';
/** Notification the shell sends when `operate` rejects: `{ reason }`. */
export const REJECTED = 'Rejected';
/** Notification the shell sends when it could not run a step. */
export const FAILED = 'Failed';
/** Notification a projector sends when a document is up to date: `{ collection, key }`. */
export const PROJECTION_COMPLETE = 'ProjectionComplete';

const parse = (text) => (text ? JSON.parse(text) : null);
const dump = (value) => JSON.stringify(value ?? null);
const none = (value) => (value === null || value === undefined ? undefined : value);

// --- messages and documents --------------------------------------------------

/**
 * Who caused a message: the subject (`sub`) and claims of the token the shell
 * verified. Only the shell sets it; a function reads it.
 */
export class Principal {
  constructor(subject, claims = {}) {
    this.subject = subject;
    this.claims = claims;
  }

  /** Whether a `roles` list claim holds `role`, or a `role` claim names it. */
  hasRole(role) {
    const claims = this.claims !== null && typeof this.claims === 'object' ? this.claims : {};
    return (Array.isArray(claims.roles) && claims.roles.includes(role)) || claims.role === role;
  }

  static fromWit(p) {
    return new Principal(p.subject, parse(p.claims));
  }

  toWit() {
    return { subject: this.subject, claims: dump(this.claims ?? {}) };
  }
}

/**
 * A command, an event or a notification; `payload` is a plain value,
 * `principal` who caused it (undefined when the shell checks no identities).
 */
export class Message {
  constructor(id, kind, payload = null, correlationId = undefined, causationId = undefined, principal = undefined) {
    this.id = id;
    this.kind = kind;
    this.payload = payload;
    this.correlationId = correlationId;
    this.causationId = causationId;
    this.principal = principal;
  }

  /** The payload field `name` when it is a string, else undefined. */
  text(name) {
    const value = this.payload !== null && typeof this.payload === 'object' ? this.payload[name] : undefined;
    return typeof value === 'string' ? value : undefined;
  }

  static fromWit(m) {
    const principal = m.principal ? Principal.fromWit(m.principal) : undefined;
    return new Message(m.id, m.kind, parse(m.payload), none(m.correlationId), none(m.causationId), principal);
  }

  toWit() {
    return {
      id: this.id,
      kind: this.kind,
      payload: dump(this.payload),
      correlationId: none(this.correlationId),
      causationId: none(this.causationId),
      principal: this.principal ? this.principal.toWit() : undefined,
    };
  }
}

/** A stored document; `body` is a plain value, `version` starts at 1. */
export class Document {
  constructor(collection, key, body, version = 1) {
    this.collection = collection;
    this.key = key;
    this.body = body;
    this.version = version;
  }

  static fromWit(d) {
    return new Document(d.collection, d.key, parse(d.body), Number(d.version));
  }
}

/** What the lookup plan found, by lookup name. */
export class Data {
  constructor(found) {
    this.found = found;
  }
  all(name) {
    return this.found.get(name) ?? [];
  }
  first(name) {
    return this.all(name)[0];
  }
}

// --- env and store -----------------------------------------------------------

/** Ids, time and logging: the only ones a function has. */
export const env = {
  newId: () => newId(),
  nowMs: () => Number(nowMs()),
  /** `level`: trace, debug, info, warn or error. */
  log: (level, message) => wasmLog(level, message),
  /** A new message with an id from `newId`. */
  message: (kind, payload) => new Message(newId(), kind, payload),
};

/** Read-only store access from the WIT `store` import; valid during `lookup` only. */
function storeReader(wasmStore) {
  return {
    get(collection, key) {
      const doc = wasmStore.get(collection, key);
      return doc === undefined || doc === null ? undefined : Document.fromWit(doc);
    },
    find(collection, field, value) {
      return wasmStore.find(collection, field, dump(value)).map(Document.fromWit);
    },
  };
}

// --- meta --------------------------------------------------------------------

/** A field of a command or model; `kind`: id, text, integer, number, boolean. */
export const field = (name, kind, required = false, description = undefined) => ({
  name,
  kind,
  required,
  description,
});

/** Who the function is: `Meta.handler`, `Meta.projector`, `Meta.resolver`, then `.command(..)`, `.model(..)`. */
export class Meta {
  constructor(name, kind, inputs, output = undefined) {
    Object.assign(this, { name, kind, inputs: [...inputs], output, commands: [], models: [] });
  }
  static handler(name, inputs, output) {
    return new Meta(name, 'handler', inputs, output);
  }
  static projector(name, inputs) {
    return new Meta(name, 'projector', inputs);
  }
  static resolver(name, commands) {
    return new Meta(name, 'resolver', commands);
  }
  /** `{ name, fields, returns, description? }` */
  command(spec) {
    this.commands.push(spec);
    return this;
  }
  /** `{ name, collection, key, fields, public, authenticated?, description? }` */
  model(spec) {
    this.models.push(spec);
    return this;
  }
  toWit() {
    const fields = (fs) => fs.map((f) => ({ ...f, required: !!f.required, description: none(f.description) }));
    return {
      name: this.name,
      kind: this.kind,
      inputs: this.inputs,
      output: none(this.output),
      commands: this.commands.map((c) => ({ ...c, fields: fields(c.fields), description: none(c.description) })),
      models: this.models.map((m) => ({
        ...m,
        fields: fields(m.fields),
        public: !!m.public,
        authenticated: !!m.authenticated,
        description: none(m.description),
      })),
    };
  }
}

// --- lookups, outcomes, writes, resolutions ----------------------------------

/** Lookup: the document `key` of `collection`, handed to `operate` as `name`. */
export const byKey = (name, collection, key) => ({ name, query: { tag: 'by-key', val: { collection, key } } });
/** Lookup: every document of `collection` whose top-level `field` equals `value`. */
export const byField = (name, collection, field, value) => ({
  name,
  query: { tag: 'by-field', val: { collection, field, value: dump(value) } },
});

/** Outcome: append these events (each then goes to `write`). */
export const emit = (...messages) => ({ tag: 'emit', val: messages.map((m) => m.toWit()) });
/** Outcome: refuse the input; the reason reaches the requester. */
export const reject = (reason) => ({ tag: 'reject', val: reason });
/** Outcome: nothing to do. */
export const ignore = () => ({ tag: 'ignore' });

export const insert = (collection, key, body) => ({ tag: 'insert', val: { collection, key, body: dump(body) } });
export const put = (collection, key, body) => ({ tag: 'put', val: { collection, key, body: dump(body) } });
export const updateIfVersion = (collection, key, body, expectedVersion) => ({
  tag: 'update-if-version',
  val: { collection, key, body: dump(body), expectedVersion: BigInt(expectedVersion) },
});
export const remove = (collection, key) => ({ tag: 'delete', val: { collection, key } });
export const removeIfVersion = (collection, key, expectedVersion) => ({
  tag: 'delete-if-version',
  val: { collection, key, expectedVersion: BigInt(expectedVersion) },
});

/** What to store for one emitted message (`ops`), and whom to notify (`notify`, messages). */
export const WritePlan = ({ ops = [], notify = [] } = {}) => ({ ops, notify: notify.map((m) => m.toWit()) });

/** Resolution: not yet. */
export const pending = () => ({ tag: 'pending' });
/** Resolution: answer with this stored document. */
export const respondDocument = (collection, key) => ({ tag: 'respond-document', val: { collection, key } });
/** Resolution: answer with this value. */
export const respond = (value) => ({ tag: 'respond', val: dump(value) });
/** Resolution: answer with an error. */
export const fail = (reason) => ({ tag: 'fail', val: reason });

// --- the exports -------------------------------------------------------------

/**
 * The exports of the `function` world (a handler or projector) from
 * `{ meta, lookup, operate, write }`. A function that reads the store in
 * `lookup` passes the import: `import * as store from 'low:functions/store@0.1.0'`
 * and `exportFunction(impl, store)`.
 */
export function exportFunction(impl, wasmStore = undefined) {
  const store = wasmStore ? storeReader(wasmStore) : undefined;
  const operate = (input, data) => {
    const found = new Map();
    for (const f of data) found.set(f.name, [...(found.get(f.name) ?? []), ...f.documents.map(Document.fromWit)]);
    return impl.operate(Message.fromWit(input), new Data(found), env);
  };
  const write = (output) => (impl.write ? impl.write(Message.fromWit(output), env) : WritePlan());
  return {
    meta: () => impl.meta().toWit(),
    lookup: (input) => (impl.lookup ? impl.lookup(Message.fromWit(input), store, env) : []),
    operate,
    write,
    operateAndWrite: (input, data) => {
      const outcome = operate(input, data);
      if (outcome.tag !== 'emit') return outcome;
      // `write` sees each message as the shell will record it; the message
      // goes back as `operate` returned it, with an id if it had none.
      const emitted = outcome.val.map((m) => {
        const message = { ...m, id: m.id || newId() };
        const stamped = { ...message, correlationId: input.correlationId, causationId: input.id,
          principal: input.principal };
        return { message, plan: write(stamped) };
      });
      return { tag: 'emit', val: emitted };
    },
  };
}

/** The exports of the `resolver` world from `{ meta, resolve }`. */
export function exportResolver(impl) {
  return {
    meta: () => impl.meta().toWit(),
    resolve: (command, seen) => impl.resolve(Message.fromWit(command), seen.map(Message.fromWit), env),
  };
}
