"""Cityscapes credentials and login, through cityscapesscripts' downloader.

Credentials come from, in this order:
1. the environment variables CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD;
2. a `machine www.cityscapes-dataset.com login USER password PASSWORD` line in ~/.netrc (or $NETRC),
   which must not be accessible by group or others (`chmod 600`);
3. the credentials file cityscapesscripts' own `csDownload` stores (answer "y" to its question).

The login itself is `cityscapesscripts.download.downloader.login()` (its URL, form and success
check); it asks for the username and password with `input`/`getpass`, so for sources 1 and 2 its
prompts are answered here (and its offer to store them declined) instead of reading a terminal.

No message, log line or exception chain ever holds the password: parser and server texts that
could quote it are never passed on (a netrc error names only the file and line).
"""

from __future__ import annotations

import netrc
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import requests
from cityscapesscripts.download import downloader

from lc.data.errors import CredentialsError, DownloadError

CITYSCAPES_HOST = "www.cityscapes-dataset.com"
CITYSCAPES_URL = f"https://{CITYSCAPES_HOST}"
CITYSCAPES_LOGIN_URL = f"{CITYSCAPES_URL}/login"
_ENV_SOURCE = "the environment variables CITYSCAPES_USERNAME / CITYSCAPES_PASSWORD"
_prompt_lock = threading.Lock()  # the prompt answers are module globals of the downloader


@dataclass(frozen=True)
class Credentials:
    """A Cityscapes account; `source` says where it came from (the password never appears in repr)."""

    user: str
    password: str = field(repr=False)
    source: str


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced (a last guard for texts from libraries)."""
    return text.replace(secret, "***") if secret else text


def netrc_file() -> Path:
    return Path(os.environ.get("NETRC") or Path.home() / ".netrc")


def stored_credentials_file() -> Path:
    """Where cityscapesscripts' csDownload stores credentials when asked to."""
    appname = downloader.__name__.split(".")[0]
    return Path(downloader.appdirs.user_data_dir(appname, "cityscapes")) / "credentials.json"


_NETRC_FOLLOWERS = ("login", "user", "account", "password")  # each takes a value
_NETRC_ENTRIES = ("machine", "default", "macdef")


def _netrc_grammar_line(text: str) -> int | None:
    """The line of the first token netrc's grammar does not allow, read the way netrc reads it: an
    entry is `machine NAME` (or `default`) and keyword-value pairs, possibly over several lines.
    A keyword whose value is missing (the next token starts an entry) is the bad line, not the next
    entry's line that netrc stops at. None when no such token is found (or macdef makes it unclear)."""
    tokens = [(number, token) for number, line in enumerate(text.splitlines(), 1)
              if not line.lstrip().startswith("#") for token in line.split()]
    in_entry, i = False, 0
    while i < len(tokens):
        number, token = tokens[i]
        if token == "macdef":
            return None
        if token in _NETRC_ENTRIES:
            if token == "machine" and (i + 1 == len(tokens) or tokens[i + 1][1] in _NETRC_ENTRIES):
                return number
            in_entry, i = True, i + (2 if token == "machine" else 1)
            continue
        if not in_entry:
            return number  # a token outside any entry
        if token in _NETRC_FOLLOWERS:
            if i + 1 == len(tokens) or tokens[i + 1][1] in _NETRC_ENTRIES:
                return number  # the keyword's value is missing
            i += 2
            continue
        return number  # neither a keyword nor a keyword's value: e.g. `login bob s3cret`


def _netrc_error_line(path: Path, exc: netrc.NetrcParseError) -> int:
    """The line netrc's complaint is about: found by reading the file the way netrc does
    (`_netrc_grammar_line`), else the line holding the token netrc names (its own line number is
    often the next line, where its look-ahead stopped). Tokens are used to find the line, never shown."""
    text = path.read_text(errors="replace")
    found = _netrc_grammar_line(text)
    if found is not None:
        return found
    match = re.search(r"token '(.*)'", exc.msg or "")
    if match is None:
        return int(exc.lineno or 0)
    found = int(exc.lineno or 0)
    for number, line in enumerate(text.splitlines(), 1):
        if number <= (exc.lineno or number) and match.group(1) in line.split():
            found = number
    return found


def _from_netrc(path: Path) -> Credentials | None:
    mode = path.stat().st_mode
    if mode & 0o077:
        raise CredentialsError(f"{path} holds passwords but is accessible by group or others (mode "
                               f"{mode & 0o777:03o}); refusing to read it. Run `chmod 600 {path}`")
    # Errors are raised outside the `except` blocks so that no exception chain keeps the parser's
    # message, which quotes the offending token (possibly the password).
    problem = None
    try:
        entry = netrc.netrc(str(path)).authenticators(CITYSCAPES_HOST)
    except netrc.NetrcParseError as exc:
        problem = (f"{path}, line {_netrc_error_line(path, exc)}: cannot parse this line. Write it as "
                   f"`machine {CITYSCAPES_HOST} login USER password PASSWORD` (both keywords are required)")
    except UnicodeDecodeError:
        problem = f"{path} is not UTF-8 text; rewrite it as plain text"
    except OSError as exc:
        problem = f"cannot read {path}: {exc.strerror}"
    if problem is not None:
        raise CredentialsError(problem)
    if entry is None:
        return None
    user, _, password = entry
    if not user or not password:
        raise CredentialsError(f"{path}: the entry for {CITYSCAPES_HOST} has no "
                               f"{'login' if not user else 'password'}; write it as `machine "
                               f"{CITYSCAPES_HOST} login USER password PASSWORD`")
    return Credentials(user, password, str(path))


def cityscapes_credentials() -> Credentials | None:
    """The account from the environment or netrc; None when only cityscapesscripts' stored file has it.

    Raises `CredentialsError` (saying how to provide one) when there is none at all.
    """
    user, password = os.environ.get("CITYSCAPES_USERNAME"), os.environ.get("CITYSCAPES_PASSWORD")
    if user and password:
        return Credentials(user, password, _ENV_SOURCE)
    if user or password:
        missing = "CITYSCAPES_PASSWORD" if user else "CITYSCAPES_USERNAME"
        raise CredentialsError(f"{missing} is not set (its partner is); set both or neither")
    path = netrc_file()
    if path.exists():
        found = _from_netrc(path)
        if found is not None:
            return found
    if stored_credentials_file().is_file():
        return None
    raise CredentialsError(
        "Cityscapes downloads need an account (register at https://www.cityscapes-dataset.com/register/). "
        "Provide the credentials either as environment variables CITYSCAPES_USERNAME and "
        f"CITYSCAPES_PASSWORD, or as a line `machine {CITYSCAPES_HOST} login <user> password <password>` "
        f"in {path} (chmod 600). Alternatively set data.mirror to a folder holding the zip files."
    )


class _TimeoutSession(requests.Session):
    """A session whose requests time out (the downloader's login sets none)."""

    def __init__(self, timeout: float):
        super().__init__()
        self._timeout = timeout

    def request(self, *args, **kwargs):
        kwargs.setdefault("timeout", self._timeout)
        return super().request(*args, **kwargs)


def _answering_prompts(credentials: Credentials | None, timeout: float) -> dict[str, object]:
    """Replacements for the downloader's globals: prompt answers, no stored file, sessions with a timeout."""
    patches: dict[str, object] = {
        "requests": SimpleNamespace(Session=lambda: _TimeoutSession(timeout)),
    }
    if credentials is not None:
        answers = iter([credentials.user, "n"])  # username, then "store credentials unencrypted?" -> no
        patches["input"] = lambda prompt="": next(answers)
        patches["getpass"] = SimpleNamespace(getpass=lambda prompt="": credentials.password)
        # no stored credentials file may override the given ones
        patches["appdirs"] = SimpleNamespace(user_data_dir=lambda *args, **kwargs: os.devnull)
    return patches


def _with_patched(module: object, patches: dict[str, object], call: Callable[[], object]) -> object:
    with _prompt_lock:
        saved = {name: getattr(module, name) for name in patches}
        try:
            for name, value in patches.items():
                setattr(module, name, value)
            return call()
        finally:
            for name, value in saved.items():
                setattr(module, name, value)


def cityscapes_session(timeout: float) -> requests.Session:
    """A logged-in session, from `cityscapesscripts.download.downloader.login()`, non-interactive."""
    credentials = cityscapes_credentials()
    secret = credentials.password if credentials else None
    source = credentials.source if credentials else f"cityscapesscripts' {stored_credentials_file()}"
    # As above, raise outside the `except` blocks: a requests exception holds the login request,
    # whose body holds the password.
    problem: Exception | None = None
    try:
        session = _with_patched(downloader, _answering_prompts(credentials, timeout), downloader.login)
    except requests.RequestException as exc:
        status = getattr(exc.response, "status_code", None)
        reason = f"HTTP {status}" if status is not None else type(exc).__name__
        problem = DownloadError(f"cannot log in at {CITYSCAPES_LOGIN_URL}: {reason}; the server may be "
                                "down, try again later (or set data.mirror)")
    except Exception as exc:  # the downloader raises a bare Exception("Bad credentials.")
        if "credentials" not in str(exc).lower():
            raise
        user = credentials.user if credentials else "(stored)"
        problem = CredentialsError(f"Cityscapes login rejected for user {redact(repr(user), secret)} "
                                   f"(credentials from {source}); check the username and password there")
    if problem is not None:
        raise problem
    assert isinstance(session, requests.Session)
    return session
