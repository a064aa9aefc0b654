"""Which image_uri a job may read: the allow-list of URI prefixes, compared on normalised, decoded paths.

An image_uri comes from the data, so it is read only when it lies within a
prefix of `images.allowed_uri_prefixes` (none by default: a dataset cannot
make the job read anything until the config says where images live). The
rules:

- scheme, host and port must equal the prefix's exactly (`s3a` is not `s3`,
  `host:8080` is not `host`); a plain path and `file://` are both the local
  scheme;
- paths are compared as whole segments after decoding `%XX` escapes, so
  `/data/allowed` admits `/data/allowed/x` but not `/data/allowed_secret/x`;
- local paths are normalised and their symbolic links resolved before the
  comparison (`/data/allowed/../secret` is `/data/secret`), and the resolved
  path is what is read; in object-store and HTTP URIs, where `..` is not
  resolved the same way by every server, a `.` or `..` segment is refused;
- refused outright: fsspec chains (`simplecache::s3://...`, which would make
  the reader contact a second location), encoded slashes (`%2F`), control
  characters, and user names or passwords in the URI.

`allowed_location` returns the URI to read (the normalised one), so what is
checked is what is read. HTTP redirects are checked again, hop by hop (http.py).
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

LOCAL = "file"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UriNotAllowed(ValueError):
    """An image_uri outside the prefixes the job config allows."""


@dataclass(frozen=True)
class Location:
    scheme: str
    host: str  # "host[:port]" as written, lowercased; "" for local paths
    segments: tuple[str, ...]
    query: str = ""  # kept for HTTP (signed URLs), never compared

    def within(self, prefix: Location) -> bool:
        return self.scheme == prefix.scheme and self.host == prefix.host and self.segments[: len(prefix.segments)] == prefix.segments

    def uri(self) -> str:
        path = "/" + "/".join(self.segments)
        if self.scheme == LOCAL:
            return path
        if self.scheme in ("http", "https"):
            return f"{self.scheme}://{self.host}{quote(path)}" + (f"?{self.query}" if self.query else "")
        return f"{self.scheme}://{self.host}{path}"


def locate(uri: str, resolve_links: bool = True) -> Location:
    """The normalised location of a URI or path; raises UriNotAllowed for forms that are never read."""
    if "::" in uri:
        raise UriNotAllowed(f"image_uri {uri!r}: chained URLs (::) are not allowed")
    if _CONTROL.search(uri):
        raise UriNotAllowed(f"image_uri {uri!r}: control characters are not allowed")
    if "://" not in uri:
        return _local(uri, resolve_links)
    scheme, rest = uri.split("://", 1)
    scheme = scheme.lower()
    if scheme in ("http", "https"):
        parts = urlsplit(uri)
        host, raw_path, query = parts.netloc, parts.path, parts.query
    else:  # object stores: keys may hold '?' and '#'; nothing after the host is a query
        host, _, raw_path = rest.partition("/")
        raw_path, query = "/" + raw_path, ""
    if "@" in host:
        raise UriNotAllowed(f"image_uri {uri!r}: credentials in the URI are not allowed")
    if re.search(r"%2f|%5c", raw_path, re.IGNORECASE):
        raise UriNotAllowed(f"image_uri {uri!r}: encoded slashes are not allowed")
    path = unquote(raw_path)
    if _CONTROL.search(path):
        raise UriNotAllowed(f"image_uri {uri!r}: control characters are not allowed")
    if scheme == LOCAL:
        return _local(path, resolve_links)
    segments = tuple(segment for segment in path.split("/") if segment)
    if any(segment in (".", "..") for segment in segments):
        raise UriNotAllowed(f"image_uri {uri!r}: dot segments are not allowed")
    return Location(scheme, host.lower(), segments, query)


def _local(path: str, resolve_links: bool) -> Location:
    absolute = os.path.realpath(path) if resolve_links else posixpath.normpath(os.path.abspath(path))
    return Location(LOCAL, "", tuple(segment for segment in absolute.split("/") if segment))


def allowed_location(uri: str, allowed_prefixes: Sequence[str]) -> str:
    """The normalised URI to read for `uri` when it lies within an allowed prefix; raises UriNotAllowed otherwise."""
    target = locate(uri)
    for prefix in allowed_prefixes:
        try:
            if target.within(locate(prefix)):
                return target.uri()
        except UriNotAllowed:
            continue  # a malformed prefix admits nothing
    raise UriNotAllowed(f"image_uri {uri!r} is outside the allowed prefixes {list(allowed_prefixes)} (set images.allowed_uri_prefixes in the job config)")
