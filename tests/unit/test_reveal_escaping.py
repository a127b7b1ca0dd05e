"""The ``reveal`` filter (``format.revealed``) returns Markup: whatever a user, an agent or a client
sent, nothing of it may come out as HTML. Checked through the UI's own template environment, in
element text and in a double-quoted attribute, for arbitrary strings."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st
from markupsafe import Markup

from hatchway.server.web import format as fmt
from hatchway.server.web.base import templates

#: The only markup the filter writes: one span per invisible character.
SPAN = re.compile(r'<span class="unseen" title="invisible character U\+([0-9A-F]{4,6})">&lt;U\+\1&gt;</span>')

IN_TEXT = templates.env.from_string("<p>{{ v | reveal }}</p>")
IN_ATTRIBUTE = templates.env.from_string('<p title="{{ v | reveal(False) }}"></p>')

#: Every character, lone surrogates, controls and bidirectional overrides included.
TEXT = st.text(st.characters(codec=None, categories=None), max_size=200)


def _plain(value: str) -> str:
    return "".join(f"<U+{ord(ch):04X}>" if fmt._unseen(ch) else ch for ch in value)


@settings(max_examples=500, deadline=None)
@given(TEXT)
@example('<script>alert(1)</script>\u202e')
@example('"><img src=x onerror=alert(1)>\u200b')
@example("&lt;\u0000&amp;")
def test_no_markup_from_the_value_survives_in_element_text(value: str) -> None:
    html = IN_TEXT.render(v=value)
    inner = html.removeprefix("<p>").removesuffix("</p>")
    spans = SPAN.findall(inner)
    bare = SPAN.sub("", inner)
    assert "<" not in bare and ">" not in bare
    assert len(spans) == sum(1 for ch in value if fmt._unseen(ch))
    # What is shown is the value itself, each invisible character as its code point.
    shown = SPAN.sub(lambda m: f"&lt;U+{m.group(1)}&gt;", inner)
    assert Markup(shown).unescape() == _plain(value)


@settings(max_examples=500, deadline=None)
@given(TEXT)
@example('" onmouseover="alert(1)\u202e')
def test_no_markup_from_the_value_survives_in_an_attribute(value: str) -> None:
    html = IN_ATTRIBUTE.render(v=value)
    inner = html.removeprefix('<p title="').removesuffix('"></p>')
    assert not set(inner) & set("<>\"'")
    assert Markup(inner).unescape() == _plain(value)

