"""Capability policies, the kernel sandbox of one action's process, storage quotas, retention.

Keep this module free of imports: ``python -I -m sp.security.enter`` imports it first, and the
shim's startup time is paid by every sandboxed action.
"""
