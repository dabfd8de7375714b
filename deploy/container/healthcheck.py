"""Container HEALTHCHECK: exit 0 when the gateway's /healthz answers 200, else 1.

The slim base image has no curl; this uses the standard library only. The URL comes from
HMAC_GATEWAY_HEALTH_URL (default http://127.0.0.1:8443/healthz) and must stay on loopback.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8443/healthz"


def main() -> int:
    url = os.environ.get("HMAC_GATEWAY_HEALTH_URL", DEFAULT_URL)
    if not url.startswith(("http://127.0.0.1:", "http://[::1]:", "http://localhost:")):
        print(f"healthcheck: {url!r} is not a loopback http URL", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - loopback http only, checked above
            return 0 if answer.status == 200 else 1
    except (OSError, urllib.error.URLError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
