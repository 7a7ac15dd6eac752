"""The users of the Subsonic API (``musicsim.search.serve --subsonic``): one JSON file, readable by its owner only.

    python -m musicsim.search.serve --add_user=NAME [--users=FILE]     # reads the password from stdin

The file (``--users``; default ``$XDG_CONFIG_HOME/musicsim/users.json``, else
``~/.config/musicsim/users.json``) is written with mode 0600 in a folder created with mode 0700, through
a temporary sibling (``musicsim.atomic``), and refused when anyone but its owner may read or write it,
or when it lies inside the served index folder::

    {"format": "musicsim-users", "version": 1,
     "users": {"NAME": {"password": "...", "api_keys": ["..."], "created": "2026-...Z"}}}

**The password is stored as given, not hashed.** Subsonic's token authentication sends
``t = md5(password + salt)`` with a fresh salt per request, so the server must know the password itself
to check a token; a hash would make token authentication, which every current player uses, impossible.
The file's mode is what protects it: use a password made for this server only. The API keys
(OpenSubsonic ``apiKeyAuthentication``) are random, 32 bytes in URL-safe base64; they are listed in the
file, and running ``--add_user`` again for the same name replaces the password and the key, revoking the
old ones. Credentials are compared in constant time (``hmac.compare_digest``).
"""
from __future__ import annotations

import datetime
import getpass
import hmac
import json
import os
import secrets
import stat
import sys
from dataclasses import dataclass
from typing import IO, Mapping

from musicsim.atomic import atomic_path

FORMAT = "musicsim-users"
VERSION = 1
MAX_NAME_LENGTH = 64
MIN_PASSWORD_LENGTH = 1
API_KEY_BYTES = 32


class UsersFileError(ValueError):
    """A users file that cannot be read or written, or a user that cannot be added: the message says which and why."""


@dataclass(frozen=True)
class User:
    """One user of the Subsonic API: its name, password (see the module docstring) and API keys."""

    name: str
    password: str
    api_keys: tuple[str, ...]


def default_users_file(*, environ: Mapping[str, str] | None = None) -> str:
    """``$XDG_CONFIG_HOME/musicsim/users.json``, else ``~/.config/musicsim/users.json``."""
    environ = os.environ if environ is None else environ
    config_home = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(os.path.abspath(config_home), "musicsim", "users.json")


def check_outside(*, users_file: str, folder: str) -> None:
    """Raise UsersFileError when ``users_file`` lies inside ``folder`` (the index: passwords are never kept
    where an index is copied or shared)."""
    users_real = os.path.realpath(users_file)
    folder_real = os.path.realpath(folder)
    if os.path.commonpath([users_real, folder_real]) == folder_real:
        raise UsersFileError(f"the users file {users_file} lies inside the index folder {folder}: keep "
                             "passwords out of the index (--users=FILE elsewhere)")


def check_name(name: str) -> str:
    """A user name: 1 to 64 printable characters, no surrounding spaces."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH or name != name.strip() \
            or not name.isprintable():
        raise UsersFileError(f"a user name is 1 to {MAX_NAME_LENGTH} printable characters without surrounding "
                             f"spaces, got {name!r}")
    return name


def _check_private(path: str, status: os.stat_result) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise UsersFileError(f"the users file {path} is not a regular file")
    if status.st_mode & 0o077:
        raise UsersFileError(f"the users file {path} has mode {stat.S_IMODE(status.st_mode):04o}: it holds "
                             f"passwords, so it must be readable by its owner only (chmod 600 {path})")
    if hasattr(os, "getuid") and status.st_uid != os.getuid():
        raise UsersFileError(f"the users file {path} belongs to another user (uid {status.st_uid})")


def _parse(path: str, text: str) -> dict[str, User]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsersFileError(f"the users file {path} is not valid JSON: {error}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or not isinstance(document.get("users"), dict):
        raise UsersFileError(f"the users file {path} is not a musicsim users file (format {FORMAT!r} with 'users')")
    if document.get("version") != VERSION:
        raise UsersFileError(f"the users file {path} has version {document.get('version')!r}; this musicsim reads "
                             f"version {VERSION}")
    users = {}
    for name, record in document["users"].items():
        if not isinstance(record, dict) or not isinstance(record.get("password"), str) \
                or not isinstance(record.get("api_keys", []), list) \
                or not all(isinstance(key, str) and key for key in record.get("api_keys", [])):
            raise UsersFileError(f"the users file {path}: user {name!r} needs a 'password' string and an "
                                 "'api_keys' list of strings")
        users[name] = User(name=name, password=record["password"], api_keys=tuple(record.get("api_keys", [])))
    return users


def load_users(*, users_file: str) -> dict[str, User]:
    """The users of ``users_file`` by name.

    Raises
    ------
    UsersFileError
        When the file is missing, unreadable, not private (mode 0600, this user's), or malformed.
    """
    try:
        with open(users_file, "rb") as f:
            _check_private(users_file, os.fstat(f.fileno()))
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        raise UsersFileError(f"no users file {users_file}: add a user with "
                             f"python -m musicsim.search.serve --add_user=NAME --users={users_file}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsersFileError(f"cannot read the users file {users_file}: {error}") from None
    return _parse(users_file, text)


def _write(users_file: str, users: Mapping[str, User], created: Mapping[str, str]) -> None:
    folder = os.path.dirname(os.path.abspath(users_file))
    if not os.path.isdir(folder):
        os.makedirs(folder, mode=0o700)
    document = {"format": FORMAT, "version": VERSION,
                "users": {name: {"password": user.password, "api_keys": list(user.api_keys),
                                 "created": created.get(name)} for name, user in sorted(users.items())}}
    with atomic_path(users_file) as temporary:
        # Created private: the password is never readable by others, not even for an instant.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())


def add_user(*, users_file: str, name: str, password: str) -> str:
    """Add ``name`` to ``users_file`` (created when missing), or replace its password and API key.

    Returns
    -------
    str
        The user's new API key (its old keys are revoked).

    Raises
    ------
    UsersFileError
        For a bad name, an empty password, or a users file that cannot be read or written.
    """
    check_name(name)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsersFileError("the password is empty")
    if "\n" in password or "\r" in password:
        raise UsersFileError("the password holds a line break")
    users: dict[str, User] = {}
    created: dict[str, str] = {}
    if os.path.lexists(users_file):
        users = load_users(users_file=users_file)
        with open(users_file, encoding="utf-8") as f:
            created = {n: r.get("created") for n, r in json.load(f)["users"].items()}
    api_key = secrets.token_urlsafe(API_KEY_BYTES)
    users[name] = User(name=name, password=password, api_keys=(api_key,))
    created[name] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        _write(users_file, users, created)
    except OSError as error:
        raise UsersFileError(f"cannot write the users file {users_file}: {error}") from None
    return api_key


def read_password(*, stdin: IO[str] | None = None) -> str:
    """The new password: asked twice with a hidden prompt on a terminal, else the first line of ``stdin``."""
    stdin = sys.stdin if stdin is None else stdin
    if stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise UsersFileError("the two passwords differ")
        return password
    line = stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def add_user_command(*, name: str, users_file: str | None, index_dir: str | None = None,
                     stdin: IO[str] | None = None) -> int:
    """``python -m musicsim.search.serve --add_user=NAME [--users=FILE] [--index=DIR]``: read the password,
    add the user, print where and its API key; returns the exit status (2 on bad input)."""
    users_file = os.path.abspath(users_file or default_users_file())
    try:
        if index_dir:
            check_outside(users_file=users_file, folder=index_dir)
        check_name(name)
        api_key = add_user(users_file=users_file, name=name, password=read_password(stdin=stdin))
    except (UsersFileError, EOFError, KeyboardInterrupt) as error:
        print(f"error: {error or 'no password given'}", file=sys.stderr)
        return 2
    print(f"user {name!r} written to {users_file} (mode 0600)\napi key: {api_key}")
    return 0


def constant_time_equal(a: str, b: str) -> bool:
    """Whether two strings are equal, in a time that does not depend on where they differ."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


class UsersFile:
    """The users of a file, read again when the file changes (so ``--add_user`` needs no restart).

    Parameters
    ----------
    users_file : path of the users file
    """

    def __init__(self, *, users_file: str):
        self.path = os.path.abspath(users_file)
        self._signature: tuple[int, int, int] | None = None
        self._users: dict[str, User] = {}
        self.problem: str | None = None
        self.refresh()

    def refresh(self) -> None:
        """Re-read the file when its size, mtime or inode changed; a file that became unreadable or
        insecure leaves no users (every request is refused) and records why in ``problem``."""
        try:
            status = os.stat(self.path)
            signature = (status.st_mtime_ns, status.st_size, status.st_ino)
        except OSError:
            signature = None
        if signature == self._signature and signature is not None:
            return
        self._signature = signature
        try:
            self._users = load_users(users_file=self.path)
            self.problem = None
        except UsersFileError as error:
            self._users = {}
            self.problem = str(error)

    def user(self, name: str) -> User | None:
        """The user called ``name`` (None when unknown)."""
        self.refresh()
        return self._users.get(name)

    def user_of_api_key(self, api_key: str) -> User | None:
        """The user holding ``api_key``: every key is compared (constant time each), none skipped."""
        self.refresh()
        found = None
        for user in self._users.values():
            for key in user.api_keys:
                if constant_time_equal(key, api_key) and found is None:
                    found = user
        return found
