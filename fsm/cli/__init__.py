"""The `ibgw` application (run, status, doctor, demo, diagram, sim); the library never imports it."""

from fsm.cli.app import main

__all__ = ["main"]
