"""Who may call the server: one API key, read from a file, checked on every request but the page.

    key = read_api_key("~/.config/speechwire/key")           # `speechwire serve RUN --api-key-file PATH`
    app.add_middleware(RequireApiKey, key=key)

Requests must carry `Authorization: Bearer KEY` (what the `openai` client sends for `api_key=KEY`);
others get 401 in OpenAI's error shape. The page at `/` is open (it holds no data and asks for the
key itself). The key is never logged or echoed: a wrong key is not repeated in the answer.
"""

from __future__ import annotations

import hmac
import stat
from pathlib import Path

from speechwire.serve.errors import drain_body, error_body, send_json

OPEN_PATHS = frozenset({"/", "/favicon.ico"})  # the page; everything else needs the key
DRAIN_BYTES = 64 * 2**20  # a refused upload is read (and dropped) up to this size, so the client reads the 401


class ApiKeyError(ValueError):
    """The --api-key-file cannot serve as a key file."""


def read_api_key(path: str | Path) -> str:
    """The key in `path`: the file's one line, surrounding whitespace removed.

    Raises:
        ApiKeyError: the file is missing, unreadable, empty, or holds more than one word.
    """
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ApiKeyError(f"--api-key-file {p}: no such file; write the key on one line, e.g. "
                          f"`python -c \"import secrets; print(secrets.token_urlsafe(32))\" > {p}`") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ApiKeyError(f"--api-key-file {p}: cannot read it as UTF-8 text ({type(e).__name__})") from None
    key = text.strip()
    if not key:
        raise ApiKeyError(f"--api-key-file {p}: the file is empty; write the key on one line")
    if any(c.isspace() for c in key) or not key.isprintable():
        raise ApiKeyError(f"--api-key-file {p}: the key must be one line of printable characters without spaces")
    return key


def readable_by_others(path: str | Path) -> bool:
    """True when group or others may read the key file (the server warns: chmod 600)."""
    return bool(Path(path).expanduser().stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))


class RequireApiKey:
    """ASGI middleware: HTTP requests outside OPEN_PATHS need `Authorization: Bearer <key>`."""

    def __init__(self, app, key: str) -> None:
        self.app = app
        self.expected = b"Bearer " + key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization")
        if given is not None and hmac.compare_digest(given.strip(), self.expected):
            await self.app(scope, receive, send)
            return
        if given is None:
            message = ("no API key: send it in an Authorization header, `Authorization: Bearer KEY` (the openai "
                       "client does for api_key=KEY); the server's owner has the key (--api-key-file)")
        else:
            message = "incorrect API key (the Authorization header must be `Bearer KEY`, with the server's key)"
        await drain_body(receive, DRAIN_BYTES)
        await send_json(send, 401, error_body(message, code="invalid_api_key"), (b"www-authenticate", b"Bearer"))

