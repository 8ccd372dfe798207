"""The default server: no policy configured, so nothing changes but a loud warning."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import MODEL_ID, RunningServer

pytestmark = pytest.mark.model


def test_auth_off_is_the_default_and_said_loudly(server: RunningServer) -> None:
    assert "AUTHENTICATION IS OFF" in server.log()
    anyone = openai.OpenAI(base_url=f"{server.url}/v1", api_key="anything", max_retries=0)
    assert [m.id for m in anyone.models.list()] == [MODEL_ID]
    assert httpx.get(f"{server.url}/v1/models").status_code == 200  # no header at all
    # Without a policy there is no admin API to reach, with or without credentials.
    assert httpx.get(f"{server.url}/v1/admin/keys").status_code == 404
