"""The ``subsonic-response`` envelope in the three formats of the Subsonic API: XML (the default), JSON
and JSONP.

An answer is built once as plain Python data and written in the asked format by one rule, so every
endpoint says the same thing in XML and JSON:

* a scalar (str, int, float, bool) is an XML attribute / a JSON value (``true``/``false`` in XML too);
* a dict is a child element / a JSON object;
* a list is repeated child elements of that name / a JSON array (a list of scalars: elements whose text
  is the value);
* the key ``value`` is an element's text (``<genre songCount="3">Rock</genre>`` / ``{"value": "Rock",
  "songCount": 3}``), as the Subsonic JSON convention has it;
* None is left out.

XML is in the namespace ``http://subsonic.org/restapi``; characters XML 1.0 cannot hold (control
characters a tag might carry) are dropped from XML only.
"""
from __future__ import annotations

import json
import re
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from fastapi.responses import Response

from musicsim import __version__ as MUSICSIM_VERSION

API_VERSION = "1.16.1"
SERVER_TYPE = "musicsim"
SERVER_VERSION = MUSICSIM_VERSION
NAMESPACE = "http://subsonic.org/restapi"
FORMATS = ("xml", "json", "jsonp")
XML_MEDIA_TYPE = "text/xml; charset=utf-8"
JSON_MEDIA_TYPE = "application/json"
JSONP_MEDIA_TYPE = "application/javascript; charset=utf-8"
# A JSONP callback is a JavaScript name (dotted), nothing that could end the call and run more code.
CALLBACK = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]{0,63}(\.[A-Za-z_$][A-Za-z0-9_$]{0,63}){0,4}$")
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

# Error codes of the Subsonic API (OpenSubsonic adds 41 to 44).
GENERIC, MISSING_PARAMETER, WRONG_CREDENTIALS, TOKEN_NOT_SUPPORTED, MECHANISM_NOT_SUPPORTED, \
    CONFLICTING_MECHANISMS, INVALID_API_KEY, NOT_AUTHORIZED, NOT_FOUND = 0, 10, 40, 41, 42, 43, 44, 50, 70


class SubsonicError(Exception):
    """A request answered by a Subsonic error: ``code`` (0, 10, 40-44, 50, 70) and a message saying why."""

    def __init__(self, code: int, message: str):
        self.code = code
        self.message = message
        super().__init__(f"error {code}: {message}")


def envelope(status: str) -> dict[str, Any]:
    """The attributes every ``subsonic-response`` carries."""
    return {"status": status, "version": API_VERSION, "type": SERVER_TYPE, "serverVersion": SERVER_VERSION,
            "openSubsonic": True}


def _xml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return _NOT_XML.sub("", str(value))


def _xml_element(name: str, content: Any, out: list[str]) -> None:
    if not isinstance(content, dict):
        out.append(f"<{name}>{escape(_xml_scalar(content))}</{name}>")
        return
    attributes = []
    children: list[tuple[str, Any]] = []
    text = None
    for key, value in content.items():
        if value is None:
            continue
        if key == "value" and not isinstance(value, (dict, list)):
            text = _xml_scalar(value)
        elif isinstance(value, dict):
            children.append((key, value))
        elif isinstance(value, list):
            children.extend((key, item) for item in value if item is not None)
        else:
            attributes.append(f" {key}={quoteattr(_xml_scalar(value))}")
    out.append(f"<{name}{''.join(attributes)}")
    if not children and text is None:
        out.append("/>")
        return
    out.append(">")
    if text is not None:
        out.append(escape(text))
    for key, child in children:
        _xml_element(key, child, out)
    out.append(f"</{name}>")


def to_xml(body: dict[str, Any]) -> bytes:
    """The XML document of a ``subsonic-response`` body (envelope attributes included in ``body``)."""
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n']
    _xml_element("subsonic-response", {"xmlns": NAMESPACE, **body}, out)
    return "".join(out).encode("utf-8")


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value if v is not None]
    return value


def to_json(body: dict[str, Any]) -> bytes:
    """The JSON document of a ``subsonic-response`` body."""
    return json.dumps({"subsonic-response": _strip_none(body)}, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def response_format(params: dict[str, str]) -> tuple[str, str | None]:
    """``(format, callback)`` asked by ``f`` and ``callback``: xml unless json or jsonp (jsonp with a
    valid callback name; without one, JSON, in which ``check_callback``'s error can be read)."""
    fmt = (params.get("f") or "xml").lower()
    if fmt not in FORMATS:
        fmt = "xml"
    callback = params.get("callback")
    if fmt == "jsonp" and not (callback and CALLBACK.match(callback)):
        return "json", None
    return fmt, callback if fmt == "jsonp" else None


def check_callback(params: dict[str, str]) -> None:
    """Raise SubsonicError when ``f=jsonp`` comes without a usable ``callback`` (10 missing, 0 not a name)."""
    if (params.get("f") or "").lower() != "jsonp":
        return
    callback = params.get("callback")
    if not callback:
        raise SubsonicError(MISSING_PARAMETER, "Required parameter is missing: callback (f=jsonp)")
    if not CALLBACK.match(callback):
        raise SubsonicError(GENERIC, "callback must be a JavaScript function name (letters, digits, _ and $, "
                                     "dotted)")


def render(payload: dict[str, Any], *, fmt: str, callback: str | None = None, status: str = "ok") -> Response:
    """An HTTP 200 response holding ``payload`` (the elements under ``subsonic-response``) in ``fmt``."""
    body = {**envelope(status), **payload}
    if fmt == "json":
        return Response(to_json(body), media_type=JSON_MEDIA_TYPE)
    if fmt == "jsonp":
        return Response(callback.encode("ascii") + b"(" + to_json(body) + b");", media_type=JSONP_MEDIA_TYPE)
    return Response(to_xml(body), media_type=XML_MEDIA_TYPE)


def render_error(error: SubsonicError, *, fmt: str, callback: str | None = None) -> Response:
    """The failed ``subsonic-response`` of ``error`` (HTTP 200, as Subsonic clients expect)."""
    return render({"error": {"code": error.code, "message": error.message}}, fmt=fmt, callback=callback,
                  status="failed")
