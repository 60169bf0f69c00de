"""IB refusing one request: the error code and text its client hears for that request's id."""

from __future__ import annotations


class Refused(Exception):
    """Raised while parsing or checking a request; its handler answers the request's id with
    `code` and `text`. Not a ValueError: that means an unreadable request (error 320)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def invalid(tag: str, cause: str) -> Refused:
    """321, worded as TWS words a request that fails validation; `tag` names its check."""
    return Refused(321, f"Error validating request.-'{tag}' : cause - {cause}")
