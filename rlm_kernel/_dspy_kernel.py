"""The kernel side of the DSPy interpreter: DSPy's tools, ``SUBMIT`` and the program's inputs.

Never imported: this file's text is the first setup cell of every notebook that
``rlm_kernel.dspy`` records, so a replay defines the same functions. It runs inside the kernel
after ``rlm_kernel.runtime`` (live: connected to the host; replay: answering from the record)
and uses only the standard library.

Every tool call goes to the host through the runtime: DSPy's ``llm_query(prompt)`` as the
runtime's ``llm_query``, any other tool as the bridge's ``tool`` request (the one host tools of
``RLM(tools=...)`` use), whose answer is the JSON of the result. So each call is recorded on its
cell like a sub-call, and a replay answers it from the record by the hash of that request.
"""


def _rlm_dspy_setup(shell):
    # One closure, so the kernel's namespace gains only `_rlm_dspy` and what DSPy gave.
    import ast
    import contextlib
    import copy
    import inspect
    import json

    ns = shell.user_ns
    host = ns["_rlm_functions"]
    # DSPy's program sees its tools, SUBMIT and its inputs; rlm-kernel's own finishing functions
    # would end nothing here, so they go.
    for name in ("FINAL", "FINAL_VAR", "answer", "rlm_query", "llm_query", "llm_query_batched"):
        ns.pop(name, None)
    watch = ns.pop("_rlm_answer_watch", None)
    if watch is not None:
        with contextlib.suppress(ValueError):
            shell.events.unregister("post_run_cell", watch)
    store = ns.pop("context", None)  # the inputs DSPy passed, by key (see inputs below)
    if not isinstance(store, dict):
        store = {}
    types = {t.__name__: t for t in (str, int, float, bool, list, dict, type(None))}

    class Submitted(BaseException):
        """Raised by SUBMIT to end the cell at once; the cell's code is wrapped to catch it."""

    call = ns["_rlm_call_tool"]

    def call_tool(name, args, kwargs):
        try:
            json.dumps([args, kwargs])
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name}: arguments must be JSON values: {e}") from None
        return call(name, list(args), kwargs)

    def make_tool(name):
        def tool(*args, **kwargs):
            if name == "llm_query":
                prompt = kwargs.get("prompt") if not args else args[0]
                if len(args) + len(kwargs) == 1 and isinstance(prompt, str):
                    return host["llm_query"](prompt)  # recorded as a plain sub-model call
            return call_tool(name, args, kwargs)

        tool.__name__ = tool.__qualname__ = name
        tool.__doc__ = f"DSPy's tool {name!r}: it runs on the host; arguments and result are JSON."
        return tool

    def jsonable(value):
        if isinstance(value, (set, frozenset)):
            try:
                return sorted(value)
            except TypeError:
                return list(value)
        return str(value)

    def make_submit(fields):
        params = [
            inspect.Parameter(
                f["name"],
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                annotation=types.get(f.get("type"), inspect.Parameter.empty),
            )
            for f in fields or [{"name": "output"}]
        ]
        signature = inspect.Signature(params)

        def SUBMIT(*args, **kwargs):
            """Submit the final outputs, by position or by name, and end the run."""
            values = dict(signature.bind(*args, **kwargs).arguments)
            host["FINAL"](json.dumps(values, ensure_ascii=False, default=jsonable))
            raise Submitted

        SUBMIT.__signature__ = signature
        return SUBMIT

    class CatchSubmit(ast.NodeTransformer):
        """Wrap a cell that calls SUBMIT in ``try/except``, so it ends there without an error."""

        def visit_Module(self, node):
            body = node.body
            if not body or (isinstance(body[0], ast.ImportFrom) and body[0].module == "__future__"):
                return node
            if not any(isinstance(n, ast.Name) and n.id == "SUBMIT" for n in ast.walk(node)):
                return node
            caught = ast.ExceptHandler(
                type=ast.Name(id="_rlm_dspy_Submitted", ctx=ast.Load()),
                name=None,
                body=[ast.Pass()],
            )
            node.body = [ast.Try(body=body, handlers=[caught], orelse=[], finalbody=[])]
            return ast.fix_missing_locations(node)

    def quiet(shell, etype, value, tb, tb_offset=None):
        return ["SUBMIT ended the cell."]  # SUBMIT called from a function of an earlier cell

    ns["_rlm_dspy_Submitted"] = Submitted
    shell.ast_transformers.append(CatchSubmit())
    shell.set_custom_exc((Submitted,), quiet)

    class Interpreter:
        """What the interpreter's setup cells call: ``tools``, ``submit``, ``inputs``."""

        def tools(self, names, previous=()):
            for name in previous:
                ns.pop(name, None)
            for name in names:
                ns[name] = make_tool(name)

        def submit(self, fields):
            ns["SUBMIT"] = make_submit(fields)

        def inputs(self, keys):
            # A fresh copy each time, as DSPy passes them: what the code changed is undone.
            for name, key in keys.items():
                value = store[key]
                ns[name] = copy.deepcopy(value) if isinstance(value, (list, dict)) else value

        def load(self, values):
            store.update(values)

    return Interpreter()


_rlm_dspy = _rlm_dspy_setup(get_ipython())  # noqa: F821 - IPython's global in the kernel
del _rlm_dspy_setup
