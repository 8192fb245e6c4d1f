"""Read models rebuilt from the event log: actions, queue, metrics, rollback plans, checkpoints.

A projection reads only event data (envelope included), never the wall clock or the
environment, so that rebuilding from the log reproduces its rows exactly.
"""
