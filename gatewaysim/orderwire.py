"""The order messages on the wire: placeOrder in, openOrder, orderStatus and completedOrder out.

Layouts are trading-surface.md B.5 and appendices 1, 2 and 4, as ib_async 2.1.0 sends and
parses them at server versions 157..178; the version-dependent fields follow the version the
session negotiated. ib_async drops an openOrder or completedOrder one field short, so every
position is written, unset values as IB's sentinels.
"""

from __future__ import annotations

from . import wire
from .broker import Order, Ticket
from .contracts import parse_contract

D = wire.UNSET_DOUBLE
I = wire.UNSET_INTEGER  # noqa: E741 - IB's own name for it
MIN_SV_NO_FA_PROFILE = 177
MIN_SV_DURATION = 159
MIN_SV_POST_TO_ATS = 160
MIN_SV_AUTO_CANCEL_PARENT = 162
MIN_SV_PEG_BEST_FIELDS = 170


def _double(text: str) -> float | None:
    """A client's double: "" and IB's max-double sentinel mean unset."""
    if not text.strip():
        return None
    value = float(text)
    return None if value >= 1.7e308 else value


def parse_place_order(f: list[str]) -> Ticket:
    """placeOrder at >= 145 (no version field). Raises IndexError/ValueError when short or bad."""
    if len(f) < 35:
        raise IndexError(f"placeOrder has {len(f)} fields, needs at least 35")
    return Ticket(
        order_id=int(f[1]),
        contract=parse_contract(f, 2),
        action=f[16].upper(),
        quantity=float(f[17]),
        order_type=f[18].upper(),
        lmt_price=_double(f[19]),
        aux_price=_double(f[20]),
        tif=f[21].upper() or "DAY",
        account=f[23],
        order_ref=f[26],
        transmit=f[27].strip() != "0",
        outside_rth=f[33].strip() not in ("", "0"),
    )


def _price(value: float | None) -> object:
    return D if value is None else value


def open_order(version: int, o: Order) -> bytes:
    """OPEN_ORDER (msg 5): 127 fields at 178 for a plain order (appendix 2)."""
    f: list[object] = [wire.OPEN_ORDER, o.order_id, *wire.contract_fields(o.ins, o.ins.exchange)]
    f += [o.action, o.quantity, o.order_type, _price(o.lmt_price), _price(o.aux_price), o.tif, "", o.account]
    f += ["", 0, o.order_ref, o.client_id, o.perm_id, o.outside_rth, 0, 0, "", "", "", "", ""]
    if version < MIN_SV_NO_FA_PROFILE:
        f.append("")  # faProfile
    # modelCode .. deltaNeutralAuxPrice
    f += ["", "", "", D, "", 0, "", -1, 0, D, D, D, D, D, I, 0, 0, 0, I, 3, 0, 0, D, 0, 0, D, 0, "", D]
    # continuousUpdate .. comboLegsDescrip, three empty lists, scale, hedge
    f += [0, 0, D, D, D, I, "", 0, 0, 0, I, I, D, ""]
    # optOutSmartRouting, clearingAccount, clearingIntent, notHeld, dncPresent, algoStrategy
    f += [0, "", "", 0, 0, ""]
    f += [0, 0, o.status, "", "", "", "", "", "", "", "", "", D, D, D, "", "", 0, 0]
    f += [0]  # conditionsCount
    f += ["", D, D, D, D, D, D, 0, "", "", "", D, 0, 0, 0, 0]
    if version >= MIN_SV_DURATION:
        f.append(I)
    if version >= MIN_SV_POST_TO_ATS:
        f.append(I)
    if version >= MIN_SV_AUTO_CANCEL_PARENT:
        f.append(0)
    if version >= MIN_SV_PEG_BEST_FIELDS:
        f += [I, I, D, D, D]
    return wire.encode_msg(*f)


def order_status(o: Order) -> bytes:
    """ORDER_STATUS (msg 3), no version field (>= 131); clientId must be the owner's."""
    return wire.encode_msg(
        wire.ORDER_STATUS,
        o.order_id,
        o.status,
        o.filled,
        o.remaining,
        o.avg_fill_price,
        o.perm_id,
        0,
        o.last_fill_price,
        o.client_id,
        "",
        0.0,
    )


def completed_order(version: int, o: Order) -> bytes:
    """COMPLETED_ORDER (msg 101): 96 fields at 178 (appendix 4); no orderId on the wire."""
    f: list[object] = [wire.COMPLETED_ORDER, *wire.contract_fields(o.ins, o.ins.exchange)]
    f += [o.action, o.quantity, o.order_type, _price(o.lmt_price), _price(o.aux_price), o.tif, "", o.account]
    f += ["", 0, o.order_ref, o.perm_id, o.outside_rth, 0, 0, "", "", "", ""]
    if version < MIN_SV_NO_FA_PROFILE:
        f.append("")  # faProfile
    # modelCode .. deltaNeutralAuxPrice
    f += ["", "", "", D, "", 0, "", -1, D, D, D, D, D, I, 0, 0, I, 3, 0, D, 0, "", D]
    # continuousUpdate .. comboLegsDescrip, three empty lists, scale, hedge
    f += [0, 0, D, D, "", 0, 0, 0, I, I, D, ""]
    # clearingAccount, clearingIntent, notHeld, dncPresent, algoStrategy, solicited, status, randomize x2
    f += ["", "", 0, 0, "", 0, o.status, 0, 0]
    f += [0]  # conditionsCount
    f += [D, D, D, 0, 0, "", o.filled, 0, 0, "", 0, 0, 0, o.completed_time, o.completed_status]
    if version >= MIN_SV_PEG_BEST_FIELDS:
        f += [I, I, D, D, D]
    return wire.encode_msg(*f)
