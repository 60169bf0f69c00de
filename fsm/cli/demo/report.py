"""The demo's day judged at its end: what the Gateway saw of its sessions (no disconnect, one
client id, no fast close), the timeline of every manager's transitions, and the summary lines
both views print. Nothing here runs anything."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fsm import ConnectionManager
from fsm.cli.demo.record import Check, Phase, Recovery, Status, TimelineRow
from fsm.cli.demo.story import Story
from gatewaysim import GatewaySim


@dataclass(frozen=True, slots=True)
class GatewayRecord:
    """What the Gateway saw of the day's sessions, read once at the end."""

    handshakes: int
    sent_326: int
    red_episodes: int
    closes: int  # every close by a client
    disconnects: int  # closes by a process that was still alive: a disconnect, never ours
    client_ids: tuple[int, ...]
    youngest: float | None  # the shortest session's age at its close (s)

    @classmethod
    def of(cls, sim: GatewaySim) -> GatewayRecord:
        c = sim.counters
        ages = [x.age for x in sim.client_closes if x.handshaken]
        return cls(
            handshakes=c.handshakes,
            sent_326=c.sent_326,
            red_episodes=c.red_episodes,
            closes=len(sim.client_closes),
            disconnects=sum(1 for x in sim.client_closes if x.peer_alive),
            client_ids=tuple(sorted(sim.client_ids_seen)),
            youngest=min(ages) if ages else None,
        )

    def checks(self, client_id: int, min_session: float) -> tuple[Check, ...]:
        floor = min_session - 0.05  # the sim dates a close when it reads the EOF
        return (
            Check("disconnects issued: 0 (no live process ever closed its session)", self.disconnects == 0),
            Check(f"client ids used: exactly one ({client_id})", self.client_ids == (client_id,)),
            Check(
                "no fast close: every session lived at least min_session",
                self.youngest is None or self.youngest >= floor,
            ),
        )


def timeline(story: Story, managers: Sequence[ConnectionManager]) -> tuple[TimelineRow, ...]:
    """Every transition of every manager of the day, in time order."""
    rows = [
        TimelineRow(
            story.t(tr.at_ns),
            f"#{i}",
            str(tr.source),
            tr.event,
            str(tr.dest),
            str(tr.reason) if tr.reason else "-",
        )
        for i, m in enumerate(managers, 1)
        for tr in m.history
    ]
    return tuple(sorted(rows, key=lambda r: r.t))


def summary(
    *,
    wall: float,
    gw: GatewayRecord,
    managers: Sequence[ConnectionManager],
    recoveries: Sequence[Recovery],
    trading: Sequence[str],
    killer_step: int,
    min_session: float,
    phases: Sequence[Phase],
    checks: Sequence[Check],
) -> tuple[str, ...]:
    """The closing lines; `trading`: the trader's own (quote stream, orders, fills);
    `killer_step`: the step whose trader process was killed."""
    ours = sum(int(m.metrics().get("sessions", 0)) for m in managers)
    rest = gw.handshakes - ours
    reaped = sum(int(m.metrics().get("zombies_reaped", 0)) for m in managers)
    out = [
        f"wall time: {wall:.1f} s",
        f"sessions: {gw.handshakes} handshake(s) at the Gateway: {ours} by the in-process managers"
        + (f", {rest} by the trader process killed in step {killer_step}" if rest else ""),
        "recoveries:",
        *(f"  {r.what}: {_seconds(r.seconds)} ({r.how})" for r in recoveries),
        *trading,
        f"326s sent by the Gateway: {gw.sent_326}; stale workers reaped: {reaped}; "
        f"Gateway RED episodes: {gw.red_episodes}",
        f"disconnects issued: {gw.disconnects} (the Gateway saw {gw.closes} "
        f"closes, {gw.closes - gw.disconnects} by process exit)",
    ]
    if gw.youngest is not None:
        out.append(
            f"youngest session at its close: {gw.youngest:.2f} s after its handshake "
            f"(min_session {min_session:g} s: no fast close)"
        )
    ids = gw.client_ids
    one = "exactly one" if len(ids) == 1 else f"{len(ids)}, NOT one"
    out.append(f"client ids used: {one} ({', '.join(map(str, ids))})")
    failed = [f"step {p.number} {p.title}: {p.status}" for p in phases if p.status != Status.OK]
    failed += [chk.text for chk in checks if not chk.ok]
    out.append(
        "verdict: FAILED — " + "; ".join(failed) if failed else "verdict: every step ended as scripted"
    )
    return tuple(out)


def _seconds(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x < 0.1 else f"{x:.2f} s"
