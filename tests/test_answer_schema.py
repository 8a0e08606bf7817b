"""Typed answers: the final value checked against a JSON Schema or a pydantic model.

Runs go through the real Anthropic SDK to the package's fake model server, with a scripted root
model, and run their code in real kernels.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from rlm_kernel import RLM
from rlm_kernel.answer import AnswerSchema
from rlm_kernel.cli import main
from rlm_kernel.errors import UsageError
from rlm_kernel.llm.anthropic import AnthropicLLM
from rlm_kernel.record import read
from rlm_kernel.testing import ScriptedModel
from rlm_kernel.verify import replay_notebook

ROOT, SUB = "root-model", "sub-model"
CONTEXT = "Ada Lovelace was born in 1815 and died at 36.\n"
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}

WRONG = """```repl
import json
person = {"name": "Ada", "age": "36"}
FINAL(json.dumps(person))
```"""
RIGHT = """The age must be a number.
```repl
person["age"] = int(person["age"])
FINAL(json.dumps(person))
```"""


def anthropic(name: str) -> AnthropicLLM:
    return AnthropicLLM(name, stream=False)


# --------------------------------------------------------------------------- checking


def test_a_matching_value_is_parsed_and_a_wrong_one_says_where_and_what():
    schema = AnswerSchema(PERSON)
    good = schema.check('{"name": "Ada", "age": 36}')
    assert good.ok and good.value == {"name": "Ada", "age": 36}
    bad = schema.check('{"age": "36"}')
    assert not bad.ok and bad.value is None
    assert bad.problems == [
        "at $: 'name' is a required property",
        "at $.age: '36' is not of type 'integer'",
    ]
    assert schema.check("Ada, 36").problems[0].startswith("the answer is not JSON")


def test_a_string_schema_takes_plain_text_and_nested_paths_are_shown():
    assert AnswerSchema({"type": "string"}).check("just text").value == "just text"
    items = AnswerSchema({"type": "array", "items": {"type": "object", "required": ["id"]}})
    assert items.check('[{"id": 1}, {}]').problems == ["at $[1]: 'id' is a required property"]


def test_a_pydantic_model_is_used_when_given():
    pydantic = pytest.importorskip("pydantic")

    class Person(pydantic.BaseModel):
        name: str
        age: int

    schema = AnswerSchema(Person)
    value = schema.check('{"name": "Ada", "age": 36}').value
    assert isinstance(value, Person) and value.age == 36
    problems = schema.check('{"name": "Ada", "age": "old"}').problems
    assert len(problems) == 1 and problems[0].startswith("at $.age: ")
    assert schema.to_metadata()["json_schema"]["required"] == ["name", "age"]


def test_bad_schemas_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="not valid JSON Schema"):
        AnswerSchema({"type": "no-such-type"})
    with pytest.raises(UsageError, match="a JSON Schema"):
        AnswerSchema(["not", "a", "schema"])  # type: ignore[arg-type]
    broken = tmp_path / "s.json"
    broken.write_text("{nope")
    with pytest.raises(UsageError, match="is not JSON"):
        AnswerSchema.from_file(broken)
    with pytest.raises(UsageError, match="cannot read"):
        AnswerSchema.from_file(tmp_path / "absent.json")


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def retried(tmp_path_factory):
    """A run whose first FINAL violates the schema and whose second matches it."""
    from rlm_kernel.testing import FakeModelServer

    path = tmp_path_factory.mktemp("schema") / "run.ipynb"
    with FakeModelServer() as server, server.environment():
        root = ScriptedModel([WRONG, RIGHT])
        server.add_model(ROOT, root)
        server.add_model(SUB, lambda messages: "unused")
        rlm = RLM(anthropic(ROOT), anthropic(SUB), max_depth=1)
        result = rlm.run("Who is this, and how old?", CONTEXT, notebook=path, answer_schema=PERSON)
    return {"result": result, "path": path, "root": root}


def test_a_first_final_that_violates_the_schema_is_retried_to_a_valid_object(retried):
    result = retried["result"]
    assert result.status == "answered", result.error
    assert result.steps == 2  # the retry is a step
    assert result.value == {"name": "Ada", "age": 36}
    assert json.loads(result.answer) == result.value
    assert result.to_dict()["value"] == {"name": "Ada", "age": 36}


def test_the_model_is_told_exactly_what_failed(retried):
    calls = retried["root"].calls
    assert '"age"' in calls[0][0]["content"]  # the schema is in the system prompt
    told = calls[1][-1]["content"]
    assert "rejected" in told and "at $.age: '36' is not of type 'integer'" in told


def test_the_notebook_records_the_schema_and_the_failed_attempt(retried):
    nb = nbformat.read(retried["path"], as_version=4)
    nbformat.validate(nb)
    run = read(retried["path"])
    assert run.run.extra["answer_schema"]["json_schema"] == PERSON
    step1 = run.steps[0]
    assert step1.extra["answer_rejected"]["value"] == '{"name": "Ada", "age": "36"}'
    assert step1.extra["answer_rejected"]["problems"] == ["at $.age: '36' is not of type 'integer'"]
    notes = [c for c in nb.cells if "rlm-answer-rejected" in c.metadata.get("tags", [])]
    assert len(notes) == 1 and "'36' is not of type 'integer'" in notes[0].source
    assert "answer_rejected" not in run.steps[1].extra


def test_replay_reproduces_the_retry(retried):
    report = replay_notebook(retried["path"])
    assert report.own_status == "reproduced", [c.result for c in report.cells]
    assert json.loads(report.answer) == {"name": "Ada", "age": 36}


def test_a_fork_after_the_rejection_tells_the_model_again(retried, fake_model_server, tmp_path):
    root = ScriptedModel([RIGHT])
    fake_model_server.add_model(ROOT, root)
    fake_model_server.add_model(SUB, lambda messages: "unused")
    rlm = RLM(anthropic(ROOT), anthropic(SUB), max_depth=1)
    result = rlm.resume(retried["path"], 2, out=tmp_path / "fork.ipynb")
    assert result.status == "answered", result.error
    assert result.value == {"name": "Ada", "age": 36}  # the recorded schema still applies
    assert "'36' is not of type 'integer'" in root.calls[0][-1]["content"]


def test_a_last_reply_that_still_violates_the_schema_is_no_answer(fake_model_server, tmp_path):
    last = 'Still:\nFINAL({"name": "Ada", "age": "36"})'
    fake_model_server.add_model(ROOT, ScriptedModel([WRONG, last]))
    fake_model_server.add_model(SUB, lambda messages: "unused")
    rlm = RLM(anthropic(ROOT), anthropic(SUB), max_depth=1, max_steps=1)
    result = rlm.run("How old?", CONTEXT, notebook=tmp_path / "r.ipynb", answer_schema=PERSON)
    assert result.status == "no_answer" and result.value is None
    assert [s.step for s in read(tmp_path / "r.ipynb").steps if "answer_rejected" in s.extra] == [
        1,
        2,
    ]


def test_the_cli_takes_a_schema_file(fake_model_server, tmp_path, capsys):
    fake_model_server.add_model(ROOT, ScriptedModel([WRONG, RIGHT]))
    fake_model_server.add_model(SUB, lambda messages: "unused")
    (tmp_path / "ctx.txt").write_text(CONTEXT)
    (tmp_path / "person.json").write_text(json.dumps(PERSON))
    code = main(
        [
            "run",
            "--question", "Who?",
            "--context", str(tmp_path / "ctx.txt"),
            "--model", f"anthropic:{ROOT}",
            "--sub-model", f"anthropic:{SUB}",
            "--answer-schema", str(tmp_path / "person.json"),
            "--max-depth", "1",
            "--out", str(tmp_path / "run.ipynb"),
            "--json",
        ]
    )  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["value"] == {"name": "Ada", "age": 36} and out["steps"] == 2


def test_a_bad_schema_file_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "ctx.txt").write_text(CONTEXT)
    bad: Path = tmp_path / "bad.json"
    bad.write_text('{"type": 5}')
    argv = ["run", "--question", "q", "--context", str(tmp_path / "ctx.txt")]
    assert main([*argv, "--answer-schema", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not valid JSON Schema" in err and len(err.strip().splitlines()) == 1
