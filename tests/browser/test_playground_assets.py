"""How the server hands out the Playground: routes, headers and every asset (no browser)."""

from __future__ import annotations

import re

import httpx

from tessera.runtime.playground import STATIC_DIR
from tests.support.server import ServerProcess


def test_root_leads_to_the_playground(demo_server: ServerProcess) -> None:
    root = httpx.get(demo_server.base_url + "/")
    assert (root.status_code, root.headers["location"]) == (307, "/playground")
    bare = httpx.get(demo_server.base_url + "/playground")
    assert (bare.status_code, bare.headers["location"]) == (307, "/playground/")
    page = httpx.get(demo_server.base_url + "/", follow_redirects=True)
    assert page.status_code == 200
    assert "<title>Tessera Playground</title>" in page.text


def test_the_page_is_locked_down(demo_server: ServerProcess) -> None:
    page = httpx.get(demo_server.base_url + "/playground/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    # Nothing is fetched from elsewhere: no CDN, no web fonts.
    assert not re.search(r"""(src|href)=["']https?://""", page.text)


def test_every_asset_is_served_with_its_type(demo_server: ServerProcess) -> None:
    types = {".js": "javascript", ".css": "text/css", ".svg": "image/svg+xml", ".html": "text/html"}
    files = [p for p in STATIC_DIR.rglob("*") if p.is_file()]
    assert len(files) >= 10
    for path in files:
        url = f"{demo_server.base_url}/playground/{path.relative_to(STATIC_DIR).as_posix()}"
        response = httpx.get(url)
        assert response.status_code == 200, url
        assert types[path.suffix] in response.headers["content-type"], url
        assert response.content == path.read_bytes()
        if path.suffix == ".js":
            # Modules import each other by relative path only: nothing outside the package.
            imports = re.findall(r"""from\s+["']([^"']+)["']""", response.text)
            assert all(name.startswith("./") for name in imports), (path.name, imports)


def test_the_playground_needs_no_key_but_the_api_does(demo_server: ServerProcess) -> None:
    assert httpx.get(demo_server.base_url + "/playground/js/main.js").status_code == 200
    assert httpx.get(demo_server.api_url + "/base_models").status_code == 401
