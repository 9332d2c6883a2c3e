"""The session bridge: who the browser's user is, according to the app."""

from sidecar.session.bridge import SessionBridge, SessionUnavailable, User

__all__ = ["SessionBridge", "SessionUnavailable", "User"]
