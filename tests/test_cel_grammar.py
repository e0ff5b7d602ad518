"""The CEL parser's pre-built LALR tables (capengine/cel/grammar_tables.py) against the grammar they came from:
current, equivalent to building from cel.lark, and never used when stale."""

from __future__ import annotations

import lark
import pytest

from capengine.cel import ast, grammar, grammar_tables

SOURCES = [
    'path.under("/photos") && has(args.length) && args.length < 1000',
    "a.?b && [?x, y] == {?k: v} || f(1u, 2.0, \"s\", b'x')[0] in m ? -a : !b",
    "r'''a\nb''' + 'x' // comment\n",
    "true || false || null == x.y.z(1, [2], {3: 4})",
    "x.all(i, i % 2 == 0) && .y > 0x1F && z != -1.5e3",
]
BROKEN = ["a +", "@", "a.?", "(", "", "{?: 1}", "'abc", "x[1"]


def test_shipped_tables_are_current():
    """Regenerate with `python -m capengine.cel.grammar` after editing cel.lark or upgrading Lark."""
    assert grammar_tables.__doc__ and f"Lark {lark.__version__} " in grammar_tables.__doc__, \
        "the tables are for another Lark than the one pyproject.toml pins: run `python -m capengine.cel.grammar`"
    # (not a text comparison with a fresh generation: Lark numbers states in set order, which varies with
    # PYTHONHASHSEED; test_tables_parse_exactly_as_the_grammar checks the behaviour instead)
    assert grammar.digest(grammar.GRAMMAR.read_text(encoding="utf-8")) == grammar_tables.DIGEST, \
        "cel.lark changed: run `python -m capengine.cel.grammar`"
    assert compile(grammar.tables_source(), "grammar_tables.py", "exec")  # the generator writes valid Python


def test_tables_parse_exactly_as_the_grammar():
    built, loaded = grammar.build(), grammar.parser()
    for source in SOURCES:
        assert loaded.parse(source) == built.parse(source), source
    for source in BROKEN:
        outcomes = []
        for parser in (built, loaded):
            with pytest.raises(lark.exceptions.UnexpectedInput) as info:
                parser.parse(source)
            outcomes.append((type(info.value), info.value.line, info.value.column))
        assert outcomes[0] == outcomes[1], source


def test_stale_tables_are_not_used(monkeypatch):
    monkeypatch.setattr(grammar_tables, "DIGEST", "0" * 64)
    grammar.parser.cache_clear()
    try:
        built = []
        real_build = grammar.build
        monkeypatch.setattr(grammar, "build", lambda callbacks=True: built.append(1) or real_build(callbacks))
        parser = grammar.parser()
        assert built == [1]
        assert parser.parse("true").children[0].type == "BOOL_LIT"  # the lexer callback is in place
    finally:
        grammar.parser.cache_clear()


def test_parse_uses_the_shared_parser():
    ast.parse.cache_clear()
    node = ast.parse("args.?length.orValue(0) > 1000")
    assert isinstance(node, ast.Call) and node.function == "_>_"
