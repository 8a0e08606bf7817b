"""A recorded run tree for tests: a root, four children and one grandchild, on scripted models.

The root splits its context into four chunks and asks four children (``rlm_query_batched``) to
count the apples in each; the first child hands its chunk on to a grandchild (``rlm_query``), which
asks the sub-model once. Every answer is computed by the code in the kernels.
"""

from __future__ import annotations

from pathlib import Path

from rlm_kernel import RLM
from rlm_kernel.types import Completion, Usage

WORDS = ("apple", "pear", "plum", "fig")
CONTEXT = " ".join(WORDS[(i * 7 + i // 3) % 4] for i in range(400))
APPLES = CONTEXT.split().count("apple")
PRICE = 0.001  # dollars per call of the scripted models


class TreeModel:
    """A priced model that plays by the question it is asked, whichever run of the tree asks."""

    name = "scripted:tree"

    async def complete(self, messages, *, max_tokens):
        question = messages[1]["content"]
        replies = sum(m["role"] == "assistant" for m in messages)
        usage = Usage(calls=1, input_tokens=100, output_tokens=10)
        return Completion(
            text=self.reply(question, replies), model=self.name, usage=usage, cost_usd=PRICE
        )

    def reply(self, question: str, replies: int) -> str:
        if "grandchild" in question:
            return (
                "```repl\nnote = llm_query('say ok')\nprint(note)\n"
                "n = context.split().count('apple')\n```\nFINAL_VAR(n)"
            )
        if "chunk 0" in question:
            return (
                "```repl\nn = int(rlm_query('count apples (grandchild)', context=context))\n"
                "print(n)\n```\nFINAL_VAR(n)"
            )
        if "chunk" in question:
            return "```repl\nn = context.split().count('apple')\n```\nFINAL_VAR(n)"
        if replies == 0:
            return (
                "```repl\nwords = context.split()\nq = len(words) // 4\n"
                "ends = [q, 2 * q, 3 * q, None]\n"
                "chunks = [' '.join(words[i * q:ends[i]]) for i in range(4)]\n"
                "counts = rlm_query_batched([f'count apples in chunk {i}' for i in range(4)], "
                "contexts=chunks)\nprint(counts)\ntotal = sum(int(c) for c in counts)\n```"
            )
        return "FINAL_VAR(total)"


class SubModel:
    name = "scripted:sub"

    async def complete(self, messages, *, max_tokens):
        usage = Usage(calls=1, input_tokens=20, output_tokens=2)
        return Completion(text="ok", model=self.name, usage=usage, cost_usd=PRICE / 2)


def record_tree(folder: Path) -> Path:
    """Run the tree (real kernels) with its root notebook at ``folder/root.ipynb``."""
    root = folder / "root.ipynb"
    result = RLM(TreeModel(), SubModel(), max_depth=3).run(
        "How many apples?", CONTEXT, notebook=root
    )
    assert (result.status, result.answer) == ("answered", str(APPLES)), result.error
    return root


def tree_notebooks(root: Path) -> list[Path]:
    """The root notebook and every notebook of its tree."""
    return [root, *sorted(root.with_name(f"{root.stem}.children").rglob("*.ipynb"))]
