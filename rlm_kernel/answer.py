"""Typed answers: a run's final value checked against a JSON Schema or a pydantic model.

``RLM.run(..., answer_schema=...)`` takes a JSON Schema (a dict, checked with ``jsonschema``)
or a pydantic model class (checked with pydantic itself, when the user has it; rlm-kernel does
not depend on it). The final value is read as JSON when it is a string that holds JSON (a
schema of type ``string`` also takes plain text), then validated. Each problem is reported with
the path it is at, so the model can be told exactly what to fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import UsageError

__all__ = ["AnswerSchema", "Checked", "SchemaInput"]

SchemaInput = Mapping[str, Any] | type | None
MAX_PROBLEMS = 10


class Checked:
    """What checking one final value found.

    Attributes:
        value: the parsed object (a pydantic model instance for a pydantic schema), or
            ``None`` when the value does not match.
        problems: one line per problem (``at $.items[0].price: ...``); empty when it matches.
    """

    def __init__(self, value: Any, problems: list[str]) -> None:
        self.value = value
        self.problems = problems

    @property
    def ok(self) -> bool:
        """Whether the value matches the schema."""
        return not self.problems


def _path(parts: Any) -> str:
    text = "$"
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


class AnswerSchema:
    """The schema a run's final value must match.

    Args:
        schema: a JSON Schema (a dict) or a pydantic model class.

    Raises:
        UsageError: the schema is neither, or is not a valid JSON Schema.
    """

    def __init__(self, schema: Mapping[str, Any] | type) -> None:
        self._model: Any = None
        if isinstance(schema, type) and hasattr(schema, "model_validate_json"):
            self._model = schema
            self.json_schema: dict[str, Any] = dict(schema.model_json_schema())
            self.name = schema.__name__
        elif isinstance(schema, Mapping):
            self.json_schema = dict(schema)
            self.name = str(schema.get("title") or "the answer schema")
        else:
            raise UsageError(
                "answer_schema must be a JSON Schema (a dict) or a pydantic model class, "
                f"not {type(schema).__name__}"
            )
        self._validator: Any = None
        if self._model is None:
            import jsonschema

            cls = jsonschema.validators.validator_for(self.json_schema)
            try:
                cls.check_schema(self.json_schema)
            except jsonschema.SchemaError as e:
                where = _path(e.absolute_path)
                raise UsageError(
                    f"the answer schema is not valid JSON Schema at {where}: {e.message}"
                ) from None
            self._validator = cls(self.json_schema)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> AnswerSchema:
        """Read a JSON Schema file (``--answer-schema``).

        Raises:
            UsageError: the file cannot be read, is not JSON, or is not a valid schema.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot read the answer schema {path}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise UsageError(f"the answer schema {path} is not UTF-8 text") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(
                f"the answer schema {path} is not JSON: {e.msg} (line {e.lineno}, column {e.colno})"
            ) from None
        if not isinstance(data, dict):
            raise UsageError(
                f"the answer schema {path} must hold a JSON object, not a {type(data).__name__}"
            )
        return cls(data)

    @classmethod
    def of(cls, schema: SchemaInput | AnswerSchema) -> AnswerSchema | None:
        """``schema`` as an :class:`AnswerSchema` (``None`` stays ``None``)."""
        if schema is None or isinstance(schema, AnswerSchema):
            return schema
        return cls(schema)

    def to_metadata(self) -> dict[str, Any]:
        """What the notebook keeps: the JSON Schema, and the pydantic model's name if any."""
        data: dict[str, Any] = {"json_schema": self.json_schema}
        if self._model is not None:
            data["pydantic_model"] = f"{self._model.__module__}.{self._model.__qualname__}"
        return data

    def describe(self) -> str:
        """The schema as the prompt states it."""
        return json.dumps(self.json_schema, ensure_ascii=False, indent=1)

    def check(self, final: str) -> Checked:
        """Parse and validate one final value (the text ``FINAL`` sent)."""
        if self._model is not None:
            return self._check_model(final)
        try:
            data = json.loads(final)
        except ValueError as e:
            if self.json_schema.get("type") == "string":
                data = final  # plain text is a string answer
            else:
                return Checked(None, [f"the answer is not JSON ({e}); give the JSON value itself"])
        errors = sorted(self._validator.iter_errors(data), key=lambda e: list(e.absolute_path))
        problems = [f"at {_path(e.absolute_path)}: {e.message}" for e in errors]
        return Checked(data if not problems else None, _capped(problems))

    def _check_model(self, final: str) -> Checked:
        import pydantic  # present: the schema is a pydantic model

        try:
            value = self._model.model_validate_json(final)
        except pydantic.ValidationError as e:
            problems = [f"at {_path(err['loc'])}: {err['msg']}" for err in e.errors()]
            return Checked(None, _capped(problems or [str(e)]))
        return Checked(value, [])


def _capped(problems: list[str]) -> list[str]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    more = len(problems) - MAX_PROBLEMS
    return [*problems[:MAX_PROBLEMS], f"... and {more} more problem{'s' * (more != 1)}"]
