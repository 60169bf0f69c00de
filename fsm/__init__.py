"""ibgw-fsm: an explicit state machine that owns one IB Gateway connection."""
