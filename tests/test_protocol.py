"""The parser per role, on a table of well-formed and malformed turns."""

import pytest

from mgrpo_ref.protocol import FORMAT_ERRORS, Action, FormatError, blocks, parse_action, stop_strings

CASES = [
    # role, generated text, expected
    ("main", "<delegate>Who is the mentor of Bako Tumar?</delegate>", Action("delegate", "Who is the mentor of Bako Tumar?")),
    ("main", "  <answer> Kaun </answer>\n", Action("answer", "Kaun")),
    ("sub", "<search>Bako Tumar</search>", Action("search", "Bako Tumar")),
    ("sub", "<visit>12</visit>", Action("visit", "12")),
    ("sub", "<return>Kaun</return>", Action("return", "Kaun")),
    ("single", "<answer>Kaun</answer>", Action("answer", "Kaun")),
    ("single", "<visit> 3</visit>", Action("visit", "3")),
    ("main", "", FormatError("empty")),
    ("sub", " \n\t", FormatError("empty")),
    ("main", "<answer>" + "ba " * 100 + "</answer>", FormatError("overlong")),
    ("main", "the answer is Kaun", FormatError("no_action")),
    ("main", "answer: Kaun", FormatError("no_action")),
    ("main", "</answer>", FormatError("no_action")),
    ("main", "<answer>Kaun", FormatError("unclosed")),
    ("sub", "<search>ba ba ba ba ba ba", FormatError("unclosed")),  # a loop cut by the token limit
    ("main", "<answer>Kaun</answer> and then", FormatError("extra_text")),
    ("main", "I think <answer>Kaun</answer>", FormatError("extra_text")),
    ("main", "<delegate>a</delegate><answer>b</answer>", FormatError("multiple_actions")),
    ("sub", "<search>a</search><search>a</search>", FormatError("multiple_actions")),
    ("main", "<search>Kaun</search>", FormatError("wrong_tag")),
    ("sub", "<answer>Kaun</answer>", FormatError("wrong_tag")),
    ("single", "<delegate>x</delegate>", FormatError("wrong_tag")),
    ("sub", "<obs>fake observation</obs>", FormatError("wrong_tag")),
    ("main", "<result>Kaun</result>", FormatError("wrong_tag")),
    ("main", "<answer><answer>x</answer></answer>", FormatError("nested_tag")),
    ("main", "<answer>a <b</answer>", FormatError("nested_tag")),
    ("main", "<answer></answer>", FormatError("empty_argument")),
    ("sub", "<return>   </return>", FormatError("empty_argument")),
]


@pytest.mark.parametrize("role,text,expected", CASES)
def test_parse_action(role, text, expected):
    assert parse_action(role, text) == expected


def test_every_format_error_is_covered_by_the_table():
    seen = {e.reason for _, _, e in CASES if isinstance(e, FormatError)}
    assert seen == set(FORMAT_ERRORS)


def test_unknown_role_and_reason():
    with pytest.raises(ValueError, match="unknown role"):
        parse_action("critic", "<answer>x</answer>")
    with pytest.raises(ValueError, match="bad_reason"):
        FormatError("bad_reason")


def test_stop_strings_and_blocks():
    assert stop_strings("sub") == ["</search>", "</visit>", "</return>"]
    assert blocks("<question>q?</question>\n<delegate>a</delegate>\n<result>r\ns</result>") == [
        ("question", "q?"), ("delegate", "a"), ("result", "r\ns")]


def test_blocks_finds_what_the_block_regex_finds_on_random_texts():
    """protocol.blocks scans tags once instead of running the regex, which rescans the text from
    every unclosed opening tag; both must find the same blocks."""
    import random

    from mgrpo_ref.protocol import _BLOCK_RE, blocks

    pieces = ["<a>", "</a>", "<b>", "</b>", "<delegate>", "</delegate>", "x", " ", "<", ">", "</", "<a", "a>", "\n"]
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(30)))
        assert blocks(text) == [(m.group(1), m.group(2).strip()) for m in _BLOCK_RE.finditer(text)], text
    many = "<think>" * 20_000 + "<result>x</result>"  # the regex takes seconds here
    assert blocks(many) == [("result", "x")]
