"""What an IB message code means for the connection: a pure classifier, no I/O.

The Gateway reports its own state through error-channel codes with req_id -1. Only a few of them
move the state machine (1100 lost, 1101/1102 restored); 326 and the data-farm codes are news for
subscribers, never a connection loss; everything else is logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fsm.inputs import ConnectivityLost, ConnectivityRestored, Input

__all__ = ["CLIENT_ID_IN_USE", "CONNECTIVITY_CODES", "FARM_CODES", "Classified", "NoticeKind", "classify"]

CONNECTIVITY_LOST = 1100
RESTORED_DATA_LOST = 1101
RESTORED_DATA_KEPT = 1102
CONNECTIVITY_CODES = frozenset({CONNECTIVITY_LOST, RESTORED_DATA_LOST, RESTORED_DATA_KEPT})
CLIENT_ID_IN_USE = 326
FARM_CODES = frozenset({2103, 2104, 2105, 2106, 2107, 2108, 2157, 2158})
"""Market data / HMDS / security-definition farm status: recorded and published only."""


class NoticeKind(StrEnum):
    """Notice.kind values: what subscribers hear that is not a transition."""

    farm = "farm"  # a data farm status code (FARM_CODES)
    data_lost = "data_lost"  # 1101: re-request market data
    client_id_in_use = "client_id_in_use"  # a 326 arrived
    zombie_reaped = "zombie_reaped"  # a stale worker of ours was ended
    handshake_failed = "handshake_failed"  # why a connect failed, as the worker said it


@dataclass(frozen=True, slots=True)
class Classified:
    """What to do with one code: an input for the core, a notice, or (during the handshake, when
    the core takes no connectivity news) whether upstream is lost, to apply once connected."""

    input: Input | None = None
    notice: NoticeKind | None = None
    upstream_lost: bool | None = None


def classify(code: int, *, handshaking: bool) -> Classified:
    """Classify one IB code; an empty Classified means: log it, nothing else."""
    if code in CONNECTIVITY_CODES:
        if handshaking:
            return Classified(upstream_lost=code == CONNECTIVITY_LOST)
        if code == CONNECTIVITY_LOST:
            return Classified(input=ConnectivityLost())
        return Classified(input=ConnectivityRestored(data_lost=code == RESTORED_DATA_LOST))
    if code == CLIENT_ID_IN_USE:
        return Classified(notice=NoticeKind.client_id_in_use)
    if code in FARM_CODES:
        return Classified(notice=NoticeKind.farm)
    return Classified()
