"""What the prompt says about the context's shape, and how large a sub-call should be."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..context import ContextInfo
from ..types import Limits

CHARS_PER_TOKEN_ESTIMATE = 4  # how docs/prompt.md and the tests count a prompt's tokens

# Input context windows in tokens, by model-name prefix (the longest matching prefix wins), from
# the providers' model pages. A name is matched without its ``provider:`` part and any folder
# (``Qwen/Qwen3-Coder-480B`` → ``qwen3-coder-480b``).
CONTEXT_WINDOWS: dict[str, int] = {
    "claude-": 200_000,
    "gpt-5": 272_000,
    "gpt-4.1": 1_000_000,
    "gpt-4o": 128_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    "gemini-": 1_000_000,
    "qwen3-coder": 256_000,
    "qwen3": 128_000,
    "llama-3.1": 128_000,
    "llama-3.3": 128_000,
    "deepseek": 128_000,
    "mistral-large": 128_000,
}
DEFAULT_CONTEXT_WINDOW = 32_000  # unknown models, local ones included: assume a small window

# Sub-call sizing. Text is counted at 3 characters a token (code, JSON and non-English text run
# denser than English prose's 4), a prompt's instructions take a few thousand tokens, and the
# answer's tokens share the window. The target is a third of what fits, capped: a sub-model reads
# a 200K-character chunk well, and the RLM paper's sub-models handled about 500K.
SUBCALL_CHARS_PER_TOKEN = 3
SUBCALL_OVERHEAD_TOKENS = 2_000
MIN_SUBCALL_CHARS = 8_000
TARGET_CAP_CHARS = 200_000
BATCH_ROUNDS = 8  # a batch holds at most this many rounds of max_concurrency prompts


@dataclass(frozen=True)
class Sizing:
    """How much text one sub-call should carry, derived from the sub-model's window."""

    window_tokens: int
    window_known: bool
    max_chars: int
    target_chars: int
    batch_ceiling: int


# --------------------------------------------------------------------------- sizing


def context_window(model: str) -> tuple[int, bool]:
    """The input window (tokens) of a model by name, and whether the table knows it."""
    name = model.rpartition(":")[2].rpartition("/")[2].lower()
    matches = [prefix for prefix in CONTEXT_WINDOWS if name.startswith(prefix)]
    if not matches:
        return DEFAULT_CONTEXT_WINDOW, False
    return CONTEXT_WINDOWS[max(matches, key=len)], True


def _round_down(n: float) -> int:
    """``n`` rounded down to two significant digits: 786,000 → 780,000."""
    n = int(n)
    if n < 100:
        return n
    step = 10 ** (len(str(n)) - 2)
    return n // step * step


def subcall_sizing(sub_model: str, limits: Limits) -> Sizing:
    """The per-call target and ceiling for ``sub_model``, and the prompts one batch may hold."""
    window, known = context_window(sub_model)
    usable = window - limits.sub_max_tokens - SUBCALL_OVERHEAD_TOKENS
    max_chars = max(MIN_SUBCALL_CHARS, _round_down(usable * SUBCALL_CHARS_PER_TOKEN))
    target = _round_down(min(max_chars / 3, TARGET_CAP_CHARS))
    return Sizing(window, known, max_chars, target, BATCH_ROUNDS * limits.max_concurrency)


# --------------------------------------------------------------------------- the context


def fence(text: str) -> str:
    """A backtick fence longer than any run of backticks in ``text``."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _samples(info: ContextInfo) -> str:
    if not info.samples:
        return ""
    lines = []
    for expr, text in info.samples:
        lines.append(f">>> print({expr})" if info.type == "str" else f">>> {expr}")
        lines.append(text)
    body = "\n".join(lines)
    bar = fence(body)
    return f"\n{bar}text\n{body}\n{bar}"


def _elements(info: ContextInfo) -> str:
    types = info.element_types
    noun = "value" if info.type == "dict" else "element"
    if not types:
        return ""
    if len(types) == 1:
        kind = types[0][0]
        if kind == "dict" and info.common_keys:
            keys = ", ".join(repr(k) for k in info.common_keys)
            return f" Each {noun} is a dict with the keys {keys}."
        return f" Each {noun} is a {kind}."
    counts = ", ".join(f"{count:,} {kind}" for kind, count in types)
    return f" Element types: {counts}."


def _lengths(info: ContextInfo, noun: str) -> str:
    if info.length_stats is None:
        return ""
    low, median, high = info.length_stats
    first = ", ".join(f"{n:,}" for n in info.lengths[:10])
    more = ", ..." if (info.items or 0) > 10 else ""
    return (
        f" {noun.capitalize()} lengths in characters: min {low:,}, median {median:,}, max {high:,} "
        f"(first: {first}{more})."
    )


def _fit(chars: int, sizing: Sizing, max_output_chars: int) -> str:
    target = sizing.target_chars
    if chars == 0:
        return "It is empty."
    if chars <= max_output_chars // 2:
        return "It is small: print it whole and read it yourself; sub-calls are not needed."
    if chars <= target:
        return f"It fits in one sub-call (the target is about {target:,} characters per call)."
    calls = math.ceil(chars / target)
    if calls <= BATCH_ROUNDS:
        return (
            f"It is about {calls} sub-calls' worth at about {target:,} characters each: one "
            "`llm_query_batched` can read all of it if the question needs that."
        )
    return (
        f"It is far larger than one sub-call: reading it all would take about {calls:,} calls "
        f"of about {target:,} characters, so filter it with code first and send sub-models only "
        "the parts that matter."
    )


def describe_context(info: ContextInfo, sizing: Sizing, *, max_output_chars: int) -> str:
    """What the model is told about ``context``: type, sizes, shape, fit and a short preview."""
    chars = info.text_chars
    tokens = math.ceil(chars / CHARS_PER_TOKEN_ESTIMATE)
    size = f"{chars:,} characters (about {tokens:,} tokens)"
    if info.type == "str":
        where = ", read from a text file" if info.origin == "text_file" else ""
        head = f"`context` is a str of {size}{where}."
    else:
        n = info.items or 0
        noun = "value" if info.type == "dict" else "element"
        counted_as = _plural(n, "entry" if noun == "value" else noun)
        head = f"`context` is a {info.type} of {n:,} {counted_as}"
        if info.origin == "files":
            names = ", ".join(info.file_names[:10]) + (", ..." if len(info.file_names) > 10 else "")
            head += f": the contents of the files given, in order ({names})."
        elif info.origin == "directory":
            head += (
                " read from a directory: each key is a file's path relative to it, each value "
                "the file's text."
            )
        else:
            head += " read from a JSON file." if info.origin == "json_file" else "."
        all_str = info.element_types in ((), (("str", n),))
        counted = "" if all_str else ": a str by its length, anything else as its JSON text"
        head += f" Its {noun}s hold {size} in all{counted}."
        head += _elements(info) + _lengths(info, noun)
        if info.type == "dict" and info.key_sample:
            shown = list(info.key_sample)
            if n > len(shown):
                shown.insert(len(shown) - 2, "...")
            head += " Keys: " + ", ".join(k if k == "..." else repr(k) for k in shown) + "."
    return f"{head} {_fit(chars, sizing, max_output_chars)}{_samples(info)}"


def _plural(n: int, noun: str) -> str:
    if n == 1:
        return noun
    return noun[:-1] + "ies" if noun.endswith("y") else noun + "s"


def sizing_text(sizing: Sizing, sub_model: str) -> str:
    window = (
        f"its window is {sizing.window_tokens:,} tokens"
        if sizing.window_known
        else "its window is not known, so a small one is assumed"
    )
    records = math.ceil(2_000_000 / sizing.target_chars)
    return (
        f"{sub_model} reads at most about {sizing.max_chars:,} characters per call ({window}). "
        f"Aim for about {sizing.target_chars:,} characters per prompt: a few large prompts are "
        "faster and cheaper than many small ones, and see more at once. Never send one prompt "
        "per line, record or short item; group items until a prompt nears the target (2,000,000 "
        f"characters of records make about {records:,} prompts, not one per record). Put at most "
        f"{sizing.batch_ceiling:,} prompts in one `llm_query_batched`; needing more means "
        "filtering with code first, or grouping more. If all that matters fits in one prompt, "
        "make one `llm_query`."
    )


_REGEX_EXAMPLE = {
    "str": """\
import re
hits = [m.start() for m in re.finditer(r"(?i)refund", context)]
print(len(hits))
for at in hits[:3]:
    print(repr(context[max(0, at - 150):at + 150]))""",
    "list": """\
import re
hits = [i for i, x in enumerate(context) if re.search(r"(?i)refund", str(x))]
print(len(hits), hits[:10])
print(str(context[hits[0]])[:300] if hits else "none")""",
    "dict": """\
import re
hits = [k for k, v in context.items() if re.search(r"(?i)refund", str(v))]
print(len(hits), hits[:10])""",
}

_CHUNK_EXAMPLE = {
    "str": """\
size = {chunk_chars}
parts = [context[i:i + size] for i in range(0, len(context), size)]""",
    "list": """\
import json
per = {per}  # elements per prompt, about {chunk_chars} characters
parts = [
    "\\n".join(x if isinstance(x, str) else json.dumps(x) for x in context[i:i + per])
    for i in range(0, len(context), per)
]""",
    "dict": """\
items = list(context.items())
per = {per}  # entries per prompt, about {chunk_chars} characters
parts = [
    "\\n\\n".join(f"=== {k} ===\\n{v}" for k, v in items[i:i + per])
    for i in range(0, len(items), per)
]""",
}

_COMBINE_EXAMPLE = """\
question = "Which tickets report a billing problem?"
prompts = [
    "Read the text below and answer the question about it.\\n"
    f"Question: {question}\\n"
    "Reply with the matching ticket ids, one per line, or NONE; nothing else.\\n\\n" + part
    for part in parts
]
print(len(prompts), max(map(len, prompts)))
replies = llm_query_batched(prompts)
ids = sorted({line.strip() for r in replies for line in r.splitlines()} - {"", "NONE"})
result = "\\n".join(ids)
print(len(ids), ids[:10])"""


def examples(info: ContextInfo, sizing: Sizing) -> str:
    average = info.text_chars / max(1, info.items or 1)
    per = max(1, _round_down(sizing.target_chars / max(1.0, average)))
    chunk = _fill(
        _CHUNK_EXAMPLE[info.type],
        {"chunk_chars": f"{sizing.target_chars:_}", "per": f"{per:,}".replace(",", "_")},
    )
    return (
        "Regex first, for what a pattern can find:\n"
        f"```repl\n{_REGEX_EXAMPLE[info.type]}\n```\n"
        "Chunk, batch and combine, for what needs reading (the sub-prompt gives the "
        "instruction, the question, the text and a terse format to parse):\n"
        f"```repl\n{chunk}\n{_COMBINE_EXAMPLE}\n```\n"
        "Then, once the printed counts look right:\nFINAL_VAR(result)"
    )


def _fill(template: str, values: dict[str, str]) -> str:
    pattern = re.compile(r"\{(" + "|".join(map(re.escape, values)) + r")\}")
    return pattern.sub(lambda m: values[m.group(1)], template)
