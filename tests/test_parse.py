"""Parsing model replies: which code runs and which text is a final answer."""

from __future__ import annotations

import pytest

from rlm_kernel.parse import FinalAnswer, code_blocks, final_answer, prose

REPLY = """\
Let me look first.

```repl
x = "FINAL(not this)"
print(x)
```

Calling `FINAL(x)` comes later. FINAL(3) mid-sentence does not count.

````python
print("```")
````

```js
console.log("not python")
```
"""


def test_repl_and_python_blocks_run_in_order_other_languages_do_not():
    blocks = code_blocks(REPLY)
    assert [b.lang for b in blocks] == ["repl", "python"]
    assert blocks[0].code == 'x = "FINAL(not this)"\nprint(x)'
    assert blocks[1].code == 'print("```")'


def test_final_words_inside_code_strings_and_sentences_are_not_answers():
    assert final_answer(REPLY) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("FINAL(42)", FinalAnswer("FINAL", "42")),
        ("Done.\nFINAL('Paris')\n", FinalAnswer("FINAL", "Paris")),
        ('  FINAL("a (tricky) answer")', FinalAnswer("FINAL", "a (tricky) answer")),
        ("FINAL(two\nlines)", FinalAnswer("FINAL", "two\nlines")),
        ("FINAL_VAR(result)", FinalAnswer("FINAL_VAR", "result")),
        ('FINAL_VAR("result")', FinalAnswer("FINAL_VAR", "result")),
        ("FINAL(1)\nthen\nFINAL(2)", FinalAnswer("FINAL", "2")),
    ],
)
def test_final_on_its_own_line(text, expected):
    assert final_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "FINAL(42) and more words",
        "```repl\nFINAL(1)\n```",
        "`FINAL(1)`",
        "FINAL(unclosed",
        "```\nFINAL(inside an unclosed fence)\n",
    ],
)
def test_not_a_final_answer(text):
    assert final_answer(text) is None


def test_unclosed_fence_is_not_run():
    assert code_blocks("```repl\nprint(1)\n") == []


def test_prose_replaces_blocks_with_markers():
    text = prose(REPLY, lambda n: f"[cell {n}]")
    assert "[cell 1]" in text and "[cell 2]" in text
    assert "print(x)" not in text
    assert 'console.log("not python")' in text  # not run, so it stays in the prose
