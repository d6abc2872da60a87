"""`GET /v1/permissions`: what the caller's key may do (the gateway alone answers it)."""

import httpx

from tuneyard.local_stack import free_port

USER = {"Authorization": "Bearer user-key"}
ADMIN = {"Authorization": "Bearer admin-key"}


def offline(make_gateway, **settings):
    return make_gateway(
        inference_addr=f"127.0.0.1:{free_port()}",
        trainer_addr=f"127.0.0.1:{free_port()}",
        **settings,
    )


def test_permissions_say_what_a_key_may_do(make_gateway):
    gateway = offline(make_gateway, api_keys="user-key", admin_keys="admin-key")
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        assert http.get("/v1/permissions").status_code == 401
        bad = http.get("/v1/permissions", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["error"]["type"] == "authentication_error"
        user = http.get("/v1/permissions", headers=USER).json()
        assert user == {
            "object": "permissions",
            "keys_required": True,
            "admin": False,
            "write": False,
            "project": "proj_default",
        }
        assert http.get("/v1/permissions", headers=ADMIN).json()["admin"] is True
        # What it says is what the admin routes do.
        assert http.post("/v1/adapters/a/load", headers=USER).status_code == 403


def test_permissions_without_keys_allow_everything(make_gateway):
    gateway = offline(make_gateway)
    answer = httpx.get(f"{gateway.url}/v1/permissions", timeout=10).json()
    assert answer == {
        "object": "permissions",
        "keys_required": False,
        "admin": True,
        "write": True,
        "project": None,
    }
