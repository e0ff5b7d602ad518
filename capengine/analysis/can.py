"""`analyze can`: may extension X ever be allowed operation Y (optionally on paths matching a glob, in one
library)? Answers "never (proved)", "yes" with a request the engine allows, or "unknown" with the reason."""

from __future__ import annotations

from typing import Any, Literal

import attrs
import z3

from capengine.analysis.decision import decision_formula
from capengine.analysis.domain import build_request, operation_names
from capengine.analysis.regex import path_glob_language
from capengine.analysis.solve import DEFAULT_TIMEOUT_MS, Witness, solve
from capengine.analysis.zstrings import NotAnalysable, zstr
from capengine.errors import CapengineError
from capengine.policy import globs
from capengine.policy.engine import PolicySet
from capengine.policy.model import RequestError, canonical_library


class AnalysisError(CapengineError):
    """A question the analyser cannot ask (unknown operation, malformed glob or library id)."""


@attrs.frozen
class CanAnswer:
    extension: str
    operation: str
    answer: Literal["never", "yes", "unknown"]
    witness: Witness | None
    rule: str | None  # the rule the engine names for the witness
    reason: str
    unanalysable: dict[str, tuple[str, ...]]
    notes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"extension": self.extension, "operation": self.operation, "answer": self.answer,
                "witness": self.witness.to_json() if self.witness else None, "rule": self.rule,
                "reason": self.reason, "unanalysable": {k: list(v) for k, v in self.unanalysable.items()},
                "notes": list(self.notes)}

    def text(self) -> str:
        head = f"{self.extension} {self.operation}: "
        if self.answer == "never":
            lines = [head + "never (proved)"]
        elif self.answer == "yes":
            assert self.witness is not None
            lines = [head + f"yes, e.g. {_compact(self.witness.to_json())} (allowed by {self.rule})"]
        else:
            lines = [head + f"unknown: {self.reason}"]
        for rule, reasons in self.unanalysable.items():
            for r in reasons:
                lines.append(f"  note: {rule} is not fully analysable ({r}); it was approximated conservatively")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _compact(data: dict) -> str:
    import json
    return json.dumps(data, ensure_ascii=False, separators=(", ", ": "))


def check_operation(operation: str) -> None:
    if operation not in operation_names():
        raise AnalysisError(f"unknown operation {operation!r}; known: {', '.join(operation_names())}")


def region_constraints(request_path: z3.SeqRef, request_library: z3.SeqRef, path_glob: str | None,
                       library: str | None) -> list[z3.BoolRef]:
    out = []
    if path_glob is not None:
        try:
            globs.compile_glob(path_glob, "/")
            out.append(z3.InRe(request_path, path_glob_language(path_glob)))
        except (globs.GlobError, NotAnalysable) as exc:
            raise AnalysisError(f"--path {path_glob!r}: {exc}") from None
    if library is not None:
        try:
            out.append(request_library == zstr(canonical_library(library)))
        except RequestError as exc:
            raise AnalysisError(f"--library: {exc}") from None
    return out


def can(policy_set: PolicySet, extension: str, operation: str, path_glob: str | None = None,
        library: str | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> CanAnswer:
    check_operation(operation)
    request = build_request(operation, extension)
    formula = decision_formula(policy_set, request)
    goal = [formula.allowed] + region_constraints(request.path, request.library, path_glob, library)
    found: dict[str, str] = {}

    def confirm(ws: tuple[Witness, ...]) -> bool:
        engine_request = ws[0].request()
        if engine_request is None:
            return False
        decision = policy_set.decide(engine_request)
        if decision.allowed:
            found["rule"] = decision.rules[0]
        return decision.allowed

    outcome = solve([request], goal, confirm, timeout_ms)
    answer: Literal["never", "yes", "unknown"] = {"unsat": "never", "sat": "yes", "unknown": "unknown"}[
        outcome.status]  # type: ignore[assignment]
    witness = outcome.witnesses[0] if outcome.witnesses else None
    return CanAnswer(extension, operation, answer, witness, found.get("rule"), outcome.reason,
                     formula.unanalysable, request.notes)
