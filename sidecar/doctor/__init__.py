"""``sidecar doctor URL``: a deployment checked from outside, as MCP clients
and the people signing in through them meet it (see sidecar.doctor.run)."""

from sidecar.doctor.report import Check, Report
from sidecar.doctor.run import diagnose

__all__ = ["Check", "Report", "diagnose"]
