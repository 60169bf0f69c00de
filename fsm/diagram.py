"""Generate the connection diagram from fsm.core.TABLE, so the picture cannot drift from the code.

`ibgw diagram` (fsm.cli) rewrites diagrams/connection.mmd, diagrams/README.md and the block
between `<!-- fsm:begin -->` / `<!-- fsm:end -->` in the root README.md (if it has the markers) of
the ibgw-fsm checkout; `--check` rewrites nothing and lists the stale files. The files belong to
the checkout, never to an install: see `checkout()`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from transitions.extensions import GraphMachine

from . import core
from .core import EXPIRIES, TABLE, TIMERS, Reason, State, _machine_transitions, _Model
from .errors import CheckoutError

TITLE = "IB Gateway connection (ibgw-fsm)"
PROJECT = "ibgw-fsm"
MMD = Path("diagrams/connection.mmd")
PAGE = Path("diagrams/README.md")
README = Path("README.md")
BEGIN, END = "<!-- fsm:begin -->", "<!-- fsm:end -->"
_PACKAGE = Path(__file__).resolve().parent

STATES = {
    State.IDLE: "not started, or shut down (a retired worker may still be exiting)",
    State.SPAWNING: "waiting for the previous worker to exit, then for the new one to say `ready`",
    State.HANDSHAKING: "`connect` sent; the whole handshake budget (30 s) is armed on entry",
    State.CONNECTED: "session up; probed every `probe_interval`; stable for `stable_period` resets the backoff",
    State.DEGRADED_RED: "no usable session; a reason says why; retry after backoff (or revive on late good news)",
}
REASONS = {
    Reason.api_unresponsive: "the handshake deadline passed (the Gateway API layer is RED)",
    Reason.refused: "the TCP connection was refused",
    Reason.gateway_too_old: "the Gateway's API version is too old for ib_async: retried at the max backoff",
    Reason.unknown_host: "the Gateway's host name did not resolve (in the worker)",
    Reason.client_id_in_use: "error 326: our client id is held (zombie); the retry reaps our own stale workers first",
    Reason.peer_closed: "the Gateway closed the socket",
    Reason.worker_exited: "the worker process exited on its own",
    Reason.connectivity_lost: "1100: the Gateway lost IB's servers; keep the session, wait for 1101/1102",
    Reason.probe_failed: "a `ping` failed or went unanswered for `probe_timeout`",
    Reason.spawn_timeout: "the worker did not say `ready` within `spawn_timeout`",
    Reason.shutdown: "(history only) the owner called shutdown()",
}


def is_checkout(path: Path) -> bool:
    """`path` holds this project's pyproject.toml and its diagrams/ folder."""
    try:
        name = tomllib.loads((path / "pyproject.toml").read_text())["project"]["name"]
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        return False
    return bool(name == PROJECT and (path / "diagrams").is_dir())


def find_checkout(*starts: Path) -> Path | None:
    """The first checkout at or above any of `starts`, tried in order."""
    for start in starts:
        for path in (start.resolve(), *start.resolve().parents):
            if is_checkout(path):
                return path
    return None


def _runs_from(root: Path) -> bool:
    """The modules the diagram is rendered from are byte-identical in `root`'s fsm/."""
    mine = (Path(core.__file__).resolve(), Path(__file__).resolve())
    return all(
        (root / "fsm" / m.relative_to(_PACKAGE)).is_file()
        and (root / "fsm" / m.relative_to(_PACKAGE)).read_bytes() == m.read_bytes()
        for m in mine
    )


def checkout(cwd: Path | None = None) -> Path:
    """The checkout to read and write: the one this package is the fsm/ of (editable install, or
    run from the repository), else the one around the current directory if it holds this very
    code (a non-editable install of it, e.g. into a .venv inside the checkout).

    Raises CheckoutError otherwise: an installed copy has no diagrams to keep fresh, and files
    written under site-packages would be lost at the next install."""
    if is_checkout(_PACKAGE.parent):
        return _PACKAGE.parent
    cwd = Path.cwd() if cwd is None else cwd
    root = find_checkout(cwd)
    if root is None:
        raise CheckoutError(
            f"not in an {PROJECT} checkout: fsm runs from an install ({_PACKAGE}) and no folder "
            f"at or above {cwd} holds {PROJECT}'s pyproject.toml and diagrams/; run this inside a clone"
        )
    if not _runs_from(root):
        raise CheckoutError(
            f"{root} is an {PROJECT} checkout, but the fsm running ({_PACKAGE}) is other code; "
            f"install the checkout's own (pip install -e {root}) and run it again"
        )
    return root


class _Blank:
    """A fresh model: the diagram must not depend on any live machine's state or styling."""


def mermaid() -> str:
    """The stateDiagram-v2 source for TABLE, with a title mermaid keeps and no active-state styling."""
    model: Any = _Blank()  # transitions adds get_graph() to it
    machine = GraphMachine(
        model=model,
        states=list(State),
        initial=State.IDLE,
        transitions=_machine_transitions(TABLE),
        auto_transitions=False,
        show_conditions=True,
        graph_engine="mermaid",
        title=TITLE,
    )
    machine.model_graphs[id(model)].reset_styling()
    source = model.get_graph().source
    # transitions emits the title as bare YAML front matter, which mermaid drops; make it a key
    head = f"---\n{TITLE}\n---\n"
    if not source.startswith(head):
        raise RuntimeError("transitions' mermaid output changed shape; update fsm.diagram")
    body = "\n".join(line.rstrip() for line in source[len(head) :].strip().splitlines())
    return f"---\ntitle: {TITLE}\n---\n{body}\n"


def _guard_docs() -> dict[str, str]:
    names = sorted({g.lstrip("!") for e in TABLE for g in e.guards})
    return {n: (getattr(_Model, n).__doc__ or "").strip() for n in names}


def page(source: str) -> str:
    lines = [
        "# Connection state machine",
        "",
        "Generated by `ibgw diagram` from the transition table in `fsm/core.py`; "
        "do not edit by hand (`ibgw diagram --check` fails when this page is stale).",
        "",
        "```mermaid",
        source.rstrip(),
        "```",
        "",
        "Edge labels read `event [guard & !guard]`; `[internal]` edges change no state. "
        "There is no disconnect edge: a session ends only when its worker process exits.",
        "",
        f"Timer events, fired by `tick(now)` at `next_deadline()`: {', '.join(TIMERS)}. "
        f"The expiries ({', '.join(EXPIRIES)}) also fire before any input at or after their "
        "deadline, so no state outlives it; `retry` fires only on tick.",
        "",
        "## States",
        "",
        *(f"- **{s.value}**: {STATES[s]}" for s in State),
        "",
        "## Reasons (why DEGRADED_RED)",
        "",
        *(f"- `{r.value}`: {REASONS[r]}" for r in Reason),
        "",
        "## Guards",
        "",
        *(f"- `{name}`: {doc}" for name, doc in _guard_docs().items()),
        "",
    ]
    return "\n".join(lines)


def render(root: Path) -> dict[Path, str]:
    """Every generated file under `root` and the text it should have."""
    source = mermaid()
    files = {root / MMD: source, root / PAGE: page(source)}
    readme = root / README
    if readme.exists():
        text = readme.read_text()
        start, stop = text.find(BEGIN), text.find(END)
        if 0 <= start < stop:
            block = f"{BEGIN}\n```mermaid\n{source}```\n{END}"
            files[readme] = text[:start] + block + text[stop + len(END) :]
    return files


def check(root: Path | None = None) -> list[Path]:
    """Generated files that are missing or differ from what render() gives; `root` defaults to
    checkout() (and raises CheckoutError like it)."""
    root = checkout() if root is None else root
    return [p for p, text in render(root).items() if not p.exists() or p.read_text() != text]


def write(root: Path | None = None) -> list[Path]:
    """Rewrite the stale files under `root` (default: checkout()); returns the ones written."""
    root = checkout() if root is None else root
    stale = check(root)
    for path, text in render(root).items():
        if path in stale:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return stale
