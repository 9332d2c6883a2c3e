"""OAuth errors: each class names its RFC error code and HTTP status.

One place (:func:`error_response`) turns an error into a JSON response; the
authorization endpoint turns them into redirects itself, only after the client
and redirect URI are validated (RFC 9700 section 4.11: no open redirects).
"""

from __future__ import annotations

from starlette.responses import JSONResponse

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    error = "invalid_request"
    status = 400

    def __init__(self, description: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.headers = headers or {}


class InvalidRequest(OAuthError):
    """RFC 6749 section 5.2: missing, repeated or malformed parameter."""


class InvalidClient(OAuthError):
    """RFC 6749 section 5.2: client authentication failed or unknown client.
    MCP clients re-register on exactly this answer."""

    error = "invalid_client"
    status = 401


class InvalidGrant(OAuthError):
    """RFC 6749 section 5.2: code or refresh token invalid, expired, revoked,
    replayed, or bound to another client or redirect URI."""

    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class UnsupportedResponseType(OAuthError):
    error = "unsupported_response_type"


class InvalidScope(OAuthError):
    error = "invalid_scope"


class InvalidTarget(OAuthError):
    """RFC 8707 section 2: the resource is not one this server issues for."""

    error = "invalid_target"


class AccessDenied(OAuthError):
    error = "access_denied"
    status = 403


class LoginRequired(OAuthError):
    """OpenID Connect Core section 3.1.2.6, for prompt=none."""

    error = "login_required"


class ConsentRequired(OAuthError):
    error = "consent_required"


class InvalidRedirectUri(OAuthError):
    """RFC 7591 section 3.2.2."""

    error = "invalid_redirect_uri"


class InvalidClientMetadata(OAuthError):
    """RFC 7591 section 3.2.2."""

    error = "invalid_client_metadata"


class InvalidToken(OAuthError):
    """RFC 6750 section 3.1."""

    error = "invalid_token"
    status = 401


class InsufficientScope(OAuthError):
    error = "insufficient_scope"
    status = 403


class SlowDown(OAuthError):
    """Rate limited; answered 429 with Retry-After."""

    error = "slow_down"
    status = 429


class PayloadTooLarge(OAuthError):
    """A request body over its limit (RFC 9110 section 15.5.14)."""

    status = 413


class RequestTimeout(OAuthError):
    """The body did not arrive within body_timeout (RFC 9110 section 15.5.9)."""

    status = 408


class TemporarilyUnavailable(OAuthError):
    """RFC 6749 section 4.1.2.1: the store or upstream is away; 503 with Retry-After."""

    error = "temporarily_unavailable"
    status = 503


def error_response(exc: OAuthError) -> JSONResponse:
    body = {"error": exc.error}
    if exc.description:
        body["error_description"] = exc.description
    return JSONResponse(body, status_code=exc.status, headers={**NO_STORE, **exc.headers})
