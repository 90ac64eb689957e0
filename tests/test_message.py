"""Commit message templates and a revision's package metadata: pure, tested directly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiltsync.core.manifest import revision_meta
from quiltsync.core.message import DEFAULT_MESSAGE, PLACEHOLDERS, MessageValues, render, template_problem

VALUES = MessageValues("lab-pc", "team/data", "/srv/data", 3, 1, 2, 40, 1_764_365_476.9)


def test_the_default_message_is_the_first_rounds() -> None:
    assert render(DEFAULT_MESSAGE, VALUES) == "quiltsync@lab-pc: 3 added, 1 modified, 2 deleted"


def test_every_placeholder_renders_and_time_is_utc() -> None:
    text = render(" ".join("{" + p + "}" for p in PLACEHOLDERS), VALUES)
    assert text == "lab-pc team/data /srv/data 3 1 2 6 40 2025-11-28T21:31:16Z 2025-11-28"
    assert render("{added:>3}|{{literal}}", VALUES) == "  3|{literal}"


@pytest.mark.parametrize("template,words", [
    ("by {user}", ["unknown placeholder {user}", "{host}"]),
    ("{host.name}", ["unknown placeholder {host.name}"]),
    ("{package[0]}", ["unknown placeholder {package[0]}"]),
    ("{}", ["unknown placeholder {}"]),
    ("{0}", ["unknown placeholder {0}"]),
    ("50% {", ["not a valid message template", "{{"]),
    ("{added:q}", ["cannot be rendered", "'q'"]),
    ("{added:{width}}", ["unknown placeholder {width}"]),  # nested in a format spec
    ("{added:{}}", ["unknown placeholder {}"]),
])
def test_a_bad_template_names_what_is_wrong(template: str, words: list[str]) -> None:
    problem = template_problem(template)
    assert problem is not None
    for w in words:
        assert w in problem


@given(st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=40))
def test_text_without_braces_is_its_own_message(text: str) -> None:
    assert template_problem(text) is None and render(text, VALUES) == text


def test_revision_meta_keeps_or_replaces_metadata_and_always_restamps() -> None:
    base = {"version": "v0", "message": "old", "user_meta": {"by": "hand"},
            "workflow": {"id": "old", "config": "s3://b/c?versionId=1"}, "extra": 1}
    stamp = {"id": "experiment", "config": "s3://b/c?versionId=2"}
    # No [folder.metadata]: the base's is kept; the workflow is this push's; the message is not carried.
    assert revision_meta(base, None, stamp) == {"version": "v0", "user_meta": {"by": "hand"}, "workflow": stamp,
                                                "extra": 1}
    # With [folder.metadata], it replaces the base's; an empty table clears it.
    assert revision_meta(base, {"project": "a"}, None)["user_meta"] == {"project": "a"}
    assert revision_meta(base, {}, None)["user_meta"] == {}
    assert "workflow" not in revision_meta(base, None, None)  # a bucket without workflows
    assert revision_meta(None, None, None) == {"version": "v0"}
