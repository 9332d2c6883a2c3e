"""Logs, request ids, access lines and health probes."""
