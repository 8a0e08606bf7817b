"""The kernel side of host tools: one global function per tool, which calls the host by name.

Never imported in a live kernel: the host appends this file's text to a run's setup code
(``rlm_kernel.tools.kernel_setup``), so it works wherever the runtime does (a local kernel, a
gateway, the current IPython), and it is run again when a dead kernel is restarted. Replay
calls :func:`install` directly. It runs after ``rlm_kernel.runtime`` has been installed, whose
``_rlm_call_tool`` carries each call over the bridge (or to the record, in a replay), and uses
only the standard library.

A tool is described by a JSON *spec* made on the host: ``{"name", "doc", "params": [{"name",
"kind", "annotation", "default"}], "returns"}``, where ``kind`` is an ``inspect.Parameter`` kind
name and ``default`` the ``repr`` of the default value (absent when there is none).
"""

import inspect
import json


class _Shown:
    """Stands for a default value or annotation in a tool's signature, shown as on the host."""

    def __init__(self, text):
        self._text = text

    def __repr__(self):
        return self._text


_EMPTY = inspect.Parameter.empty


def _signature(spec):
    params = []
    for p in spec.get("params") or []:
        kind = getattr(inspect.Parameter, p.get("kind") or "", None)
        if not isinstance(kind, inspect._ParameterKind):
            kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        params.append(
            inspect.Parameter(
                p["name"],
                kind,
                default=_Shown(p["default"]) if "default" in p else inspect.Parameter.empty,
                annotation=_Shown(p["annotation"]) if p.get("annotation") else _EMPTY,
            )
        )
    returns = _Shown(spec["returns"]) if spec.get("returns") else _EMPTY
    return inspect.Signature(params, return_annotation=returns)


def _stub(call, spec):
    name = spec["name"]
    signature = _signature(spec)

    def tool(*args, **kwargs):
        # Checked here, so a wrong call fails at once with Python's own message.
        signature.bind(*args, **kwargs)
        try:
            json.dumps([args, kwargs], allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"{name}: arguments must be JSON values (str, int, float, bool, None, lists, "
                f"dicts with str keys): {e}"
            ) from None
        return call(name, list(args), kwargs)

    tool.__name__ = tool.__qualname__ = name
    tool.__signature__ = signature
    doc = spec.get("doc") or ""
    tool.__doc__ = (doc + "\n\n" if doc else "") + (
        "A host tool: it runs on the host; its arguments and result are JSON. "
        "A failure in it raises ToolError (.tool, .type, .message)."
    )
    return tool


def install(namespace, specs):
    """Put one function per tool spec into ``namespace``, replacing the tools set before."""
    call = namespace["_rlm_call_tool"]
    for name in namespace.pop("_rlm_tool_names", ()):
        namespace.pop(name, None)
    names = []
    for spec in specs:
        namespace[spec["name"]] = _stub(call, spec)
        names.append(spec["name"])
    namespace["_rlm_tool_names"] = names
    installed = {n: namespace[n] for n in names}
    if names:
        installed["ToolError"] = namespace["ToolError"] = namespace["_rlm_ToolError"]
    functions = namespace.get("_rlm_functions")
    if isinstance(functions, dict):
        # SHOW_VARS lists the model's own variables, not the tools.
        functions.update(installed)
