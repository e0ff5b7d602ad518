"""Running one question through Z3 and turning a model into a request the real engine confirms.

"unsat" is a proof over the modelled request space (a superset of what the host accepts). "sat" is believed
only once the witness is a request the host would accept (schema-valid, canonical) and the engine decides it
as the question says; a model the engine disagrees with (possible where a rule was approximated) is blocked
and the solver asked again, a few times, before the answer becomes "unknown". A timeout is "unknown" too,
never "no".
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, Literal

import attrs
import fastjsonschema
import z3

from capengine.analysis.domain import SymRequest, operation_schema
from capengine.analysis.fuse import fuse
from capengine.analysis.zstrings import model_string, zstr
from capengine.policy import paths
from capengine.policy.model import Request, RequestError

DEFAULT_TIMEOUT_MS = 10_000
ATTEMPTS = 4


@attrs.frozen
class Witness:
    """A concrete request: `payload` is what the guest sends (hidden fields included), `args` what policies see."""

    extension: str
    operation: str
    path: str
    library: str
    args: dict[str, Any]
    payload: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"extension": self.extension, "operation": self.operation}
        if self.path:
            out["path"] = self.path
        if self.library:
            out["library"] = self.library
        if self.args:
            out["args"] = self.args
        return out

    def request(self) -> Request | None:
        """The engine's request, or None when the host would refuse the call before any policy runs."""
        try:
            _validator(self.operation)(self.payload)
        except fastjsonschema.JsonSchemaException:
            return None
        try:
            if self.path and paths.canonical_path(self.path) != self.path:
                return None
            request = Request.parse(self.extension, self.operation, self.path, self.library, self.args)
        except (RequestError, paths.PathError):
            return None
        if request.library != self.library:
            return None
        return request


@cache
def _validator(operation: str) -> Callable[[Any], Any]:
    return fastjsonschema.compile(operation_schema(operation))


Status = Literal["sat", "unsat", "unknown"]


@attrs.frozen
class Outcome:
    status: Status
    witnesses: tuple[Witness, ...] = ()
    reason: str = ""


def extract(model: z3.ModelRef, request: SymRequest) -> Witness:
    payload: dict[str, Any] = {}
    for f in request.args.values():
        if not z3.is_true(model.eval(f.present, model_completion=True)) or f.kind == "opaque":
            continue
        if f.kind == "string":
            payload[f.name] = model_string(model, f.value)
        elif f.kind == "int":
            payload[f.name] = model.eval(f.value, model_completion=True).as_long()
        else:
            payload[f.name] = z3.is_true(model.eval(f.value, model_completion=True))
    args = {k: v for k, v in payload.items() if not request.args[k].hidden}
    extension = request.extension_name
    if extension is None:
        extension = model_string(model, request.extension)
    return Witness(extension, request.operation, model_string(model, request.path),
                   model_string(model, request.library), args, payload)


def _differences(request: SymRequest, w: Witness) -> list[z3.BoolRef]:
    """Ways to differ from this exact request, one per modelled field. Excluding the request is their
    disjunction; it is asserted one disjunct at a time (see `solve`), because Z3's string solver handles a
    disjunction of disequalities over several variables very slowly."""
    def differs(term: z3.SeqRef, text: str) -> z3.BoolRef:
        return z3.Not(z3.InRe(term, z3.Re(zstr(text))))  # a membership: fused with the variable's other tests

    out = [differs(request.path, w.path), differs(request.library, w.library)]
    if request.extension_name is None:
        out.append(differs(request.extension, w.extension))
    for f in request.args.values():
        if f.kind == "opaque":
            continue
        if f.name not in w.payload:
            out.append(f.present)
            continue
        value = w.payload[f.name]
        out.append(z3.Not(f.present))
        if f.kind == "string":
            out.append(differs(f.value, value))
        elif f.kind == "int":
            out.append(f.value != int(value))
        else:
            out.append(f.value != z3.BoolVal(value))
    return out


MAX_BRANCHES = 96  # solver calls spent on excluding refuted candidates before answering "unknown"


def solve(requests: Sequence[SymRequest], goal: Sequence[z3.BoolRef],
          confirm: Callable[[tuple[Witness, ...]], bool], timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Outcome:
    """Find requests satisfying `goal` that `confirm` (the real engine) agrees with, or prove there are none.

    Each refuted candidate adds a block: a list of alternatives, one of which must hold. The search walks the
    combinations of alternatives (first alternative first, so the common case costs one call); "unsat" is
    returned only when every combination is unsat, so it stays a proof."""
    base = [c for r in requests for c in r.constraints] + list(goal)
    friendly = [c for r in requests for c in r.friendly()]
    blocks: list[list[z3.BoolRef]] = []
    rejected = 0
    while rejected < ATTEMPTS:
        found = _search(base, friendly, blocks, timeout_ms)
        if isinstance(found, Outcome):
            return found
        witnesses = tuple(extract(found, r) for r in requests)
        if confirm(witnesses):
            return Outcome("sat", witnesses)
        rejected += 1
        blocks.append([d for r, w in zip(requests, witnesses) for d in _differences(r, w)])
    return Outcome("unknown", reason=f"the solver's {rejected} candidate request(s) were decided otherwise by the "
                                     "engine (an approximated rule); none confirmed")


MAX_CASES = 16  # top-level disjunctions split in Python before handing each case to Z3


def _cases(formula: z3.BoolRef) -> list[z3.BoolRef]:
    """Split the top-level disjunctions of a fused formula into cases (their product), each fused again.

    A disjunction whose members test different variables (`path in D or library == ""`) cannot become one
    membership, and Z3's string solver can take seconds on it where each case alone takes milliseconds
    (measured: 4 s vs 10 ms). Splitting is exact: the formula is satisfiable iff some case is. Too many
    cases: the formula is handed over whole."""
    conjuncts = formula.children() if z3.is_and(formula) else [formula]
    ors = [c for c in conjuncts if z3.is_or(c)]
    if not ors:
        return [formula]
    count = 1
    for o in ors:
        count *= o.num_args()
    if count > MAX_CASES:
        return [formula]
    rest = [c for c in conjuncts if not z3.is_or(c)]
    return [fuse(rest + list(choice)) for choice in itertools.product(*(o.children() for o in ors))]


def _search(base: list[z3.BoolRef], friendly: list[z3.BoolRef], blocks: list[list[z3.BoolRef]],
            timeout_ms: int) -> z3.ModelRef | Outcome:
    calls = 0
    for combo in itertools.product(*blocks):
        cases = _cases(fuse(base + list(combo)))
        for extra in (friendly, []):
            for case in cases:
                calls += 1
                if calls > MAX_BRANCHES:
                    return Outcome("unknown", reason="too many cases or refuted candidates for the search budget")
                solver = z3.Solver()
                solver.set(timeout=timeout_ms)
                solver.add(case)
                if extra:  # preferences fused apart: merged into the main regexes they slowed some queries 500x
                    solver.add(fuse(extra))
                result = solver.check()
                if result == z3.unknown:
                    return Outcome("unknown", reason=f"the solver gave up: {solver.reason_unknown()}")
                if result == z3.sat:
                    return solver.model()
    return Outcome("unsat")  # every case, every way around the refuted candidates, is impossible: a proof
