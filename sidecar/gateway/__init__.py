"""Bearer enforcement for the MCP paths the sidecar protects."""

from sidecar.gateway.guard import Gateway

__all__ = ["Gateway"]
