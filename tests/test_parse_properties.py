"""Property-based tests of the reply parser: code blocks and the final answer, on any text."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from rlm_kernel import parse

# Prose lines that are neither fences nor FINAL lines, and code bodies without fence lines.
# Any character but a line break: markdown and Python break lines at \n, \r\n and \r only, so
# form feeds, U+2028 and the like are ordinary characters inside a line.
_line_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=60)
_FENCEISH = re.compile(r"^[ \t]*(`{3,}|~{3,})|^[ \t]*FINAL")


def _safe_line(line: str) -> bool:
    return not _FENCEISH.match(line)


_prose_line = _line_text.filter(_safe_line)
_prose = st.lists(_prose_line, max_size=4).map(lambda lines: "".join(f"{x}\n" for x in lines))
_code = st.lists(_prose_line, min_size=1, max_size=5).map("\n".join).filter(lambda c: c.strip())
_lang = st.sampled_from([*sorted(parse.CODE_LANGS), "PYTHON", "Repl"])
_other_lang = st.sampled_from(["", "text", "json", "bash", "output"])


@st.composite
def replies(draw):
    """A reply of prose and fenced blocks, and the bodies of the blocks that should run."""
    parts, expected = [draw(_prose)], []
    for _ in range(draw(st.integers(0, 4))):
        runnable = draw(st.booleans())
        lang = draw(_lang if runnable else _other_lang)
        fence = draw(st.sampled_from(["```", "````", "~~~"]))
        body = draw(_code)
        parts.append(f"{fence}{lang}\n{body}\n{fence}\n")
        if runnable:
            expected.append(body.rstrip("\n"))
        parts.append(draw(_prose))
    return "".join(parts), expected


@settings(max_examples=300)
@given(replies())
def test_every_runnable_block_is_found_in_order_and_nothing_else(reply):
    text, expected = reply
    blocks = parse.code_blocks(text)
    assert [b.code for b in blocks] == expected
    for block in blocks:
        fence = text[block.start : block.end]
        assert fence.lstrip(" ")[:3] in ("```", "~~~")
        assert block.code in fence
    ends = [b.end for b in blocks]
    starts = [b.start for b in blocks]
    assert all(e <= s for e, s in zip(ends, starts[1:], strict=False))


@settings(max_examples=300)
@given(replies())
def test_prose_keeps_the_text_and_drops_only_runnable_blocks(reply):
    text, expected = reply
    out = parse.prose(text, lambda n: f"<<{n}>>")
    for n in range(1, len(expected) + 1):
        assert f"<<{n}>>" in out
    assert f"<<{len(expected) + 1}>>" not in out
    # Removing the markers from prose and the runnable blocks from text gives the same words.
    rebuilt, last = [], 0
    for block in parse.code_blocks(text):
        rebuilt.append(text[last : block.start])
        last = block.end
    rebuilt.append(text[last:])
    assert re.sub(r"<<\d+>>\n?", "", out).split() == "".join(rebuilt).split()


_answer = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=80)


@settings(max_examples=300)
@given(before=_prose, answer=_answer, after=_prose)
def test_a_quoted_final_answer_reads_back_exactly(before, answer, after):
    text = f"{before}FINAL({answer!r})\n{after}"
    found = parse.final_answer(text)
    assert found == parse.FinalAnswer("FINAL", answer)


@settings(max_examples=200)
@given(before=_prose, answer=_answer, lang=_lang)
def test_final_inside_a_code_block_is_never_the_answer(before, answer, lang):
    text = f"{before}```{lang}\nFINAL({answer!r})\n```\n"
    assert parse.final_answer(text) is None
    (block,) = parse.code_blocks(text)
    assert block.code == f"FINAL({answer!r})"


@settings(max_examples=200)
@given(first=_answer, second=_answer)
def test_the_last_final_line_wins(first, second):
    text = f"FINAL({first!r})\nthinking again\nFINAL_VAR({second!r})\n"
    assert parse.final_answer(text) == parse.FinalAnswer("FINAL_VAR", second)


@settings(max_examples=500)
@given(st.text(alphabet=st.sampled_from(list("`~ \n\r\tFINAL_VR()'\"\\xpyrepl#")), max_size=200))
def test_no_text_makes_the_parser_fail(text):
    blocks = parse.code_blocks(text)
    for block in blocks:
        assert 0 <= block.start < block.end <= len(text)
        assert block.lang in parse.CODE_LANGS
    found = parse.final_answer(text)
    assert found is None or found.kind in ("FINAL", "FINAL_VAR")
    assert isinstance(parse.prose(text, str), str)


@settings(max_examples=200)
@given(st.text(max_size=300))
def test_any_unicode_text_parses(text):
    parse.code_blocks(text)
    parse.final_answer(text)
    parse.prose(text, str)


_NOT_LINE_BREAKS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # str.splitlines breaks at these


@settings(max_examples=200)
@given(
    head=_prose_line,
    sep=st.sampled_from(list(_NOT_LINE_BREAKS)),
    tail=st.sampled_from(["```", "~~~", "FINAL('no')", "```python"]),
    lang=_lang,
)
def test_only_real_line_breaks_end_a_line(head, sep, tail, lang):
    # Python and markdown see one line here; a fence or FINAL after a form feed or U+2028 is
    # still inside the code.
    body = f"{head}{sep}{tail}"
    text = f"```{lang}\n{body}\n```\n"
    assert [b.code for b in parse.code_blocks(text)] == [body]
    assert parse.final_answer(text) is None
    assert parse.final_answer(f"FINAL('yes'){sep} trailing words\n") is None
