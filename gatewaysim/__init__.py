"""A simulated IB Gateway that speaks the TWS API wire protocol, with fault injection."""
