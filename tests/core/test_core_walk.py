"""Bounded exhaustive walk of the core over abstract states (explicit-state model checking).

Time is abstracted into regions (is a deadline due? has the backoff elapsed?) and counters into
buckets, which makes the state space finite. Breadth-first from IDLE, every input and every kind
of time step is tried from every abstract state reached (its concrete path replayed once, then
each step from a snapshot of core and driver), with the property checker of test_core_properties. The walk must close (no new abstract states),
reach every state, cover every declared edge, and leave no dead end: from everywhere a session
can be re-established and the machine shut down.
"""

from __future__ import annotations

from collections import defaultdict, deque
from functools import cache

from test_core_properties import SPEC_EDGES, STABLE_NS, Driver

from fsm.core import HANDSHAKE_FAILURES, Reason, State

S = 1_000_000_000
STEPS: tuple[tuple, ...] = (
    ("start",),
    ("worker_ready",),
    ("handshake_ok",),
    *(("handshake_failed", r) for r in sorted(HANDSHAKE_FAILURES)),
    ("worker_exited",),
    ("session_lost",),
    ("connectivity_lost",),
    ("connectivity_restored", False),
    ("connectivity_restored", True),
    ("probe_ok",),
    ("probe_failed",),
    ("shutdown",),
    ("@next",),  # advance to the next deadline and tick there
    ("@on",),  # stand on the next deadline without ticking: inputs race the timer
    ("@1ns",),  # a nanosecond later (ticking whatever falls due)
    ("@1000s",),  # a long wait, ticking every deadline on the way
    ("@stable",),  # a stable period of a healthy Gateway: every probe answered
    ("maintenance", True),  # a maintenance window opens
    ("maintenance", False),  # ... and closes
)
MAX_DEPTH = 25


def apply(d: Driver, step: tuple) -> None:
    match step:
        case ("@next",):
            nd = d.core.next_deadline()
            if nd is not None:
                d.advance(max(0, nd - d.now))
        case ("@on",):
            d.to_deadline()
        case ("@1ns",):
            d.advance(1)
        case ("@1000s",):
            d.advance(1000 * S)
        case ("@stable",):
            d.advance_healthy(STABLE_NS)
        case (event, *arg):
            d.fire(event, arg[0] if arg else None)
    d.check()


def abstract(d: Driver) -> tuple:
    """(state, reason, deadline due?, backoff elapsed?, failures bucket, worker alive?, ...)."""
    c, m = d.core, d.core._m
    nd = c.next_deadline()
    retry = c.metrics(d.now)["retry_at_ns"]
    return (
        c.state,
        c.reason,
        nd is not None and nd <= d.now,
        retry is not None and retry <= d.now,
        min(m.failures, 3),
        m.alive,
        m.retire_sent,
        m.session_alive(),
        m.probe_deadline is not None,
        m.reap_pending,
        m.session_stable,
        c.window is not None,
    )


@cache
def explore() -> tuple[dict, dict, set]:
    """BFS to closure: abstract state -> a shortest path, successor graph, edges seen."""
    paths: dict[tuple, tuple] = {abstract(Driver()): ()}
    graph: dict[tuple, set] = defaultdict(set)
    edges: set = set()
    queue = deque([()])
    while queue:
        path = queue.popleft()
        assert len(path) < MAX_DEPTH, f"the abstraction did not close within {MAX_DEPTH} steps"
        d = Driver()
        for s in path:
            apply(d, s)
        here = abstract(d)
        saved = dict(vars(d)), d.core._save()
        for step in STEPS:
            vars(d).update(saved[0])  # back to the end of `path` (the fields are immutable)
            d.core._restore(saved[1])
            apply(d, step)
            there = abstract(d)
            graph[here].add(there)
            edges |= {(t.source, t.event, t.dest) for t in d.core.history}
            if there not in paths:
                paths[there] = (*path, step)
                queue.append((*path, step))
    return paths, graph, edges


def test_every_state_reachable_from_idle() -> None:
    paths, graph, _ = explore()
    print(
        f"\nexhaustive walk: {len(paths)} abstract states, "
        f"{sum(len(v) for v in graph.values())} abstract edges, "
        f"{len(paths) * len(STEPS)} replays, depth {max(len(p) for p in paths.values())}"
    )
    assert {k[0] for k in paths} == set(State)
    assert {k[1] for k in paths if k[0] is State.DEGRADED_RED} == set(Reason) - {Reason.shutdown}


def test_every_declared_edge_is_taken() -> None:
    _, _, edges = explore()
    assert edges == SPEC_EDGES


def test_no_dead_ends() -> None:
    """From every abstract state some step leads elsewhere, and both a session (CONNECTED)
    and a clean stop (IDLE with no worker) stay reachable."""
    paths, graph, _ = explore()
    for k in paths:
        assert graph[k] - {k}, f"dead end: {k} via {paths[k]}"

    def can_reach(goal) -> set:
        reverse = defaultdict(set)
        for a, bs in graph.items():
            for b in bs:
                reverse[b].add(a)
        seen = {k for k in paths if goal(k)}
        todo = list(seen)
        while todo:
            for a in reverse[todo.pop()] - seen:
                seen.add(a)
                todo.append(a)
        return seen

    connected = can_reach(lambda k: k[0] is State.CONNECTED)
    stopped = can_reach(lambda k: k[0] is State.IDLE and not k[5])
    for k in paths:
        assert k in connected, f"no way back to CONNECTED from {k} via {paths[k]}"
        assert k in stopped, f"no way to a clean stop from {k} via {paths[k]}"
