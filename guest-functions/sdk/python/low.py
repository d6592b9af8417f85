"""low: the LOW contract (wit/functions.wit) for functions written in Python.

The Python counterpart of the Rust `low-contract` crate, as thin as it can
be: payloads, bodies and values are plain dicts/lists (the WIT's JSON strings
are parsed and serialised here, at the boundary), and a function is a class
with the same four parts as a Rust one.

    import low

    class Greeter(low.Function):
        def meta(self): return low.Meta.handler("greeter", [low.COMMANDS_TOPIC], "greetings")
        def lookup(self, input, store, env): return [low.by_key("greeted", "greeted", input.text("name"))]
        def operate(self, input, data, env): return low.emit(env.message("Greeted", {...}))
        def write(self, output, env): return low.WritePlan(ops=[low.insert("greeted", ...)])

    WitWorld = low.export_function(Greeter)      # or low.export_resolver(MyResolver)

componentize-py builds the component from the module that defines `WitWorld`
(`componentize-py -d wit -w function-lean componentize -p <dirs> <module>`;
`-w resolver` for a resolver). A handler or projector is built against the
`function-lean` world: componentize-py cannot export a function named
`write` (its linker clashes with libc's), and the shell calls only `meta`,
`lookup` and `operate-and-write` on a step.
"""

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from wit_world.imports import env as _env
from wit_world.imports import types as _wit

#: The topic commands arrive on.
COMMANDS_TOPIC = "commands"
#: Notification the shell sends when `operate` rejects: `{ "reason": … }`.
REJECTED = "Rejected"
#: Notification the shell sends when it could not run a step.
FAILED = "Failed"
#: Notification a projector sends when a document is up to date: `{ "collection", "key" }`.
PROJECTION_COMPLETE = "ProjectionComplete"


def _parse(text: str) -> Any:
    return json.loads(text) if text else None


def _dump(value: Any) -> str:
    # Compact, as the Rust SDK writes it.
    return json.dumps(value, separators=(",", ":"))


# --- messages and documents -------------------------------------------------


@dataclass
class Principal:
    """Who caused a message: the subject (`sub`) and claims of the token the
    shell verified. Only the shell sets it; a function reads it."""

    subject: str
    claims: Any = None

    def has_role(self, role: str) -> bool:
        """Whether a `roles` list claim holds `role`, or a `role` claim names it."""
        claims = self.claims if isinstance(self.claims, dict) else {}
        roles = claims.get("roles")
        return (isinstance(roles, list) and role in roles) or claims.get("role") == role

    @staticmethod
    def _from_wit(p: "_wit.Principal") -> "Principal":
        return Principal(p.subject, _parse(p.claims))

    def _to_wit(self) -> "_wit.Principal":
        return _wit.Principal(self.subject, _dump(self.claims if self.claims is not None else {}))


@dataclass
class Message:
    """A command, an event or a notification; `payload` is a plain value.
    `principal` is who caused it (None when the shell checks no identities)."""

    id: str
    kind: str
    payload: Any = None
    correlation_id: Optional[str] = None
    causation_id: Optional[str] = None
    principal: Optional[Principal] = None

    def text(self, name: str) -> Optional[str]:
        """The payload field `name` when it is a string, else None."""
        value = self.payload.get(name) if isinstance(self.payload, dict) else None
        return value if isinstance(value, str) else None

    @staticmethod
    def _from_wit(m: "_wit.Message") -> "Message":
        principal = Principal._from_wit(m.principal) if m.principal is not None else None
        return Message(m.id, m.kind, _parse(m.payload), m.correlation_id, m.causation_id, principal)

    def _to_wit(self) -> "_wit.Message":
        principal = self.principal._to_wit() if self.principal is not None else None
        return _wit.Message(
            self.id, self.kind, _dump(self.payload), self.correlation_id, self.causation_id, principal
        )


@dataclass
class Document:
    """A stored document; `body` is a plain value, `version` starts at 1."""

    collection: str
    key: str
    body: Any
    version: int = 1

    @staticmethod
    def _from_wit(d: "_wit.Document") -> "Document":
        return Document(d.collection, d.key, _parse(d.body), d.version)


class Data:
    """What the lookup plan found, by lookup name."""

    def __init__(self, found: Dict[str, List[Document]]):
        self._found = found

    def all(self, name: str) -> List[Document]:
        return self._found.get(name, [])

    def first(self, name: str) -> Optional[Document]:
        docs = self.all(name)
        return docs[0] if docs else None


# --- env and store ----------------------------------------------------------


class Env:
    """Ids, time and logging: the only ones a function has."""

    def new_id(self) -> str:
        return _env.new_id()

    def now_ms(self) -> int:
        return _env.now_ms()

    def log(self, level: str, message: str) -> None:
        """`level`: trace, debug, info, warn or error."""
        _env.log(getattr(_env.Level, level.upper(), _env.Level.INFO), message)

    def message(self, kind: str, payload: Any) -> Message:
        """A new message with an id from `new_id`."""
        return Message(self.new_id(), kind, payload)


class Store:
    """Read-only store access, valid during `lookup` only. Prefer lookup plans."""

    def get(self, collection: str, key: str) -> Optional[Document]:
        from wit_world.imports import store

        doc = store.get(collection, key)
        return Document._from_wit(doc) if doc is not None else None

    def find(self, collection: str, field: str, value: Any) -> List[Document]:
        from wit_world.imports import store

        return [Document._from_wit(d) for d in store.find(collection, field, _dump(value))]


# --- meta -------------------------------------------------------------------


@dataclass
class FieldSpec:
    name: str
    kind: str  # id, text, integer, number, boolean
    required: bool = False
    description: Optional[str] = None

    def _to_wit(self):
        return _wit.FieldSpec(self.name, _wit.FieldKind[self.kind.upper()], self.required, self.description)


@dataclass
class CommandSpec:
    name: str
    fields: List[FieldSpec]
    returns: str
    description: Optional[str] = None

    def _to_wit(self):
        return _wit.CommandSpec(self.name, [f._to_wit() for f in self.fields], self.returns, self.description)


@dataclass
class ModelSpec:
    name: str
    collection: str
    key: str
    fields: List[FieldSpec]
    public: bool = False
    description: Optional[str] = None
    # With `[http.auth]` on, its queries answer only callers with a verified token.
    authenticated: bool = False

    def _to_wit(self):
        fields = [f._to_wit() for f in self.fields]
        return _wit.ModelSpec(
            self.name, self.collection, self.key, fields, self.public, self.authenticated, self.description
        )


@dataclass
class Meta:
    """Who the function is; build with `Meta.handler`, `.projector`, `.resolver`."""

    name: str
    kind: str
    inputs: List[str]
    output: Optional[str] = None
    commands: List[CommandSpec] = field(default_factory=list)
    models: List[ModelSpec] = field(default_factory=list)

    @staticmethod
    def handler(name: str, inputs: List[str], output: str) -> "Meta":
        return Meta(name, "handler", list(inputs), output)

    @staticmethod
    def projector(name: str, inputs: List[str]) -> "Meta":
        return Meta(name, "projector", list(inputs))

    @staticmethod
    def resolver(name: str, commands: List[str]) -> "Meta":
        return Meta(name, "resolver", list(commands))

    def command(self, spec: CommandSpec) -> "Meta":
        self.commands.append(spec)
        return self

    def model(self, spec: ModelSpec) -> "Meta":
        self.models.append(spec)
        return self

    def _to_wit(self):
        return _wit.Meta(
            self.name,
            _wit.FunctionKind[self.kind.upper()],
            self.inputs,
            self.output,
            [c._to_wit() for c in self.commands],
            [m._to_wit() for m in self.models],
        )


# --- lookups, outcomes, writes, resolutions ---------------------------------


def by_key(name: str, collection: str, key: str):
    """Lookup: the document `key` of `collection`, handed to `operate` as `name`."""
    return _wit.Lookup(name, _wit.Query_ByKey(_wit.KeyQuery(collection, key)))


def by_field(name: str, collection: str, field: str, value: Any):
    """Lookup: every document of `collection` whose top-level `field` equals `value`."""
    return _wit.Lookup(name, _wit.Query_ByField(_wit.FieldQuery(collection, field, _dump(value))))


def emit(*messages: Message):
    """Outcome: append these events (each then goes to `write`)."""
    return _wit.Outcome_Emit([m._to_wit() for m in messages])


def reject(reason: str):
    """Outcome: refuse the input; the reason reaches the requester."""
    return _wit.Outcome_Reject(reason)


def ignore():
    """Outcome: nothing to do."""
    return _wit.Outcome_Ignore()


def insert(collection: str, key: str, body: Any):
    return _wit.WriteOp_Insert(_wit.DocWrite(collection, key, _dump(body)))


def put(collection: str, key: str, body: Any):
    return _wit.WriteOp_Put(_wit.DocWrite(collection, key, _dump(body)))


def update_if_version(collection: str, key: str, body: Any, expected_version: int):
    return _wit.WriteOp_UpdateIfVersion(_wit.VersionedWrite(collection, key, _dump(body), expected_version))


def delete(collection: str, key: str):
    return _wit.WriteOp_Delete(_wit.DocRef(collection, key))


def delete_if_version(collection: str, key: str, expected_version: int):
    return _wit.WriteOp_DeleteIfVersion(_wit.VersionedRef(collection, key, expected_version))


@dataclass
class WritePlan:
    """What to store for one emitted message, and whom to notify."""

    ops: list = field(default_factory=list)
    notify: List[Message] = field(default_factory=list)

    def _to_wit(self):
        return _wit.WritePlan(list(self.ops), [m._to_wit() for m in self.notify])


def pending():
    """Resolution: not yet."""
    return _wit.Resolution_Pending()


def respond_document(collection: str, key: str):
    """Resolution: answer with this stored document."""
    return _wit.Resolution_RespondDocument(_wit.DocRef(collection, key))


def respond(value: Any):
    """Resolution: answer with this value."""
    return _wit.Resolution_Respond(_dump(value))


def fail(reason: str):
    """Resolution: answer with an error."""
    return _wit.Resolution_Fail(reason)


# --- the exports ------------------------------------------------------------


class Function:
    """A handler or projector: override `meta`, `lookup`, `operate`, `write`."""

    def meta(self) -> Meta:
        raise NotImplementedError

    def lookup(self, input: Message, store: Store, env: Env) -> list:
        return []

    def operate(self, input: Message, data: Data, env: Env):
        return ignore()

    def write(self, output: Message, env: Env) -> WritePlan:
        return WritePlan()


class Resolver:
    """A resolver: override `meta` and `resolve`."""

    def meta(self) -> Meta:
        raise NotImplementedError

    def resolve(self, command: Message, seen: List[Message], env: Env):
        return pending()


def export_function(cls: Callable[[], Function]):
    """The `WitWorld` class componentize-py exports for the `function-lean`
    world (or `function`: its `operate` and `write` are here too)."""
    impl, env, store = cls(), Env(), Store()

    class WitWorld:
        def meta(self):
            return impl.meta()._to_wit()

        def lookup(self, input):
            return list(impl.lookup(Message._from_wit(input), store, env))

        def operate(self, input, data):
            found: Dict[str, List[Document]] = {}
            for f in data:
                found.setdefault(f.name, []).extend(Document._from_wit(d) for d in f.documents)
            return impl.operate(Message._from_wit(input), Data(found), env)

        def write(self, output):
            return impl.write(Message._from_wit(output), env)._to_wit()

        def operate_and_write(self, input, data):
            outcome = self.operate(input, data)
            if not isinstance(outcome, _wit.Outcome_Emit):
                return _wit.Decision_Reject(outcome.value) if isinstance(outcome, _wit.Outcome_Reject) else _wit.Decision_Ignore()
            emitted = []
            for m in outcome.value:
                # `write` sees each message as the shell will record it; the
                # message goes back as `operate` returned it, with an id.
                m.id = m.id or env.new_id()
                stamped = _wit.Message(m.id, m.kind, m.payload, input.correlation_id, input.id, input.principal)
                emitted.append(_wit.Emitted(m, self.write(stamped)))
            return _wit.Decision_Emit(emitted)

    return WitWorld


def export_resolver(cls: Callable[[], Resolver]):
    """The `WitWorld` class componentize-py exports for the `resolver` world."""
    impl, env = cls(), Env()

    class WitWorld:
        def meta(self):
            return impl.meta()._to_wit()

        def resolve(self, command, seen):
            return impl.resolve(Message._from_wit(command), [Message._from_wit(m) for m in seen], env)

    return WitWorld
