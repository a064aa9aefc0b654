"""The image_uri allow-list cannot be escaped: whole segments, decoded and normalised paths, exact hosts, checked redirects."""

from __future__ import annotations

import http.server
import os
import threading

import pytest

from mmr5_batch.storage.allow_list import UriNotAllowed, allowed_location
from mmr5_batch.storage.fetching import fetch_images
from mmr5_batch.storage.filesystems import Storage
from tests.conftest import grey_jpeg


@pytest.fixture
def folders(tmp_path):
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed_secret").mkdir()
    (tmp_path / "secret").mkdir()
    for folder in ("allowed", "allowed_secret", "secret"):
        (tmp_path / folder / "page.jpg").write_bytes(grey_jpeg(50))
    os.symlink(tmp_path / "secret" / "page.jpg", tmp_path / "allowed" / "link.jpg")
    return tmp_path


def test_local_paths_are_compared_on_resolved_whole_segments(folders):
    for prefix in (str(folders / "allowed"), str(folders / "allowed") + "/", f"file://{folders}/allowed"):
        assert allowed_location(str(folders / "allowed" / "page.jpg"), [prefix]) == str(folders / "allowed" / "page.jpg")
        assert allowed_location(f"{folders}/allowed/./sub/../page.jpg", [prefix]) == str(folders / "allowed" / "page.jpg")
        for escape in (
            f"{folders}/allowed_secret/page.jpg",  # a sibling sharing the prefix's characters
            f"{folders}/allowed/../secret/page.jpg",  # dot segments
            f"file://{folders}/allowed/%2e%2e/secret/page.jpg",  # encoded dot segments
            f"file://{folders}/allowed/..%2fsecret/page.jpg",  # an encoded slash
            f"{folders}/allowed/link.jpg",  # a symbolic link pointing out
            f"simplecache::file://{folders}/allowed/page.jpg",  # a chain contacting a second location
            f"{folders}/allowed/page.jpg\x00.png",
        ):
            with pytest.raises(UriNotAllowed):
                allowed_location(escape, [prefix])


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket-evil/pages/x.jpg",
        "s3://bucket/pages-secret/x.jpg",
        "s3://bucket/pages/../secret/x.jpg",
        "s3://bucket/pages/%2E%2E/secret/x.jpg",
        "s3a://bucket/pages/x.jpg",
        "https://host/pages/x.jpg",
        "http://host:8080/pages/x.jpg",
        "http://user:pw@host/pages/x.jpg",
        "http://host/pages%2f..%2fsecret/x.jpg",
    ],
)
def test_scheme_host_and_port_must_match_exactly(uri):
    prefixes = ["s3://bucket/pages", "http://host/pages/"]
    with pytest.raises(UriNotAllowed):
        allowed_location(uri, prefixes)


def test_allowed_uris_come_back_normalised():
    assert allowed_location("s3://bucket/pages/a%20b.jpg", ["s3://bucket/pages"]) == "s3://bucket/pages/a b.jpg"
    assert allowed_location("s3://Bucket/pages//x.jpg", ["s3://bucket/pages/"]) == "s3://bucket/pages/x.jpg"
    assert allowed_location("http://host/pages/x.jpg?sig=1", ["http://host/pages"]) == "http://host/pages/x.jpg?sig=1"
    with pytest.raises(UriNotAllowed):
        allowed_location("s3://bucket/pages/x.jpg", [])  # nothing by default


class _Pages(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str]]] = {}

    def do_GET(self):
        status, headers = self.routes.get(self.path, (404, {}))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        body = grey_jpeg(30) if status == 200 else b""
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    _Pages.routes = {
        "/allowed/page.jpg": (200, {}),
        "/secret/page.jpg": (200, {}),
        "/allowed/in": (302, {"Location": "/allowed/page.jpg"}),
        "/allowed/out": (302, {"Location": "/secret/page.jpg"}),
        "/allowed/other-host": (302, {"Location": f"http://localhost:{httpd.server_address[1]}/allowed/page.jpg"}),
        "/allowed/hop": (301, {"Location": "/allowed/out"}),
    }
    yield base
    httpd.shutdown()


def test_http_redirects_are_checked_hop_by_hop(server):
    uris = [f"{server}/allowed/{name}" for name in ("page.jpg", "in", "out", "other-host", "hop")]
    fetched = fetch_images(Storage(), uris, [f"{server}/allowed"], concurrency=2, retries=0)
    assert fetched[f"{server}/allowed/page.jpg"] == grey_jpeg(30)
    assert fetched[f"{server}/allowed/in"] == grey_jpeg(30)  # a redirect within the prefix is followed
    for refused in ("out", "other-host", "hop"):
        assert isinstance(fetched[f"{server}/allowed/{refused}"], UriNotAllowed), refused
