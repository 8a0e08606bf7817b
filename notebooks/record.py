"""Re-record the example notebooks in this folder with scripted models.

    python notebooks/record.py            # every notebook
    python notebooks/record.py needle-search label-counting

Each recorded run is a real rlm-kernel run: a real Jupyter kernel runs the code, the real
``anthropic`` SDK talks over HTTP to ``rlm_kernel.testing.FakeModelServer``, and rlm-kernel writes
the notebook. Only the models are scripted: the root model's replies are the fixed texts below
(code written in advance) and the sub-model is a small rule-based function that reads each
prompt. The answers are computed by that code from the context files in ``data/``, which this
script also writes (deterministically). After recording, a markdown cell saying so is inserted
right after the summary, and every notebook is replayed to check that it still reproduces.

``replay-and-fork.ipynb`` is a walk-through written here cell by cell and executed with nbclient,
so the committed copy shows its outputs. Needs the ``test`` extra (nbclient); no API key.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nbclient
import nbformat

from rlm_kernel import RLM, demo
from rlm_kernel.verify import replay_notebook
from rlm_kernel.testing import FakeModelServer, ScriptedModel

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
ROOT_MODEL = "claude-scripted-root"
SUB_MODEL = "claude-scripted-sub"
NOTE = (
    "**Recorded with scripted models (rlm-kernel's fake model API); see notebooks/record.py.** "
    "The root model's replies are code written in advance and the sub-model is a small "
    "rule-based function, served over the real Anthropic API by "
    "`rlm_kernel.testing.FakeModelServer`; the kernel, its outputs and the answer are real. "
    "*Run > Run All Cells* replays the run without an API key: the next cell loads the context "
    "from `{context}` and answers every sub-model call from the responses recorded here."
)
NOTE_TAG = "rlm-example-note"

Reply = str | Callable[[list[dict]], str]


@dataclass(frozen=True)
class Example:
    """One recorded run: the notebook, its context file and the scripted models."""

    name: str
    question: str
    context: str  # file name under data/
    write_context: Callable[[Path], None]
    root: tuple[Reply, ...]
    sub: Callable[[list[dict]], str] | None = None
    extra: str = ""  # more markdown for the note cell


def last_shown(messages: list[dict]) -> str:
    """What the root model was shown after its previous reply."""
    return messages[-1]["content"]


# -- quickstart: the demo's question over a smaller file ----------------------------------------

QUICKSTART_EXTRA = """

## Run it yourself, with a real model

The code below is for your terminal, not for this notebook (which replays without a key).
Install rlm-kernel (from a clone of its repository until it is published) and set an
Anthropic key; the demo then asks real Claude models the question
of this notebook over a generated file of 3,000 tickets:

```bash
pip install .                           # in the clone of the repository
export ANTHROPIC_API_KEY=...
rlm-kernel demo --dir rlm-demo          # writes rlm-demo/demo-run.ipynb
rlm-kernel run --question "Which customer reports the most billing problems?" \\
               --context notebooks/data/tickets.txt --out runs/billing.ipynb
```

From Python (in a notebook, `await rlm.arun(...)` is the same call):

```python
from pathlib import Path
from rlm_kernel import RLM

rlm = RLM(model="anthropic:claude-sonnet-5-5", sub_model="anthropic:claude-haiku-5-5")
result = rlm.run("Which customer reports the most billing problems?",
                 context=Path("data/tickets.txt"), notebook="runs/billing.ipynb")
print(result.answer, result.cost_usd)
```

Every run writes a notebook like this one. `rlm-kernel replay RUN.ipynb` checks that it
reproduces, and `rlm-kernel bundle RUN.ipynb DIR` makes a folder to share it (see
docs/sharing.md)."""


def write_tickets(path: Path) -> None:
    demo.generate_tickets(path, n=250, seed=7)


# -- needle search with a regular expression ----------------------------------------------------

_WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "zeta"]


def write_haystack(path: Path) -> None:
    rng = random.Random(1)
    lines = [" ".join(rng.choices(_WORDS, k=10)) for _ in range(500)]
    lines.insert(rng.randrange(len(lines)), "Note to self: the magic number is 770421.")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


NEEDLE_STEP_1 = """\
The context is too long to read line by line; a regular expression finds the sentence.

```repl
import re
print(len(context), "characters,", context.count("\\n"), "lines")
hits = [(m.start(), m.group(0)) for m in re.finditer(r"magic number is \\d+", context)]
print(hits)
```
"""


def needle_step_2(messages: list[dict]) -> str:
    hits = re.findall(r"\((\d+), 'magic number is \d+'\)", last_shown(messages))
    where = f"at character {hits[0]}" if len(hits) == 1 else f"{len(hits)} times"
    return (
        f"The sentence occurs {where}. I'll take the number from it.\n\n"
        "```repl\nmagic = re.search(r'magic number is (\\d+)', context).group(1)\n"
        "print(magic)\n```\n\nFINAL_VAR(magic)\n"
    )


# -- batched sub-calls --------------------------------------------------------------------------


def write_codes(path: Path) -> None:
    rng = random.Random(2)
    lines = [" ".join(rng.choices(_WORDS, k=10)) for _ in range(560)]
    lines.insert(rng.randrange(len(lines)), "Memo: the secret code: QXZ-4821. Tell no one.")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


BATCHED_STEP_1 = """\
I'll split the text into chunks of 5,000 characters and let the sub-model read them all at \
once with one batched call.

```repl
chunks = [context[i:i + 5000] for i in range(0, len(context), 5000)]
prompts = ["Reply with the secret code in this text, or NONE.\\n\\n" + c for c in chunks]
answers = llm_query_batched(prompts)
hits = [(i, a) for i, a in enumerate(answers) if a != "NONE"]
print(len(chunks), "chunks; found:", hits)
```
"""

BATCHED_STEP_2 = """\
Exactly one chunk holds a code.

```repl
FINAL(hits[0][1])
```
"""

_SECRET = re.compile(r"secret code: ([A-Z]{3}-\d{4})")


def find_code(messages: list[dict]) -> str:
    """The sub-model: reads one chunk, answers with its secret code or NONE."""
    found = _SECRET.findall(messages[-1]["content"])
    return found[0] if found else "NONE"


# -- aggregation: labels from sub-calls, counted, answered through the `answer` dict ------------

POSITIVE = ["loved it", "great value", "works perfectly", "would buy again"]
NEGATIVE = ["broke at once", "waste of money", "stopped working", "arrived damaged"]


def write_reviews(path: Path) -> None:
    rng = random.Random(3)
    lines = []
    for i in range(1, 1001):
        phrases = POSITIVE if rng.random() < 0.62 else NEGATIVE
        lines.append(f"review {i}: {rng.choice(phrases)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


LABELS_STEP_1 = """\
One review per line, it seems. Let me check.

```repl
lines = context.splitlines()
print(len(lines), "lines")
print(lines[:3])
```
"""

LABELS_STEP_2 = """\
Whether a review is positive needs reading, so the sub-model labels them, 250 per call; the \
counting is done here.

```repl
from collections import Counter

batches = ["\\n".join(lines[i:i + 250]) for i in range(0, len(lines), 250)]
labels = llm_query_batched(
    ["Label each review positive or negative, one label per line.\\n\\n" + b for b in batches]
)
counts = Counter(label for reply in labels for label in reply.splitlines())
print(counts)
assert sum(counts.values()) == len(lines)
answer["content"] = f"{counts['positive']} positive and {counts['negative']} negative reviews"
answer["ready"] = True
```
"""


def label_reviews(messages: list[dict]) -> str:
    """The sub-model: one label per review line of the prompt."""
    labels = []
    for line in messages[-1]["content"].splitlines():
        if line.startswith("review "):
            text = line.split(": ", 1)[1]
            labels.append("positive" if text in POSITIVE else "negative")
    return "\n".join(labels)


EXAMPLES = [
    Example(
        name="quickstart",
        question=demo.QUESTION,
        context="tickets.txt",
        write_context=write_tickets,
        root=demo.SCRIPTED_ROOT_REPLIES,
        sub=demo.rule_sub_model,
        extra=QUICKSTART_EXTRA,
    ),
    Example(
        name="needle-search",
        question="What is the magic number hidden in the text?",
        context="haystack.txt",
        write_context=write_haystack,
        root=(NEEDLE_STEP_1, needle_step_2),
    ),
    Example(
        name="batched-subcalls",
        question="Find the secret code.",
        context="codes.txt",
        write_context=write_codes,
        root=(BATCHED_STEP_1, BATCHED_STEP_2),
        sub=find_code,
    ),
    Example(
        name="label-counting",
        question="How many reviews are positive and how many are negative?",
        context="reviews.txt",
        write_context=write_reviews,
        root=(LABELS_STEP_1, LABELS_STEP_2),
        sub=label_reviews,
    ),
]


def _unused_sub(messages: list[dict]) -> str:
    raise AssertionError("this example's script makes no sub-calls")


def record(example: Example) -> Path:
    """Record one example run, add the note cell, and check that it replays."""
    DATA.mkdir(exist_ok=True)
    context = DATA / example.context
    example.write_context(context)
    models = {ROOT_MODEL: ScriptedModel(example.root), SUB_MODEL: example.sub or _unused_sub}
    target = HERE / f"{example.name}.ipynb"
    with FakeModelServer(models) as server, server.environment():
        rlm = RLM(f"anthropic:{ROOT_MODEL}", f"anthropic:{SUB_MODEL}")
        result = rlm.run(example.question, context=context, notebook=target)
    if result.status != "answered":
        raise SystemExit(f"{target.name}: the run ended {result.status}: {result.error}")
    add_note(target, NOTE.format(context=f"data/{example.context}") + example.extra)
    check_replay(target)
    return target


def add_note(path: Path, text: str) -> None:
    """Insert the scripted-model note right after the summary cell, then validate and save."""
    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if NOTE_TAG not in c.metadata.get("tags", [])]
    summary = next(i for i, c in enumerate(nb.cells) if "rlm-summary" in c.metadata.get("tags", []))
    note = nbformat.v4.new_markdown_cell(text, metadata={"tags": [NOTE_TAG]})
    nb.cells.insert(summary + 1, note)
    nbformat.validate(nb)
    nbformat.write(nb, str(path))


def check_replay(path: Path) -> None:
    report = replay_notebook(path)
    print(f"{path.name}: {report.summary()}", file=sys.stderr)
    if report.status != "reproduced":
        raise SystemExit(f"{path.name} does not reproduce after recording")


# -- the walk-through ---------------------------------------------------------------------------

WALKTHROUGH = [
    (
        "markdown",
        """# Replay and fork a recorded run

This notebook replays the recorded runs beside it, changes one, and forks one from a step with
other models. **The runs were recorded with scripted models (rlm-kernel's fake model API); see
notebooks/record.py.** Everything here runs without an API key: replay answers every sub-call
from the record, and the fork below is answered by two small Python functions standing in for the
root model and the sub-model.""",
    ),
    ("markdown", "## 1. What a run notebook holds"),
    (
        "code",
        """import nbformat

run = nbformat.read("label-counting.ipynb", as_version=4)
meta = run.metadata.rlm
print("question:", meta["question"])
print("answer:  ", meta["answer"])
print("models:  ", meta["models"]["root"], "/", meta["models"]["sub"])
print("context: ", meta["context"]["path"], "sha256", meta["context"]["sha256"][:12])
for cell in run.cells:
    rlm = cell.metadata.get("rlm", {})
    if cell.cell_type == "code" and "step" in rlm:
        calls = len(rlm["subcalls"])
        print(f"cell {rlm['step']}.{rlm['block']}: {rlm['exec']['status']}, {calls} sub-calls")""",
    ),
    (
        "markdown",
        """## 2. Replay from the command line

`rlm-kernel replay RUN.ipynb` runs the recorded code again in a fresh kernel, answers each
sub-call from the record, and compares every cell and the answer. In a terminal that is just
`rlm-kernel replay needle-search.ipynb`; here it runs with this kernel's Python, so it uses the
same installation.""",
    ),
    (
        "code",
        """import subprocess
import sys

done = subprocess.run(
    [sys.executable, "-m", "rlm_kernel", "replay", "needle-search.ipynb"],
    capture_output=True,
    text=True,
)
print(done.stderr)
assert done.returncode == 0, done.stderr""",
    ),
    ("markdown", "## 3. Replay from Python"),
    (
        "code",
        """from rlm_kernel.verify import replay_notebook

report = replay_notebook("label-counting.ipynb")
for cell in report.cells:
    print(cell.render())
print(report.summary())
assert report.status == "reproduced"
""",
    ),
    (
        "markdown",
        """## 4. Change a recorded response and see what follows

`bundle_run` (the `rlm-kernel bundle` command) copies the run and its context into a folder of
its own, ready to share; here it gives us a copy to edit. One label in the first recorded
sub-call response is flipped, and the replay shows which cells change.""",
    ),
    (
        "code",
        """import json
import tempfile
from pathlib import Path

from rlm_kernel.bundle import bundle_run

work = Path(tempfile.mkdtemp(prefix="rlm-walkthrough-"))
shared = bundle_run("label-counting.ipynb", work / "shared")
print(sorted(p.relative_to(shared.dir).as_posix() for p in shared.dir.rglob("*") if p.is_file()))

data = json.loads(shared.notebook.read_text())
cell = next(c for c in data["cells"] if c["metadata"].get("rlm", {}).get("subcalls"))
first = cell["metadata"]["rlm"]["subcalls"][0]
first["response"] = first["response"].replace("negative", "positive", 1)
shared.notebook.write_text(json.dumps(data, indent=1))

edited = replay_notebook(shared.notebook)
for c in edited.cells:
    print(c.render())
print(edited.summary())
assert edited.status == "differs"
""",
    ),
    (
        "markdown",
        """## 5. Fork the run at step 2 with other models

`RLM.resume(notebook, from_step=K)` rebuilds the kernel's state by replaying steps 1 to K-1
from the record (so `lines` from step 1 exists again), rebuilds the root model's conversation,
and continues live from step K with the models you give. Here they are plain functions: a model
is any callable `(messages) -> str`. With a key you would pass `"anthropic:..."` names instead
(or use `rlm-kernel resume RUN.ipynb --from-step 2`).""",
    ),
    (
        "code",
        '''from rlm_kernel import RLM

POSITIVE = ("loved it", "great value", "works perfectly", "would buy again")


def root(messages):
    """A stand-in root model: a different plan for step 2 (bigger batches, a share)."""
    return """I'll label the reviews 400 at a time and report the share of positive ones.

```repl
from collections import Counter

batches = ["\\\\n".join(lines[i:i + 400]) for i in range(0, len(lines), 400)]
prompts = ["Label each review positive or negative.\\\\n\\\\n" + b for b in batches]
replies = llm_query_batched(prompts)
counts = Counter(label for reply in replies for label in reply.splitlines())
share = f"{counts['positive'] / len(lines):.0%} of {len(lines)} reviews are positive"
print(len(batches), "batches;", counts, share)
```

FINAL_VAR(share)"""


def sub(messages):
    """A stand-in sub-model: one label per review line of the prompt."""
    reviews = [line.split(": ", 1)[1] for line in messages[-1]["content"].splitlines()
               if line.startswith("review ")]
    return "\\n".join("positive" if r in POSITIVE else "negative" for r in reviews)


fork = RLM(root, sub).resume("label-counting.ipynb", from_step=2, out=work / "fork.ipynb")
parent = nbformat.read(fork.notebook, as_version=4).metadata.rlm["parent"]
print(fork.status, "·", fork.answer)
print("forked from run", parent["run_id"], "at step", parent["step"])
assert fork.status == "answered" and parent["step"] == 2''',
    ),
    (
        "markdown",
        "The fork is a run notebook like any other: it replays, and it can be bundled and shared.",
    ),
    (
        "code",
        """import shutil

again = replay_notebook(fork.notebook)
print(again.summary())
assert again.status == "reproduced"
shutil.rmtree(work)""",
    ),
]


def write_walkthrough() -> Path:
    """Write replay-and-fork.ipynb and execute it here, so the saved copy shows its outputs."""
    cells = [
        nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src)
        for kind, src in WALKTHROUGH
    ]
    nb = nbformat.v4.new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
    )
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
    ).execute()
    nbformat.validate(nb)
    path = HERE / "replay-and-fork.ipynb"
    nbformat.write(nb, str(path))
    print(f"{path.name}: executed without errors", file=sys.stderr)
    return path


def main(argv: list[str] | None = None) -> int:
    names = [e.name for e in EXAMPLES] + ["replay-and-fork"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"notebooks to re-record: {', '.join(names)}")
    chosen = parser.parse_args(argv).names or names
    if unknown := sorted(set(chosen) - set(names)):
        parser.error(f"no example named {', '.join(unknown)}; choose from {', '.join(names)}")
    for example in EXAMPLES:
        if example.name in chosen:
            record(example)
    if "replay-and-fork" in chosen:
        write_walkthrough()  # last: it reads the recorded runs
    return 0


if __name__ == "__main__":
    sys.exit(main())
