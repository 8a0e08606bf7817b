"""Make a run notebook shareable: a folder that replays anywhere and opens on Binder.

:func:`bundle_run` writes a folder holding a copy of the run notebook, its context file (placed
where the copy's ``metadata.rlm.context.path`` points, checked against the recorded SHA-256), a
``binder/requirements.txt`` that installs rlm-kernel and JupyterLab, and a short ``README.md``.
Push the folder to a GitHub repository and :func:`binder_url` opens the notebook on mybinder.org;
*Run All* there replays the run without an API key. See ``docs/sharing.md``.

A bundle is self-contained: it carries the wheel of the rlm-kernel that made it
(:func:`own_wheel`, under ``binder/``), and its requirements install that wheel by a relative
path, so Binder builds it whether or not a package index has this version.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.metadata
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from . import __version__
from .context import file_sha256, resolve_context
from .errors import ContextError, NotebookFormatError, OutputPathError, UsageError
from .record import RunNotebook, read, relocate, write_notebook
from .tree import children_dir

__all__ = ["Bundle", "binder_url", "bundle_run", "own_wheel", "requirements"]

BINDER_BASE = "https://mybinder.org/v2/gh"
_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
# Names the bundle itself uses at its top level; a context file must not take them.
_RESERVED = ("binder", "README.md")
DIST_NAME = "rlm-kernel"
# What a wheel must not carry from an installed package folder.
_SKIPPED_PARTS = frozenset({"__pycache__"})
_SKIPPED_SUFFIXES = (".pyc", ".pyo")
# Files of an installed dist-info that describe the installation, not the package.
_INSTALL_ONLY = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "WHEEL"})


@dataclasses.dataclass(frozen=True)
class Bundle:
    """What :func:`bundle_run` wrote.

    Attributes:
        dir: the bundle folder.
        notebook: the copy of the run notebook.
        context: the copy of the context file, or ``None`` when the notebook carries its context
            inside itself (``--embed-context``) and no file was found.
        context_moved: the copy's context path was rewritten (the original lay outside the
            notebook's folder).
        requirements: ``binder/requirements.txt``.
        readme: the folder's ``README.md``.
        binder_url: the URL opening the notebook on mybinder.org, when a repository was given.
        wheel: the wheel of rlm-kernel that ``requirements`` installs, under ``binder/``.
    """

    dir: Path
    notebook: Path
    context: Path | None
    context_moved: bool
    requirements: Path
    readme: Path
    binder_url: str | None = None
    wheel: Path | None = None

    def describe(self) -> str:
        """One line naming what the folder holds."""
        parts = [self.notebook.name]
        if self.context is not None:
            rel = self.context.relative_to(self.dir).as_posix()
            parts.append(f"{rel} (context{', path rewritten' if self.context_moved else ''})")
        else:
            parts.append("context embedded in the notebook")
        if self.wheel is not None:
            parts.append(f"binder/{self.wheel.name}")
        parts += ["binder/requirements.txt", "README.md"]
        return f"bundle {self.dir}: " + ", ".join(parts)


def binder_url(repo: str, ref: str, path: str) -> str:
    """The mybinder.org URL that opens ``path`` (inside the repository) in JupyterLab.

    Args:
        repo: the GitHub repository, ``OWNER/NAME``.
        ref: a branch, tag or commit (``HEAD`` for the default branch).
        path: the notebook's path inside the repository, ``/``-separated.

    Raises:
        UsageError: ``repo`` is not ``OWNER/NAME`` or ``ref`` is empty.
    """
    if not _REPO.match(repo):
        raise UsageError(f"--repo must be a GitHub repository written OWNER/NAME, not {repo!r}")
    if not ref.strip():
        raise UsageError("--ref must name a branch, tag or commit (HEAD for the default branch)")
    # The notebook path travels inside the query string: quote everything but the slashes.
    return f"{BINDER_BASE}/{repo}/{quote(ref, safe='/')}?urlpath=lab/tree/{quote(path, safe='/')}"


def requirements(wheel: str | None = None) -> str:
    """The ``binder/requirements.txt`` of a bundle: rlm-kernel and JupyterLab.

    Args:
        wheel: the name of the wheel that sits beside the file; without one, this rlm-kernel
            version or newer from the package index.
    """
    # pip reads a path in a requirements file relative to the folder pip runs in; Binder runs
    # it from the repository root, where the bundle's binder/ folder is.
    own = f"./binder/{wheel}" if wheel else f"rlm-kernel>={__version__}"
    return f"{own}\njupyterlab\nipywidgets\n"


def own_wheel(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A wheel of the rlm-kernel running now, built from its installed files and cached.

    The wheel holds the package folder as Python imports it (for an editable install, the
    source tree) and the installed distribution's metadata, so it installs the same code
    anywhere without a build step or a package index. Wheels are cached per version and content
    in ``cache_dir`` (default ``$XDG_CACHE_HOME/rlm-kernel/wheels``, else
    ``~/.cache/rlm-kernel/wheels``).

    Raises:
        UsageError: rlm-kernel is not installed as a distribution (run from a bare source tree),
            so there is no metadata to put in a wheel.
    """
    try:
        dist = importlib.metadata.distribution(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        raise UsageError(
            "rlm-kernel is not installed, so a bundle cannot carry it: install it first "
            "(pip install . in its source folder)"
        ) from None
    version = dist.version
    package = Path(__file__).resolve().parent
    files = sorted(
        p
        for p in package.rglob("*")
        if p.is_file()
        and not _SKIPPED_PARTS.intersection(p.relative_to(package).parts)
        and not p.name.startswith(".")
        and not p.name.endswith(_SKIPPED_SUFFIXES)
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(package.parent).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    name = f"rlm_kernel-{version}-py3-none-any.whl"
    folder = Path(cache_dir) if cache_dir is not None else _cache_root() / "wheels"
    target = folder / f"{version}-{digest.hexdigest()[:16]}" / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    entries = [(p.relative_to(package.parent).as_posix(), p.read_bytes()) for p in files]
    info = f"rlm_kernel-{version}.dist-info"
    for meta in dist.files or []:
        parts = PurePosixPath(str(meta)).parts
        if len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] not in _INSTALL_ONLY:
            entries.append((f"{info}/{parts[1]}", Path(str(dist.locate_file(meta))).read_bytes()))
    wheel_meta = (
        "Wheel-Version: 1.0\nGenerator: rlm-kernel bundle\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n"
    )
    entries.append((f"{info}/WHEEL", wheel_meta.encode()))
    record = [f"{arcname},sha256={_b64_sha256(data)},{len(data)}" for arcname, data in entries]
    entries.append((f"{info}/RECORD", ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()))
    # Written beside the target and moved into place: a cached wheel is always whole.
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".whl.part")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for arcname, data in entries:
                zf.writestr(arcname, data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rlm-kernel"


def _b64_sha256(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def bundle_run(
    notebook_path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    repo: str | None = None,
    ref: str | None = None,
) -> Bundle:
    """Write a shareable folder for one run notebook.

    The folder is built beside ``dest`` and moved into place at the end, so a failure leaves no
    half-written bundle.

    Args:
        notebook_path: the run notebook.
        dest: the folder to create; it may exist if it is empty.
        repo: a GitHub repository ``OWNER/NAME`` the folder will be pushed to, for the Binder URL.
        ref: the branch, tag or commit of ``repo`` (default ``HEAD``); needs ``repo``.

    Raises:
        UsageError: the notebook is missing or not a run notebook (message from
            :class:`NotebookFormatError`), its context is missing or altered
            (:class:`ContextError`), ``dest`` exists and is not an empty folder
            (:class:`OutputPathError`), or ``repo``/``ref`` are malformed.
    """
    source = Path(notebook_path)
    dest = Path(dest)
    if ref is not None and repo is None:
        raise UsageError("--ref needs --repo OWNER/NAME (the repository the bundle is pushed to)")
    url = binder_url(repo, ref or "HEAD", source.name) if repo is not None else None
    try:
        run = read(source)
    except NotebookFormatError as e:
        raise UsageError(str(e)) from None
    found = resolve_context(run.run.context, source.parent)
    _check_dest(dest)
    recorded = str(run.run.context["path"])
    rel = _context_target(recorded, source.name)
    moved = found.path is not None and rel != recorded
    tree = children_dir(source) if run.children() else None

    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        if found.path is None:
            shutil.copyfile(source, work / source.name)
        else:
            target = work / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found.path, target)
            if file_sha256(target) != found.sha256:
                raise ContextError(f"the copy of the context file {found.path} does not match it")
            _copy_notebook(source, run, work / source.name, rel if moved else None)
        if tree is not None and tree.is_dir():
            # Child notebooks link each other and their contexts by relative paths inside this
            # folder, so the folder is copied as it is.
            shutil.copytree(tree, work / tree.name, ignore=shutil.ignore_patterns(".handoff-*"))
        (work / "binder").mkdir()
        built = own_wheel()
        wheel = shutil.copyfile(built, work / "binder" / built.name)
        (work / "binder" / "requirements.txt").write_text(
            requirements(wheel.name), encoding="utf-8"
        )
        ctx_name = rel if found.path is not None else None
        readme = _readme(run, source.name, ctx_name, url)
        (work / "README.md").write_text(readme, encoding="utf-8")
        work.chmod(0o755)  # mkdtemp makes it private; the bundle is meant to be shared
        if dest.exists():
            dest.rmdir()  # checked empty above
        os.replace(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return Bundle(
        dir=dest,
        notebook=dest / source.name,
        context=dest / rel if found.path is not None else None,
        context_moved=moved,
        requirements=dest / "binder" / "requirements.txt",
        readme=dest / "README.md",
        binder_url=url,
        wheel=dest / "binder" / wheel.name,
    )


def _check_dest(dest: Path) -> None:
    if dest.is_dir():
        if any(dest.iterdir()):
            raise OutputPathError(f"{dest} exists and is not empty; give a new or empty folder")
    elif dest.exists():
        raise OutputPathError(f"{dest} exists and is not a folder; give a new or empty folder")


def _context_target(recorded: str, notebook_name: str) -> str:
    """Where the context goes in the bundle, relative to the notebook (``/``-separated).

    A path inside the notebook's folder is kept; one outside it (``../data/x.txt``, or absolute)
    becomes the file's name beside the notebook.
    """
    path = PurePosixPath(recorded)
    inside = (
        not path.is_absolute()
        and ".." not in path.parts
        and not re.match(r"^[A-Za-z]:", recorded)  # a Windows drive
        and path.parts[0] not in (*_RESERVED, notebook_name)
    )
    if inside:
        return path.as_posix()
    name = PurePosixPath(recorded.replace("\\", "/")).name
    if name in (*_RESERVED, notebook_name):
        name = f"{Path(notebook_name).stem}.context{Path(name).suffix}"
    return name


def _copy_notebook(source: Path, run: RunNotebook, target: Path, rel: str | None) -> None:
    if rel is None:
        shutil.copyfile(source, target)  # byte for byte: nothing to change
        return
    write_notebook(relocate(run.nb, source, target, context_path=rel), target)


def _readme(run: RunNotebook, name: str, context: str | None, url: str | None) -> str:
    meta = run.run
    question = " ".join(meta.question.split())
    answer = " ".join(str(meta.answer or "(no answer)").split())
    models = meta.models
    ctx = (
        f"- `{context}`: its context (sha256 `{meta.context['sha256'][:12]}…`, checked)"
        if context
        else "- the context is embedded in the notebook"
    )
    binder = (
        f"[Open it on Binder]({url}) (JupyterLab in the browser, nothing to install)."
        if url
        else "Push this folder to a GitHub repository and open "
        f"`{BINDER_BASE}/OWNER/NAME/HEAD?urlpath=lab/tree/{quote(name, safe='/')}` "
        "(with your repository's owner and name); `rlm-kernel bundle --repo OWNER/NAME` "
        "prints that URL."
    )
    return f"""# A recorded rlm-kernel run

**Question:** {question}

**Answer:** {answer}

Root model `{models.get("root")}`, sub-model `{models.get("sub")}`.

- `{name}`: the run notebook: every step the model took, its code and the kernel's outputs
{ctx}
- `binder/requirements.txt`: what Binder (or you) installs: rlm-kernel, from the wheel beside it
  (the version that recorded this run), and JupyterLab

## Open it

{binder}

Or on your machine:

```bash
pip install -r binder/requirements.txt    # from this folder: the wheel path is relative to it
jupyter lab {name}          # then Run > Run All Cells
rlm-kernel replay {name}    # or check it from the command line
```

Running the notebook needs no API key: its second cell loads the context from the file above
and answers every sub-model call from the responses recorded in the notebook. Keep the two
files together (the notebook finds its context by a path relative to itself).
"""
