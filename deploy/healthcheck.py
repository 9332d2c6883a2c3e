"""The image's HEALTHCHECK: is `sidecar serve` answering GET /oauth/healthz?

Liveness only ("the process answers"), on the container's own loopback:

- https when SIDECAR_TLS_CERTFILE is set (the sidecar serves TLS itself),
  http otherwise; when that scheme fails the other is tried once, so TLS set
  in a config file (SIDECAR_CONFIG's tls_certfile) is covered too;
- the certificate is not verified. The probe asks 127.0.0.1, a name a real
  certificate does not carry, sends nothing secret and reads only the status;
  whether the certificate is valid for the public name, and how many days it
  has left, is `sidecar doctor`'s check, not a reason to restart the container
  (a restart does not renew a certificate). Kubernetes' HTTPS probes do the same.

Exit 0 when healthy, 1 otherwise (what HEALTHCHECK expects). Standard library only.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request

PATH = "/oauth/healthz"
ANY_ADDRESS = {"", "0.0.0.0", "::", "[::]"}


def target_host() -> str:
    host = os.environ.get("SIDECAR_HOST", "").strip()
    if host in ANY_ADDRESS:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def schemes() -> list[str]:
    tls = bool(os.environ.get("SIDECAR_TLS_CERTFILE", "").strip())
    return ["https", "http"] if tls else ["http", "https"]


def answers(url: str, timeout: float) -> bool:
    unverified = ssl.create_default_context()  # liveness on loopback: see above
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    try:
        # The scheme is http or https, never file: or another.
        with urllib.request.urlopen(url, timeout=timeout, context=unverified) as response:  # noqa: S310
            return bool(response.status == 200)
    except (OSError, ValueError):  # URLError, HTTPError, resets and timeouts are OSErrors
        return False


def main() -> int:
    port = os.environ.get("SIDECAR_PORT", "8080").strip() or "8080"
    for scheme in schemes():
        url = f"{scheme}://{target_host()}:{port}{PATH}"
        if answers(url, timeout=1.2):
            return 0
    print(f"unhealthy: no 200 from {PATH} on port {port} over http or https", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
