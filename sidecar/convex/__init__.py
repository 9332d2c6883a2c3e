"""What Convex needs: the provider entry that accepts the sidecar's Convex
tokens, and the tokens themselves."""

from sidecar.convex.auth_config import auth_config_snippet, jwks_data_uri, providers
from sidecar.convex.token import ConvexTokens

__all__ = ["ConvexTokens", "auth_config_snippet", "jwks_data_uri", "providers"]
