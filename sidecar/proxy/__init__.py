"""The streaming reverse proxy: everything the sidecar does not own goes upstream."""

from sidecar.proxy.http import ProxyApp

__all__ = ["ProxyApp"]
