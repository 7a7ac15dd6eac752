"""Who is asking: the Subsonic API's three ways to authenticate, checked against the users file.

* ``u`` + ``t`` + ``s``: token ``t = md5(password + salt)`` (the way current players use);
* ``u`` + ``p``: the password in clear text or hex-encoded after ``enc:``;
* ``apiKey`` (OpenSubsonic ``apiKeyAuthentication``), alone: with ``u``, ``p``, ``t`` or ``s`` it is
  error 43.

Every comparison is constant-time (``hmac.compare_digest``); an unknown user is compared against a
stand-in password, so the answer takes as long as for a known one. Errors: 10 a parameter is missing,
40 wrong user name or password, 43 conflicting mechanisms, 44 an invalid API key (codes 41 and 42 are
never needed: every mechanism is supported).
"""
from __future__ import annotations

import binascii
import hashlib
import hmac
from typing import Mapping

from musicsim.search.subsonic.responses import (CONFLICTING_MECHANISMS, INVALID_API_KEY, MISSING_PARAMETER,
                                                WRONG_CREDENTIALS, SubsonicError)
from musicsim.search.users import User, UsersFile

# Compared against when the user is unknown, so timing does not tell which names exist.
_STAND_IN_PASSWORD = "musicsim-no-such-user-\x00"


def _token(password: str, salt: str) -> str:
    return hashlib.md5((password + salt).encode("utf-8")).hexdigest()


def _decode_password(p: str) -> str:
    if not p.startswith("enc:"):
        return p
    try:
        return binascii.unhexlify(p[4:]).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise SubsonicError(WRONG_CREDENTIALS, "Wrong username or password: 'p=enc:' must be followed by the "
                                               "password's UTF-8 bytes in hex") from None


def authenticate(params: Mapping[str, str], users: UsersFile) -> User:
    """The user the request's credentials name, or raise SubsonicError (10, 40, 43, 44)."""
    api_key = params.get("apiKey")
    if api_key is not None:
        others = [name for name in ("u", "p", "t", "s") if params.get(name) is not None]
        if others:
            raise SubsonicError(CONFLICTING_MECHANISMS, "Multiple conflicting authentication mechanisms "
                                                        f"provided: apiKey with {', '.join(others)}")
        user = users.user_of_api_key(api_key)
        if user is None:
            raise SubsonicError(INVALID_API_KEY, "Invalid API key")
        return user
    name = params.get("u")
    if not name:
        raise SubsonicError(MISSING_PARAMETER, "Required parameter is missing: u (or apiKey)")
    token, salt, password = params.get("t"), params.get("s"), params.get("p")
    if password is not None and (token is not None or salt is not None):
        raise SubsonicError(CONFLICTING_MECHANISMS, "Multiple conflicting authentication mechanisms provided: "
                                                    "p with t/s")
    if password is None and (token is None or salt is None):
        missing = "p, or t and s" if token is None and salt is None else ("s" if salt is None else "t")
        raise SubsonicError(MISSING_PARAMETER, f"Required parameter is missing: {missing}")
    user = users.user(name)
    known = user.password if user is not None else _STAND_IN_PASSWORD
    if password is not None:
        matches = hmac.compare_digest(_decode_password(password).encode("utf-8"), known.encode("utf-8"))
    else:
        matches = hmac.compare_digest(token.lower().encode("utf-8", "replace"), _token(known, salt).encode("ascii"))
    if user is None or not matches:
        raise SubsonicError(WRONG_CREDENTIALS, "Wrong username or password")
    return user
