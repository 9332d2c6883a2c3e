"""The session bridge: who the browser's user is, according to the app."""

from sidecar.session.bridge import SessionBridge, User

__all__ = ["SessionBridge", "User"]
