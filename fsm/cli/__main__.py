"""`python -m fsm.cli`: the `ibgw` command."""

from fsm.cli import main

main()
