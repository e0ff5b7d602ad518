"""The direct RE2 matcher behind `matches` agrees with RE2's own `search` on any text (incl. non-ASCII)."""

from __future__ import annotations

import re2
from hypothesis import given, settings
from hypothesis import strategies as st

from capengine.cel.standard import searcher

PATTERNS = ["^/photos/[a-z]+[.](png|jpg)$", "ö", "^$", "x*", "[0-9]+$", "(?i)abc", r"\bword\b", "a.c", "^é+$"]


@settings(max_examples=500, deadline=None)
@given(pattern=st.sampled_from(PATTERNS), text=st.text(alphabet=st.sampled_from("abcxé ö/.0123ABCpngjphotos"),
                                                      max_size=30))
def test_searcher_agrees_with_re2(pattern: str, text: str) -> None:
    assert searcher(pattern)(text) == (re2.search(pattern, text) is not None)
