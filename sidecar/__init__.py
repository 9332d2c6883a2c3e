"""The Convex OAuth sidecar."""

__version__ = "0.1.0"
