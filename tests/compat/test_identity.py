"""Identity with the official clients: `azure-identity`'s ClientSecretCredential gets tokens from
Herald's token endpoint, and `azure-keyvault-secrets` uses them through Key Vault's challenge flow,
with no custom credential class. Access policies decide what each principal may do.

Wire facts: shared/spec/keyvault.md §8 (challenge flow) and §13 (identity).
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient

from conftest import Herald, start_herald, stop_herald

VAULT_SCOPE = "https://vault.azure.net/.default"


def make_principal(herald: Herald, name: str) -> dict:
    r = herald.mgmt("POST", "/api/v1/principals", json={"displayName": name})
    assert r.status_code == 201, r.text
    p = r.json()
    s = herald.mgmt("POST", f"/api/v1/principals/{p['appId']}/secrets", json={"displayName": "ci"})
    assert s.status_code == 201, s.text
    p["secret"] = s.json()["secretText"]
    p["keyId"] = s.json()["keyId"]
    return p


def credential(herald: Herald, p: dict, secret: str | None = None) -> ClientSecretCredential:
    return ClientSecretCredential(
        p["tenantId"], p["appId"], secret or p["secret"],
        authority=f"https://localhost:{herald.port}",
        # Herald is its own authority: no instance discovery against login.microsoftonline.com.
        disable_instance_discovery=True,
        connection_verify=herald.ca,
    )


def set_policy(herald: Herald, vault: str, app_id: str, perms: list[str]) -> None:
    r = herald.mgmt("PUT", f"/api/v1/vaults/{vault}/accessPolicies/{app_id}",
                    json={"permissions": {"secrets": perms}})
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def vault(herald: Herald) -> dict:
    v = herald.create_vault(f"id{uuid.uuid4().hex[:10]}")
    admin = herald.mgmt  # noqa: F841 (the admin token seeds a secret below)
    r = requests.put(f"{v['vaultUri']}/secrets/db-password?api-version=7.6", json={"value": "s3cret"},
                     headers={"Authorization": f"Bearer {herald.admin_token}"}, verify=herald.ca)
    assert r.status_code == 200, r.text
    return v


def test_get_policy_reads_and_cannot_set(herald: Herald, vault: dict):
    p = make_principal(herald, "reader")
    set_policy(herald, vault["name"], p["appId"], ["get"])
    with SecretClient(vault["vaultUri"], credential(herald, p), connection_verify=herald.ca) as c:
        assert c.get_secret("db-password").value == "s3cret"
        with pytest.raises(HttpResponseError) as e:
            c.set_secret("db-password", "changed")
        assert e.value.status_code == 403
        assert "does not have secrets set permission" in str(e.value.message)
        with pytest.raises(HttpResponseError) as e:
            list(c.list_properties_of_secrets())
        assert e.value.status_code == 403


def test_no_policy_is_403_on_everything(herald: Herald, vault: dict):
    p = make_principal(herald, "nobody-granted")
    with SecretClient(vault["vaultUri"], credential(herald, p), connection_verify=herald.ca) as c:
        for call in (lambda: c.get_secret("db-password"), lambda: c.set_secret("x", "y"),
                     lambda: list(c.list_properties_of_secrets()), lambda: c.begin_delete_secret("db-password")):
            with pytest.raises(HttpResponseError) as e:
                call()
            assert e.value.status_code == 403, e.value


def test_set_policy_rotates_like_a_runbook(herald: Herald, vault: dict):
    p = make_principal(herald, "rotator")
    set_policy(herald, vault["name"], p["appId"], ["get", "list", "set"])
    with SecretClient(vault["vaultUri"], credential(herald, p), connection_verify=herald.ca) as c:
        c.set_secret("rotated", "v1")
        c.set_secret("rotated", "v2")
        assert c.get_secret("rotated").value == "v2"
        assert "rotated" in {s.name for s in c.list_properties_of_secrets()}


def test_tampered_token_is_refused(herald: Herald, vault: dict):
    p = make_principal(herald, "tamper")
    set_policy(herald, vault["name"], p["appId"], ["get"])
    token = credential(herald, p).get_token(VAULT_SCOPE).token
    url = f"{vault['vaultUri']}/secrets/db-password?api-version=7.6"
    ok = requests.get(url, headers={"Authorization": f"Bearer {token}"}, verify=herald.ca)
    assert ok.status_code == 200, ok.text
    head, payload, sig = token.split(".")
    flipped = payload[:5] + ("A" if payload[5] != "A" else "B") + payload[6:]
    for bad in (f"{head}.{flipped}.{sig}", f"{head}.{payload}.{sig[:-4]}AAAA"):
        r = requests.get(url, headers={"Authorization": f"Bearer {bad}"}, verify=herald.ca)
        assert r.status_code == 401, r.text
        assert r.headers["WWW-Authenticate"].startswith("Bearer authorization=")


def test_removed_client_secret_stops_issuing_tokens(herald: Herald):
    p = make_principal(herald, "rotating-secret")
    credential(herald, p).get_token(VAULT_SCOPE)
    r = herald.mgmt("DELETE", f"/api/v1/principals/{p['appId']}/secrets/{p['keyId']}")
    assert r.status_code == 204, r.text
    with pytest.raises(ClientAuthenticationError) as e:
        credential(herald, p).get_token(VAULT_SCOPE)
    assert "AADSTS7000215" in str(e.value)


def test_expired_token_is_refused(tmp_path):
    server = start_herald(tmp_path / "data", tmp_path / "herald.log", env={"HERALD_TOKEN_LIFETIME_SECS": "2"})
    try:
        v = server.create_vault(f"exp{uuid.uuid4().hex[:8]}")
        p = make_principal(server, "short-lived")
        set_policy(server, v["name"], p["appId"], ["get", "set"])
        token = credential(server, p).get_token(VAULT_SCOPE)
        assert token.expires_on - time.time() <= 3
        url = f"{v['vaultUri']}/secrets/n?api-version=7.6"
        auth = {"Authorization": f"Bearer {token.token}"}
        assert requests.put(url, json={"value": "v"}, headers=auth, verify=server.ca).status_code == 200
        time.sleep(2.5)
        r = requests.get(url, headers=auth, verify=server.ca)
        assert r.status_code == 401, r.text
        assert "expired" in r.json()["error"]["message"]
    finally:
        stop_herald(server)
