"""An app-config.js for the OHIF Viewer (v2, `@ohif/viewer` 4.x) that browses and
retrieves from radlake's /dicomweb with a bearer token.

OHIF v2 sends a server's `requestOptions.auth` only on its QIDO/metadata calls; its
image loader asks OHIF's signed-in user for a token instead, so a static token would
load the study list and then 401 on every frame. The config therefore signs OHIF's user
in with the token (the redux-oidc USER_FOUND action an OIDC sign-in dispatches), from a
tiny extension's preRegistration, which runs before any request. Every call then carries
`Authorization: Bearer <token>`, and nothing outside app-config.js changes.
"""

from __future__ import annotations

import ipaddress
import json
import re
from urllib.parse import urlsplit

from radlake.errors import ConfigError

OHIF_PACKAGE = "@ohif/viewer@4.12.51"
MAX_URL = 2000
# RFC 3986: a host name's labels, and the characters a path may hold.
HOST_LABELS = re.compile(
    r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.?"
)
URL_PATH = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")


def _valid_host(host: str) -> bool:
    """A DNS name (an internationalised one once IDNA-encoded) or an IP address."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return HOST_LABELS.fullmatch(ascii_host) is not None


def dicomweb_root(base_url: str) -> str:
    """radlake's DICOMweb root under base_url (http(s)://host[:port][/prefix]).

    Raises:
        ConfigError: base_url is not an absolute http(s) URL with a valid host, port
            (1-65535) and path, and without query, fragment or credentials.
    """
    text = base_url.strip().rstrip("/")
    if len(text) > MAX_URL or any(c.isspace() or not c.isprintable() for c in text):
        raise ConfigError(f"not a URL: {base_url[:80]!r} (spaces, controls or too long)")
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError on a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"not a URL: {base_url[:80]!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"expected radlake's base URL as http(s)://host[:port], got {base_url[:80]!r}"
        )
    if "?" in text or "#" in text or "@" in parts.netloc:
        raise ConfigError(
            f"radlake's base URL takes no query, fragment or credentials: {base_url[:80]!r}"
        )
    if not _valid_host(parts.hostname) or port == 0 or not URL_PATH.fullmatch(parts.path):
        raise ConfigError(f"not a valid host, port or path in {base_url[:80]!r}")
    if parts.path.endswith("/dicomweb"):
        return text
    return f"{text}/dicomweb"


def ohif_app_config(root: str, token: str, *, name: str = "radlake") -> str:
    """The text of OHIF's app-config.js for the DICOMweb root, signed in with token.

    Every value is written as a JSON literal, so no URL or name can break out of it.
    """
    server = {
        "name": name,
        "qidoRoot": root,
        "wadoRoot": root,
        "wadoUriRoot": root,
        "qidoSupportsIncludeField": True,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        # radlake's wildcards are `*`/`?` (PS3.18), not fuzzy person-name matching.
        "supportsFuzzyMatching": False,
    }
    return f"""// OHIF Viewer ({OHIF_PACKAGE}) configuration written by `radlake ohif-config`.
// It holds a dicomweb token, which reads the lake's de-identified objects at /dicomweb
// and nothing else. Anyone who loads this page can read it: serve the page only where
// that is meant, and revoke the token (`radlake token revoke NAME`) when unneeded.
window.config = {{
  routerBasename: '/',
  showStudyList: true,
  // Sign OHIF's user in with the token before any request: OHIF's image loader only
  // sends a signed-in user's token (a server's requestOptions never reach it).
  extensions: [
    {{
      id: 'radlake-token',
      preRegistration: function () {{
        window.store.dispatch({{
          type: 'redux-oidc/USER_FOUND',
          payload: {{ access_token: {json.dumps(token)} }},
        }});
      }},
    }},
  ],
  servers: {{ dicomWeb: [{json.dumps(server, indent=4)}] }},
}};
"""
