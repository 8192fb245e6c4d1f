"""The event log: schema, codec, append, read and verify.

This package knows nothing of actions beyond the event codec, so that another backend can
stand behind the same interface later.
"""
