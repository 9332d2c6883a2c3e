"""Pages a team can brand: name, logo, accent colour, terms and privacy
links on every page, and any shipped template overridden by name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.config import ConfigError, load_settings
from sidecar.oauth.pages import content_security_policy, form_action_source
from tests.support.browser import screenshot
from tools.processes import Process, start_sidecar

BRAND = {
    "SIDECAR_BRAND_NAME": "Acme <Notes>",
    "SIDECAR_BRAND_LOGO_URL": "https://cdn.acme.example/logo.png",
    "SIDECAR_BRAND_COLOR": "#0b5fff",
    "SIDECAR_TERMS_URL": "https://acme.example/terms",
    "SIDECAR_PRIVACY_URL": "https://acme.example/privacy",
}


@pytest.fixture(scope="module")
def branded(upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    templates = tmp_path_factory.mktemp("templates")
    (templates / "refused.html").write_text(
        '{% extends "base.html" %}{% block body %}<h1>Our own refusal page</h1>'
        "<p>{{ client_name }} / {{ redirect_host }} / {{ error }}</p>{% endblock %}"
    )
    process = start_sidecar(upstream.url, SIDECAR_TEMPLATES_DIR=str(templates), **BRAND)
    yield process
    process.stop()


def test_every_page_carries_the_brand(branded: Process) -> None:
    r = httpx.get(f"{branded.url}/oauth/authorize/continue?request=nope")
    assert r.status_code == 400
    assert "Acme &lt;Notes&gt;" in r.text  # escaped like any value
    assert '<img src="https://cdn.acme.example/logo.png"' in r.text
    assert "--accent: #0b5fff" in r.text
    assert 'href="https://acme.example/terms"' in r.text
    assert 'href="https://acme.example/privacy"' in r.text
    assert "img-src https:" in r.headers["content-security-policy"]


def test_a_template_in_templates_dir_overrides_the_shipped_one(branded: Process) -> None:
    client = httpx.post(
        f"{branded.url}/oauth/register",
        json={"redirect_uris": ["https://elsewhere.example/cb"], "client_name": "Stranger"},
    ).json()
    r = httpx.get(
        f"{branded.url}/oauth/authorize",
        params={"client_id": client["client_id"], "response_type": "token"},
    )
    assert r.status_code == 400
    assert "Our own refusal page" in r.text
    assert "Stranger / elsewhere.example / unsupported_response_type" in r.text
    assert "Acme &lt;Notes&gt;" in r.text  # the override still extends base.html


def test_a_branded_page_in_chromium_on_a_phone(branded: Process, chromium: Any) -> None:
    context = chromium.new_context(viewport={"width": 360, "height": 640})
    page = context.new_page()
    page.goto(f"{branded.url}/oauth/authorize/continue?request=nope")
    links = page.get_by_role("link")
    assert links.count() == 2
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    screenshot(page, "branded-error-360")
    context.close()


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"SIDECAR_BRAND_COLOR": "blue; background: url(x)"}, "brand_color"),
        ({"SIDECAR_BRAND_LOGO_URL": "javascript:alert(1)"}, "brand_logo_url"),
        ({"SIDECAR_TERMS_URL": "javascript:alert(1)"}, "terms_url"),
        ({"SIDECAR_TEMPLATES_DIR": "/no/such/folder"}, "templates_dir"),
    ],
)
def test_bad_branding_stops_start_up_naming_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env=env)
    assert err.value.key == key


def test_form_action_names_the_redirect_origin_or_scheme() -> None:
    assert form_action_source("http://127.0.0.1:5173/cb?x=1") == "http://127.0.0.1:5173"
    assert form_action_source("https://claude.ai/api/mcp/auth_callback") == "https://claude.ai"
    assert form_action_source("cursor://anysphere.cursor-retrieval/cb") == "cursor:"
    assert "form-action 'none'" in content_security_policy(None)
    policy = content_security_policy(["cursor:"])
    assert "form-action 'self' cursor:" in policy
    assert "frame-ancestors 'none'" in policy
    assert "script-src" not in policy
    assert "default-src 'none'" in policy


def test_every_shipped_template_says_which_variables_it_receives() -> None:
    shipped = Path(__file__).resolve().parents[2] / "sidecar" / "oauth" / "templates"
    for template in shipped.glob("*.html"):
        assert "Variables" in template.read_text(), template
