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


def test_priority_needs_a_grant_even_with_auth_off(server: RunningServer) -> None:
    """Priority preempts other callers' work: anonymous callers get the default (0) and a
    403 naming the ceiling above it (policy.anonymous_max_priority raises it)."""
    anyone = openai.OpenAI(base_url=f"{server.url}/v1", api_key="anything", max_retries=0)
    ask = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert anyone.chat.completions.create(**ask, extra_body={"priority": 0}).choices
    with pytest.raises(openai.PermissionDeniedError) as refused:
        anyone.chat.completions.create(**ask, extra_body={"priority": 5})
    assert refused.value.body["code"] == "priority_not_allowed"
    assert refused.value.body["param"] == "priority"
    assert "ceiling of 0 for anonymous" in refused.value.body["message"]
