"""The operation registry: what `spacedrive_call` routes to once the policy allows a call.

Each operation declares its input schema (in schemas/operations/), its handler, and how the policy request is
derived from a call: which input field is the `path`, whether a library is required, and which input fields
are hidden from `args` (secrets never reach a policy, a decision or a log).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import attrs
import fastjsonschema
import jsonschema

from capengine.errors import CapengineError
from capengine.host.deadline import DEFAULT_SECONDS, Deadline
from capengine.host.envelope import ErrorCode
from capengine.host.job_run import JobRun
from capengine.host.libraries import Library
from capengine.policy import schemas


class OperationError(CapengineError):
    """A failure the guest receives as an error envelope with this code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message


@attrs.frozen
class CallContext:
    """What a handler may know about the call besides its input: who calls, in which library, where data lives."""

    extension: str
    library: Library | None
    data_dir: Path
    deadline: Deadline = attrs.field(factory=lambda: Deadline.after(DEFAULT_SECONDS))
    job: JobRun | None = None  # the running job (job.* operations); None for calls outside a job


Handler = Callable[[CallContext, dict], object]


@attrs.frozen
class Operation:
    name: str
    kind: Literal["query", "action"]
    description: str
    schema: dict
    handler: Handler
    path_field: str | None = "path"
    needs_library: bool = True
    hidden_args: tuple[str, ...] = ()
    aggregate: bool = False  # cheap, frequent lifecycle calls: counted in the decision log, not logged one by one
    validator: Callable[[dict], object] = attrs.field(init=False, eq=False, repr=False)
    integer_fields: frozenset[str] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # jsonschema checks the schema itself once; fastjsonschema compiles it to Python for the hot path
        # (about 0.5 us per call instead of about 25 us for jsonschema's interpreter).
        jsonschema.validators.validator_for(self.schema).check_schema(self.schema)
        object.__setattr__(self, "validator", fastjsonschema.compile(self.schema))
        properties = self.schema.get("properties", {})
        object.__setattr__(self, "integer_fields",
                           frozenset(k for k, v in properties.items() if v.get("type") == "integer"))

    def validate(self, payload: dict) -> None:
        try:
            self.validator(payload)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise OperationError(ErrorCode.INVALID_ARGUMENT, f"{self.name}: {exc.message}") from None
        # JSON Schema calls 1.0 and 1e300 integers; handlers need Python ints, so a number written with a
        # fraction or exponent is refused here instead of failing (INTERNAL) inside the handler.
        for field in self.integer_fields:
            if isinstance(payload.get(field), float):
                raise OperationError(ErrorCode.INVALID_ARGUMENT,
                                     f"{self.name}: data.{field} must be an integer written without a fraction or "
                                     "exponent")

    def policy_args(self, payload: dict) -> dict:
        if not self.hidden_args:
            return payload
        return {k: v for k, v in payload.items() if k not in self.hidden_args}


def load_schema(name: str) -> dict:
    return schemas.load_schema(f"operations/{name}.schema.json")


class Registry:
    def __init__(self) -> None:
        self._ops: dict[str, Operation] = {}

    def register(self, operation: Operation) -> None:
        if operation.name in self._ops:
            raise ValueError(f"operation {operation.name} is already registered")
        self._ops[operation.name] = operation

    def get(self, name: str) -> Operation | None:
        return self._ops.get(name)

    def names(self) -> list[str]:
        return sorted(self._ops)

    def effects(self) -> frozenset[str]:
        """The operations that change something outside the call (actions, not the aggregated lifecycle calls):
        the daemon lets a guest go on after an allowed one only once its record is written."""
        return frozenset(op.name for op in self._ops.values() if op.kind == "action" and not op.aggregate)

    def __iter__(self):
        return iter(self._ops[name] for name in self.names())
