"""Can a package registry be reached from here? Tests that install from PyPI or npm ask once
per session and skip, saying why, when the answer is no: offline is not a failure of sp."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request

PROBE_TIMEOUT_S = 5.0  # a reachable registry answers a HEAD in well under a second

PYPI = "https://pypi.org/simple/six/"
NPM = "https://registry.npmjs.org/is-number"


def unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why ``url`` cannot be reached (no name resolution, no route, refused, timed out, TLS
    failed), or None when something answered it over HTTP.

    Any HTTP answer counts as reachable, an error status included: the registry (or a proxy in
    its place) is there, so the tests run and report whatever is wrong instead of hiding it.
    """
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError:  # an answer, even if an unhappy one
        return None
    except urllib.error.URLError as e:  # wraps the socket's or the resolver's error
        return f"{url}: {e.reason}"
    except (OSError, http.client.HTTPException) as e:  # timed out, reset, or not HTTP at all
        return f"{url}: {e!r}"
