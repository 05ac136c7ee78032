"""Herald conformance: the Key Vault secrets data plane driven by the official azure-keyvault-secrets SDK.

Source of truth: shared/spec/keyvault.md (section numbers below refer to it).

Layout:
  * SDK tests (parametrized over api_version: SDK default, 7.4, 7.5, 7.6) against a named vault
    addressed by host (`https://<vault>.vault.localhost:PORT`) with default SDK settings.
  * Vault options: purge protection and custom retention.
  * The default vault (`https://localhost:PORT`), which needs verify_challenge_resource=False.
  * Raw HTTP tests for wire details the SDK hides (challenge header, exact bodies, nextLink, 204s).
  * Herald's management API for vaults (`/api/v1/vaults`).
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Optional
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import pytest
import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.keyvault.secrets import DeletedSecret, KeyVaultSecret, SecretClient, SecretProperties

from conftest import POLL, Herald, HeraldToken, start_herald, stop_herald, unique_vault_name

HEX32 = re.compile(r"^[0-9a-f]{32}$")
DAY = timedelta(days=1)
CLOCK_SKEW = timedelta(minutes=5)
EXPIRES = datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
NOT_BEFORE = datetime(2024, 6, 7, 8, 9, 10, tzinfo=timezone.utc)


# ======================================================================================
# Helpers
# ======================================================================================


def now() -> datetime:
    return datetime.now(timezone.utc)


def assert_recent(when: Optional[datetime]) -> None:
    assert when is not None
    assert abs(when - now()) < CLOCK_SKEW, f"{when} is not close to now ({now()})"


def assert_versioned_id(props: SecretProperties, vault_url: str, name: str) -> None:
    """id = https://{vault-host:port}/secrets/{name}/{32-hex version} (spec §4)."""
    assert props.version is not None and HEX32.match(props.version), f"bad version in {props.id}"
    assert props.id == f"{vault_url}/secrets/{name}/{props.version}"
    assert props.vault_url == vault_url
    assert props.name == name


def assert_error(err: HttpResponseError, status: int, code: str, *, inner: Optional[str] = None,
                 message: Optional[str] = None, message_contains: Optional[str] = None) -> None:
    body = err.response.text() if err.response is not None else "<no response>"
    assert err.status_code == status, f"expected {status}, got {err.status_code}: {body}"
    assert err.error is not None, f"error body is not a KeyVaultError envelope: {body}"
    assert err.error.code == code, body
    if inner is not None:
        assert (err.error.innererror or {}).get("code") == inner, body
    if message is not None:
        assert err.error.message == message, body
    if message_contains is not None:
        assert message_contains in (err.error.message or ""), body
    assert f"({code})" in str(err)


def delete(client: SecretClient, name: str) -> DeletedSecret:
    """Soft delete and wait for the poller (Herald deletes synchronously: the first poll finishes)."""
    poller = client.begin_delete_secret(name, **POLL)
    poller.wait(timeout=30)
    assert poller.status() == "finished"
    return poller.result()


def recover(client: SecretClient, name: str) -> SecretProperties:
    poller = client.begin_recover_deleted_secret(name, **POLL)
    poller.wait(timeout=30)
    assert poller.status() == "finished"
    return poller.result()


def page_sizes(pages) -> tuple[list[int], list[Any]]:
    sizes, items = [], []
    for page in pages:
        page_items = list(page)
        sizes.append(len(page_items))
        items.extend(page_items)
    return sizes, items


def expected_sizes(total: int, page: int) -> list[int]:
    return [min(page, total - start) for start in range(0, total, page)]


# ======================================================================================
# SDK: set / get
# ======================================================================================


def test_set_secret_returns_bundle_with_all_fields(client: SecretClient, secret_name: str, herald: Herald):
    secret = client.set_secret(
        secret_name, "s3cr3t", tags={"owner": "team-a", "env": "test"}, content_type="text/plain",
        not_before=NOT_BEFORE, expires_on=EXPIRES,
    )
    assert isinstance(secret, KeyVaultSecret)
    assert secret.value == "s3cr3t"
    assert secret.name == secret_name
    assert f".vault.localhost:{herald.port}/" in secret.id
    props = secret.properties
    assert_versioned_id(props, client.vault_url, secret_name)
    assert props.tags == {"owner": "team-a", "env": "test"}
    assert props.content_type == "text/plain"
    assert props.enabled is True
    assert props.not_before == NOT_BEFORE
    assert props.expires_on == EXPIRES
    assert_recent(props.created_on)
    assert props.updated_on == props.created_on
    assert props.recoverable_days == 90
    assert props.recovery_level == "Recoverable+Purgeable"
    assert props.key_id is None
    assert props.managed is None


def test_set_secret_minimal_has_no_optional_fields(client: SecretClient, secret_name: str):
    props = client.set_secret(secret_name, "v").properties
    assert props.enabled is True
    assert props.tags is None
    assert props.content_type is None
    assert props.not_before is None
    assert props.expires_on is None


def test_set_existing_name_creates_new_version(client: SecretClient, secret_name: str):
    first = client.set_secret(secret_name, "one")
    second = client.set_secret(secret_name, "two", tags={"gen": "2"})
    assert first.properties.version != second.properties.version
    assert_versioned_id(second.properties, client.vault_url, secret_name)
    assert second.value == "two"
    assert second.properties.tags == {"gen": "2"}
    # the old version keeps its own value and (absent) tags
    old = client.get_secret(secret_name, first.properties.version)
    assert old.value == "one"
    assert old.properties.tags is None


def test_get_secret_returns_latest_version(client: SecretClient, secret_name: str):
    client.set_secret(secret_name, "one")
    latest = client.set_secret(secret_name, "two", content_type="text/plain")
    got = client.get_secret(secret_name)
    assert got.value == "two"
    assert got.id == latest.id
    assert got.properties.version == latest.properties.version
    assert got.properties.content_type == "text/plain"
    assert got.properties.recovery_level == "Recoverable+Purgeable"


def test_get_secret_by_version(client: SecretClient, secret_name: str):
    first = client.set_secret(secret_name, "one", tags={"v": "1"})
    client.set_secret(secret_name, "two")
    got = client.get_secret(secret_name, first.properties.version)
    assert got.value == "one"
    assert got.id == first.id
    assert got.properties.tags == {"v": "1"}
    assert got.properties.created_on == first.properties.created_on


def test_secret_names_are_case_insensitive_and_keep_first_case(client: SecretClient, new_name):
    name = new_name("MixedCase")
    created = client.set_secret(name, "one")
    again = client.set_secret(name.lower(), "two")
    assert again.name == name, "the case used at first creation is kept in ids"
    assert again.properties.version != created.properties.version
    got = client.get_secret(name.upper())
    assert got.value == "two"
    assert got.name == name
    versions = list(client.list_properties_of_secret_versions(name.lower()))
    assert {v.version for v in versions} == {created.properties.version, again.properties.version}


def test_unicode_value_round_trips(client: SecretClient, secret_name: str):
    value = "pässwörd ✓ \"quoted\" \\ line\nbreak"
    client.set_secret(secret_name, value)
    assert client.get_secret(secret_name).value == value


def test_expired_and_not_yet_valid_secrets_are_readable(client: SecretClient, new_name):
    expired = new_name("expired")
    future = new_name("notyet")
    client.set_secret(expired, "old", expires_on=now() - DAY)
    client.set_secret(future, "new", not_before=now() + DAY)
    assert client.get_secret(expired).value == "old"
    assert client.get_secret(future).value == "new"


def test_get_missing_secret_raises_not_found(client: SecretClient, secret_name: str):
    with pytest.raises(ResourceNotFoundError) as ei:
        client.get_secret(secret_name)
    assert_error(ei.value, 404, "SecretNotFound", message_contains=secret_name)


def test_get_missing_version_raises_not_found(client: SecretClient, secret_name: str):
    client.set_secret(secret_name, "v")
    with pytest.raises(ResourceNotFoundError) as ei:
        client.get_secret(secret_name, uuid.uuid4().hex)
    assert_error(ei.value, 404, "SecretNotFound")


# ======================================================================================
# SDK: disabled versions (spec §6)
# ======================================================================================


def test_get_disabled_version_is_forbidden(client: SecretClient, secret_name: str):
    disabled = client.set_secret(secret_name, "v", enabled=False)
    assert disabled.properties.enabled is False
    with pytest.raises(HttpResponseError) as ei:
        client.get_secret(secret_name, disabled.properties.version)
    assert type(ei.value) is HttpResponseError
    assert_error(ei.value, 403, "Forbidden", inner="SecretDisabled",
                 message="Operation get is not allowed on a disabled secret.")


def test_get_latest_when_latest_is_disabled_is_forbidden(client: SecretClient, secret_name: str):
    enabled = client.set_secret(secret_name, "old")
    client.set_secret(secret_name, "new", enabled=False)
    with pytest.raises(HttpResponseError) as ei:
        client.get_secret(secret_name)
    assert_error(ei.value, 403, "Forbidden", inner="SecretDisabled")
    # older, enabled versions stay readable
    assert client.get_secret(secret_name, enabled.properties.version).value == "old"


def test_reenabling_a_disabled_version_allows_get(client: SecretClient, secret_name: str):
    disabled = client.set_secret(secret_name, "v", enabled=False)
    updated = client.update_secret_properties(secret_name, disabled.properties.version, enabled=True)
    assert updated.enabled is True
    assert client.get_secret(secret_name).value == "v"


def test_disabled_secrets_are_listed(client: SecretClient, secret_name: str):
    disabled = client.set_secret(secret_name, "v", enabled=False)
    listed = {p.name: p for p in client.list_properties_of_secrets()}
    assert secret_name in listed
    assert listed[secret_name].enabled is False
    versions = list(client.list_properties_of_secret_versions(secret_name))
    assert [(v.version, v.enabled) for v in versions] == [(disabled.properties.version, False)]


def test_disabled_latest_can_be_backed_up_and_deleted(client: SecretClient, secret_name: str):
    client.set_secret(secret_name, "v", enabled=False)
    assert len(client.backup_secret(secret_name)) > 0
    deleted = delete(client, secret_name)
    assert deleted.properties.enabled is False


# ======================================================================================
# SDK: update_secret_properties (PATCH)
# ======================================================================================


def test_update_secret_properties_changes_metadata(client: SecretClient, secret_name: str):
    created = client.set_secret(secret_name, "v", tags={"a": "1"}, content_type="text/plain")
    updated = client.update_secret_properties(
        secret_name, created.properties.version, tags={"b": "2"}, content_type="application/json",
        enabled=False, expires_on=EXPIRES, not_before=NOT_BEFORE,
    )
    assert isinstance(updated, SecretProperties)
    assert updated.id == created.id
    assert updated.version == created.properties.version
    assert updated.tags == {"b": "2"}
    assert updated.content_type == "application/json"
    assert updated.enabled is False
    assert updated.expires_on == EXPIRES
    assert updated.not_before == NOT_BEFORE
    assert updated.created_on == created.properties.created_on
    assert updated.updated_on >= created.properties.updated_on
    assert updated.recovery_level == "Recoverable+Purgeable"
    # value unchanged; the version is still the latest
    client.update_secret_properties(secret_name, created.properties.version, enabled=True)
    got = client.get_secret(secret_name)
    assert got.value == "v"
    assert got.properties.version == created.properties.version
    assert got.properties.tags == {"b": "2"}


def test_update_secret_properties_keeps_absent_fields(client: SecretClient, secret_name: str):
    client.set_secret(secret_name, "v", tags={"a": "1"}, content_type="text/plain", expires_on=EXPIRES)
    updated = client.update_secret_properties(secret_name, tags={"a": "2"})
    assert updated.tags == {"a": "2"}
    assert updated.content_type == "text/plain"
    assert updated.expires_on == EXPIRES
    assert updated.enabled is True
    updated = client.update_secret_properties(secret_name, content_type="text/csv")
    assert updated.tags == {"a": "2"}
    assert updated.content_type == "text/csv"


def test_update_without_version_targets_latest(client: SecretClient, secret_name: str):
    client.set_secret(secret_name, "one")
    latest = client.set_secret(secret_name, "two")
    updated = client.update_secret_properties(secret_name, tags={"latest": "yes"})
    assert updated.version == latest.properties.version
    assert client.get_secret(secret_name).properties.tags == {"latest": "yes"}


def test_update_one_version_leaves_others_unchanged(client: SecretClient, secret_name: str):
    first = client.set_secret(secret_name, "one", tags={"t": "first"})
    second = client.set_secret(secret_name, "two", tags={"t": "second"})
    client.update_secret_properties(secret_name, first.properties.version, tags={"t": "changed"})
    assert client.get_secret(secret_name, first.properties.version).properties.tags == {"t": "changed"}
    assert client.get_secret(secret_name, second.properties.version).properties.tags == {"t": "second"}
    assert client.get_secret(secret_name).properties.version == second.properties.version


def test_update_missing_secret_raises_not_found(client: SecretClient, secret_name: str):
    with pytest.raises(ResourceNotFoundError) as ei:
        client.update_secret_properties(secret_name, tags={"a": "b"})
    assert_error(ei.value, 404, "SecretNotFound")


# ======================================================================================
# SDK: listing and paging (spec §5)
# ======================================================================================

PAGED_SECRETS = 27  # more than one default page (25)
PAGED_VERSIONS = 27
PAGE = 10


@dataclass
class PagingVault:
    client: SecretClient
    names: list[str]
    versioned_name: str
    versions: list[str]


@pytest.fixture(scope="module")
def paging_vault(herald: Herald, api_version: Optional[str], make_client):
    """A fresh vault with 27 single-version secrets plus one secret with 27 versions."""
    info = herald.create_vault(unique_vault_name("kvpage"))
    with make_client(info["vaultUri"], api_version=api_version) as c:
        names = [f"paged-{i:02d}" for i in range(PAGED_SECRETS)]
        for n in names:
            c.set_secret(n, f"value-of-{n}", tags={"n": n})
        versioned = "many-versions"
        versions = [c.set_secret(versioned, f"v{i}").properties.version for i in range(PAGED_VERSIONS)]
        yield PagingVault(c, names + [versioned], versioned, versions)


def test_list_secrets_pages_by_max_page_size(paging_vault: PagingVault):
    c = paging_vault.client
    sizes, items = page_sizes(c.list_properties_of_secrets(max_page_size=PAGE).by_page())
    assert sizes == expected_sizes(len(paging_vault.names), PAGE)
    assert sorted(p.name for p in items) == sorted(paging_vault.names)


def test_list_secrets_default_page_holds_25(paging_vault: PagingVault):
    c = paging_vault.client
    sizes, items = page_sizes(c.list_properties_of_secrets().by_page())
    assert sizes == expected_sizes(len(paging_vault.names), 25)
    assert len({p.name for p in items}) == len(items)


def test_list_secrets_continuation_token_resumes(paging_vault: PagingVault):
    c = paging_vault.client
    pages = c.list_properties_of_secrets(max_page_size=PAGE).by_page()
    first = [p.name for p in next(pages)]
    token = pages.continuation_token
    assert token, "a nextLink is expected after the first page"
    resumed = c.list_properties_of_secrets(max_page_size=PAGE).by_page(continuation_token=token)
    rest = [p.name for page in resumed for p in page]
    assert len(first) == PAGE
    assert sorted(first + rest) == sorted(paging_vault.names)


def test_list_secrets_items_are_unversioned_with_attributes(paging_vault: PagingVault, herald: Herald):
    c = paging_vault.client
    items = {p.name: p for p in c.list_properties_of_secrets()}
    item = items["paged-00"]
    assert item.id == f"{c.vault_url}/secrets/paged-00"
    assert item.version is None
    assert f":{herald.port}/" in item.id
    assert item.tags == {"n": "paged-00"}
    assert item.enabled is True
    assert_recent(item.created_on)
    assert item.recovery_level == "Recoverable+Purgeable"
    assert item.recoverable_days == 90


def test_list_secret_versions_pages_by_max_page_size(paging_vault: PagingVault):
    c = paging_vault.client
    pager = c.list_properties_of_secret_versions(paging_vault.versioned_name, max_page_size=PAGE)
    sizes, items = page_sizes(pager.by_page())
    assert sizes == expected_sizes(PAGED_VERSIONS, PAGE)
    assert sorted(p.version for p in items) == sorted(paging_vault.versions)
    for p in items:
        assert_versioned_id(p, c.vault_url, paging_vault.versioned_name)


def test_list_secret_versions_default_page_holds_25(paging_vault: PagingVault):
    c = paging_vault.client
    sizes, items = page_sizes(c.list_properties_of_secret_versions(paging_vault.versioned_name).by_page())
    assert sizes == expected_sizes(PAGED_VERSIONS, 25)
    assert sorted(p.version for p in items) == sorted(paging_vault.versions)


def test_list_secrets_excludes_deleted(client: SecretClient, new_name):
    keep, gone = new_name("keep"), new_name("gone")
    client.set_secret(keep, "v")
    client.set_secret(gone, "v")
    delete(client, gone)
    names = {p.name for p in client.list_properties_of_secrets()}
    assert keep in names
    assert gone not in names


def test_list_secrets_shows_latest_version_metadata(client: SecretClient, secret_name: str):
    client.set_secret(secret_name, "one", content_type="a")
    client.set_secret(secret_name, "two", content_type="b", tags={"latest": "1"})
    item = next(p for p in client.list_properties_of_secrets() if p.name == secret_name)
    assert item.content_type == "b"
    assert item.tags == {"latest": "1"}


# ======================================================================================
# SDK: soft delete, recover, purge (spec §6, §7)
# ======================================================================================


def test_delete_secret_returns_recovery_info(client: SecretClient, secret_name: str):
    latest = client.set_secret(secret_name, "v", tags={"a": "b"}, content_type="text/plain")
    deleted = delete(client, secret_name)
    assert isinstance(deleted, DeletedSecret)
    assert deleted.name == secret_name
    assert deleted.id == latest.id
    assert deleted.recovery_id == f"{client.vault_url}/deletedsecrets/{secret_name}"
    assert_recent(deleted.deleted_date)
    assert deleted.scheduled_purge_date - deleted.deleted_date == timedelta(days=90)
    props = deleted.properties
    assert props.tags == {"a": "b"}
    assert props.content_type == "text/plain"
    assert props.recovery_level == "Recoverable+Purgeable"
    assert props.recoverable_days == 90


def test_deleted_secret_is_not_found_by_get(client: SecretClient, secret_name: str):
    version = client.set_secret(secret_name, "v").properties.version
    delete(client, secret_name)
    with pytest.raises(ResourceNotFoundError) as ei:
        client.get_secret(secret_name)
    assert_error(ei.value, 404, "SecretNotFound")
    with pytest.raises(ResourceNotFoundError):
        client.get_secret(secret_name, version)


def test_delete_missing_secret_raises_not_found(client: SecretClient, secret_name: str):
    with pytest.raises(ResourceNotFoundError) as ei:
        client.begin_delete_secret(secret_name, **POLL)
    assert_error(ei.value, 404, "SecretNotFound")


def test_get_deleted_secret(client: SecretClient, secret_name: str):
    latest = client.set_secret(secret_name, "v", tags={"k": "v"})
    from_delete = delete(client, secret_name)
    deleted = client.get_deleted_secret(secret_name)
    assert deleted.name == secret_name
    assert deleted.id == latest.id
    assert deleted.recovery_id == from_delete.recovery_id
    assert deleted.deleted_date == from_delete.deleted_date
    assert deleted.scheduled_purge_date == from_delete.scheduled_purge_date
    assert deleted.properties.tags == {"k": "v"}
    assert deleted.properties.version == latest.properties.version


def test_list_deleted_secrets(client: SecretClient, secret_name: str):
    client.set_secret(secret_name, "v", content_type="text/plain")
    delete(client, secret_name)
    listed = {d.name: d for d in client.list_deleted_secrets()}
    assert secret_name in listed
    item = listed[secret_name]
    assert item.recovery_id == f"{client.vault_url}/deletedsecrets/{secret_name}"
    assert item.id == f"{client.vault_url}/secrets/{secret_name}"
    assert_recent(item.deleted_date)
    assert item.scheduled_purge_date - item.deleted_date == timedelta(days=90)
    assert item.properties.content_type == "text/plain"
    assert item.properties.recovery_level == "Recoverable+Purgeable"


def test_list_deleted_secrets_pages(fresh_client):
    c = fresh_client()
    names = [f"del-{i}" for i in range(5)]
    for n in names:
        c.set_secret(n, "v")
        delete(c, n)
    sizes, items = page_sizes(c.list_deleted_secrets(max_page_size=2).by_page())
    assert sizes == [2, 2, 1]
    assert sorted(d.name for d in items) == names


def test_recover_deleted_secret_restores_all_versions(client: SecretClient, secret_name: str):
    first = client.set_secret(secret_name, "one", tags={"v": "1"})
    second = client.set_secret(secret_name, "two", content_type="text/plain")
    delete(client, secret_name)
    recovered = recover(client, secret_name)
    assert isinstance(recovered, SecretProperties)
    assert recovered.id == second.id
    assert recovered.content_type == "text/plain"
    assert client.get_secret(secret_name).value == "two"
    old = client.get_secret(secret_name, first.properties.version)
    assert old.value == "one"
    assert old.properties.tags == {"v": "1"}
    with pytest.raises(ResourceNotFoundError):
        client.get_deleted_secret(secret_name)


def test_purge_deleted_secret_removes_it_for_good(client: SecretClient, secret_name: str):
    client.set_secret(secret_name, "old")
    delete(client, secret_name)
    assert client.purge_deleted_secret(secret_name) is None  # SDK accepts only 204
    with pytest.raises(ResourceNotFoundError) as ei:
        client.get_deleted_secret(secret_name)
    assert_error(ei.value, 404, "SecretNotFound")
    assert secret_name not in {d.name for d in client.list_deleted_secrets()}
    # the name is free again, with a fresh history
    fresh = client.set_secret(secret_name, "new")
    assert [v.version for v in client.list_properties_of_secret_versions(secret_name)] == [fresh.properties.version]


def test_set_on_soft_deleted_name_conflicts(client: SecretClient, secret_name: str):
    client.set_secret(secret_name, "v")
    delete(client, secret_name)
    with pytest.raises(ResourceExistsError) as ei:
        client.set_secret(secret_name, "again")
    assert_error(ei.value, 409, "Conflict", inner="ObjectIsDeletedButRecoverable",
                 message=f"Secret {secret_name} is currently in a deleted but recoverable state, and its name cannot "
                         "be reused; in this state, the secret can only be recovered or purged.")


@pytest.mark.parametrize("operation", ["get_deleted", "purge", "recover"])
def test_deleted_secret_operations_on_unknown_name_raise_not_found(client: SecretClient, secret_name: str,
                                                                   operation: str):
    calls = {
        "get_deleted": lambda: client.get_deleted_secret(secret_name),
        "purge": lambda: client.purge_deleted_secret(secret_name),
        "recover": lambda: client.begin_recover_deleted_secret(secret_name, **POLL),
    }
    with pytest.raises(ResourceNotFoundError) as ei:
        calls[operation]()
    assert_error(ei.value, 404, "SecretNotFound", message=f"Deleted Secret not found: {secret_name}")


def test_deleted_secret_operations_on_live_secret_raise_not_found(client: SecretClient, secret_name: str):
    client.set_secret(secret_name, "v")
    with pytest.raises(ResourceNotFoundError):
        client.get_deleted_secret(secret_name)
    with pytest.raises(ResourceNotFoundError):
        client.purge_deleted_secret(secret_name)
    assert client.get_secret(secret_name).value == "v"


# ======================================================================================
# SDK: backup / restore
# ======================================================================================


def test_backup_and_restore_after_purge(client: SecretClient, secret_name: str):
    first = client.set_secret(secret_name, "one", tags={"v": "1"}, content_type="text/plain")
    second = client.set_secret(secret_name, "two", expires_on=EXPIRES)
    client.update_secret_properties(secret_name, first.properties.version, enabled=False)
    backup = client.backup_secret(secret_name)
    assert isinstance(backup, bytes) and len(backup) > 0
    delete(client, secret_name)
    client.purge_deleted_secret(secret_name)

    restored = client.restore_secret_backup(backup)
    assert isinstance(restored, SecretProperties)
    assert restored.id == second.id
    assert restored.expires_on == EXPIRES
    versions = {v.version: v for v in client.list_properties_of_secret_versions(secret_name)}
    assert set(versions) == {first.properties.version, second.properties.version}
    assert versions[first.properties.version].enabled is False
    assert versions[first.properties.version].tags == {"v": "1"}
    assert versions[first.properties.version].content_type == "text/plain"
    assert client.get_secret(secret_name).value == "two"
    client.update_secret_properties(secret_name, first.properties.version, enabled=True)
    assert client.get_secret(secret_name, first.properties.version).value == "one"


def test_backup_missing_secret_raises_not_found(client: SecretClient, secret_name: str):
    with pytest.raises(ResourceNotFoundError) as ei:
        client.backup_secret(secret_name)
    assert_error(ei.value, 404, "SecretNotFound")


def test_restore_onto_live_secret_conflicts(client: SecretClient, secret_name: str):
    client.set_secret(secret_name, "v")
    backup = client.backup_secret(secret_name)
    with pytest.raises(ResourceExistsError) as ei:
        client.restore_secret_backup(backup)
    assert_error(ei.value, 409, "Conflict", message_contains="There was a conflict restoring the secret")


def test_restore_onto_soft_deleted_name_conflicts(client: SecretClient, secret_name: str):
    client.set_secret(secret_name, "v")
    backup = client.backup_secret(secret_name)
    delete(client, secret_name)
    with pytest.raises(ResourceExistsError) as ei:
        client.restore_secret_backup(backup)
    assert_error(ei.value, 409, "Conflict", inner="ObjectIsDeletedButRecoverable")


# ======================================================================================
# SDK: invalid input
# ======================================================================================


@pytest.mark.parametrize("bad_name", ["bad_name", "x" * 128, "dot.ted"], ids=["underscore", "128-chars", "dot"])
def test_set_invalid_name_is_bad_parameter(client: SecretClient, bad_name: str):
    with pytest.raises(HttpResponseError) as ei:
        client.set_secret(bad_name, "v")
    assert_error(ei.value, 400, "BadParameter", message=f"The request URI contains an invalid name: {bad_name}")


def test_name_of_127_chars_is_valid(client: SecretClient):
    name = ("n" + uuid.uuid4().hex * 4)[:127]
    assert client.set_secret(name, "v").name == name


# ======================================================================================
# Vault options: purge protection and retention (spec §7)
# ======================================================================================


def test_purge_protection_forbids_purge_but_allows_recover(fresh_client, secret_name: str):
    c = fresh_client(enablePurgeProtection=True)
    created = c.set_secret(secret_name, "v")
    assert created.properties.recovery_level == "Recoverable"
    assert created.properties.recoverable_days == 90
    delete(c, secret_name)
    with pytest.raises(HttpResponseError) as ei:
        c.purge_deleted_secret(secret_name)
    assert type(ei.value) is HttpResponseError
    assert_error(ei.value, 403, "Forbidden",
                 message_contains='Operation "purge" is not allowed because purge protection is enabled for this vault')
    assert c.get_deleted_secret(secret_name).name == secret_name
    recover(c, secret_name)
    assert c.get_secret(secret_name).value == "v"


def test_custom_retention_sets_customized_recovery_level(fresh_client, secret_name: str):
    c = fresh_client(softDeleteRetentionInDays=7)
    created = c.set_secret(secret_name, "v")
    assert created.properties.recovery_level == "CustomizedRecoverable+Purgeable"
    assert created.properties.recoverable_days == 7
    deleted = delete(c, secret_name)
    assert deleted.scheduled_purge_date - deleted.deleted_date == timedelta(days=7)
    c.purge_deleted_secret(secret_name)


def test_custom_retention_with_purge_protection(fresh_client, secret_name: str):
    c = fresh_client(softDeleteRetentionInDays=30, enablePurgeProtection=True)
    created = c.set_secret(secret_name, "v")
    assert created.properties.recovery_level == "CustomizedRecoverable"
    assert created.properties.recoverable_days == 30
    deleted = delete(c, secret_name)
    assert deleted.scheduled_purge_date - deleted.deleted_date == timedelta(days=30)


def test_vaults_are_isolated_by_host(fresh_client, secret_name: str):
    a, b = fresh_client(), fresh_client()
    a.set_secret(secret_name, "in-a")
    with pytest.raises(ResourceNotFoundError):
        b.get_secret(secret_name)
    b.set_secret(secret_name, "in-b")
    assert a.get_secret(secret_name).value == "in-a"
    assert b.get_secret(secret_name).value == "in-b"


# ======================================================================================
# The default vault at https://localhost:PORT (needs verify_challenge_resource=False)
# ======================================================================================


def test_default_vault_smoke(herald: Herald, make_client, secret_name: str):
    with make_client(herald.default_vault_url, verify_challenge_resource=False) as c:
        created = c.set_secret(secret_name, "default-vault", tags={"where": "default"})
        assert_versioned_id(created.properties, herald.default_vault_url, secret_name)
        got = c.get_secret(secret_name)
        assert got.value == "default-vault"
        assert got.properties.tags == {"where": "default"}
        assert secret_name in {p.name for p in c.list_properties_of_secrets()}
        deleted = delete(c, secret_name)
        assert deleted.recovery_id == f"{herald.default_vault_url}/deletedsecrets/{secret_name}"
        c.purge_deleted_secret(secret_name)


# ======================================================================================
# Raw HTTP: wire details the SDK does not expose
# ======================================================================================

_ADMIN = object()


class RawVault:
    def __init__(self, herald: Herald, url: str):
        self.herald = herald
        self.url = url.rstrip("/")

    @property
    def host(self) -> str:
        return urlparse(self.url).netloc

    def call(self, method: str, path_or_url: str, *, api_version: Optional[str] = "7.6",
             token: Any = _ADMIN, headers: Optional[dict] = None, **kwargs: Any) -> requests.Response:
        url = path_or_url if path_or_url.startswith("https://") else self.url + path_or_url
        if api_version is not None:
            # like the SDK: set api-version, keep every other query parameter
            parts = urlparse(url)
            query = parse_qs(parts.query, keep_blank_values=True)
            query["api-version"] = [api_version]
            url = urlunparse(parts._replace(query=urlencode(query, doseq=True, safe="$")))
        hdrs = {"Accept": "application/json"}
        if token is _ADMIN:
            token = self.herald.admin_token
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        hdrs.update(headers or {})
        return requests.request(method, url, headers=hdrs, verify=self.herald.ca, timeout=30, **kwargs)

    def put(self, name: str, value: str = "v", **body: Any) -> dict:
        resp = self.call("PUT", f"/secrets/{name}", json={"value": value, **body})
        assert resp.status_code == 200, resp.text
        return resp.json()


@pytest.fixture(scope="module")
def raw(herald: Herald) -> RawVault:
    return RawVault(herald, herald.create_vault(unique_vault_name("kvraw"))["vaultUri"])


def parse_challenge(header: str) -> dict:
    assert header.startswith("Bearer "), header
    params = {}
    for part in header[len("Bearer "):].split(","):
        key, _, value = part.strip().partition("=")
        assert value.startswith('"') and value.endswith('"'), f"unquoted value in {header!r}"
        params[key] = value[1:-1]
    return params


def assert_no_nulls(obj: Any, path: str = "$") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert v is not None, f"{path}.{k} is null (null fields must be omitted)"
            assert_no_nulls(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            assert_no_nulls(v, f"{path}[{i}]")


def assert_int_timestamps(attributes: dict, *keys: str) -> None:
    for k in keys:
        assert type(attributes[k]) is int, f"attributes.{k} must be integer unix seconds, got {attributes[k]!r}"


def error_of(resp: requests.Response) -> dict:
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"error"}, body
    return body["error"]


# -- authentication challenge (spec §8) -------------------------------------------------


def test_unauthenticated_request_gets_challenge(raw: RawVault, herald: Herald):
    resp = raw.call("PUT", "/secrets/challenge-me", token=None, json={"value": "v"})
    assert resp.status_code == 401
    params = parse_challenge(resp.headers["WWW-Authenticate"])
    assert set(params) == {"authorization", "resource"}, "no claims or other parameters"
    base = f"https://{herald.challenge_authority}"
    assert params["resource"] == base
    assert params["authorization"].startswith(base + "/")
    tenant = params["authorization"][len(base) + 1:]
    assert tenant and "/" not in tenant
    error = error_of(resp)
    assert error["code"] == "Unauthorized"
    assert "Request is missing a Bearer or PoP token." in error["message"]


def test_challenge_comes_before_any_validation(raw: RawVault):
    # what the SDK's first, bare request looks like: real method and path, no body, no token
    resp = raw.call("PUT", "/secrets/bad_name!", token=None, api_version=None, data=b"",
                    headers={"Content-Type": "application/json"})
    assert resp.status_code == 401
    assert "WWW-Authenticate" in resp.headers


def test_challenge_is_the_same_for_every_vault(raw: RawVault, herald: Herald):
    other = RawVault(herald, herald.default_vault_url)
    a = raw.call("GET", "/secrets", token=None).headers["WWW-Authenticate"]
    b = other.call("GET", "/secrets", token=None).headers["WWW-Authenticate"]
    assert a == b


def test_wrong_token_is_rejected_with_challenge(raw: RawVault):
    resp = raw.call("GET", "/secrets", token="hrd_wrong_" + uuid.uuid4().hex)
    assert resp.status_code == 401
    assert "WWW-Authenticate" in resp.headers
    assert error_of(resp)["code"] == "Unauthorized"


def test_sdk_asks_credential_for_challenge_scope_and_tenant(herald: Herald, make_client, secret_name: str):
    vault_url = herald.create_vault()["vaultUri"]
    header = RawVault(herald, vault_url).call("GET", "/secrets", token=None).headers["WWW-Authenticate"]
    tenant = parse_challenge(header)["authorization"].rsplit("/", 1)[1]
    cred = HeraldToken(herald.admin_token)
    with make_client(vault_url, credential=cred) as c:
        c.set_secret(secret_name, "v")
        c.get_secret(secret_name)
    assert len(cred.requests) == 1, "one token for the whole session (expires in an hour)"
    req = cred.requests[0]
    assert req.scopes == (f"https://{herald.challenge_authority}/.default",)
    assert req.tenant_id == tenant
    assert req.claims is None


def test_sdk_with_wrong_token_raises_client_authentication_error(herald: Herald, make_client, raw: RawVault):
    with make_client(raw.url, token="hrd_wrong_" + uuid.uuid4().hex) as c:
        with pytest.raises(ClientAuthenticationError) as ei:
            c.get_secret("anything")
    assert ei.value.status_code == 401


# -- api-version (spec §2) --------------------------------------------------------------


def test_missing_api_version_is_bad_parameter(raw: RawVault):
    resp = raw.call("GET", "/secrets", api_version=None)
    assert resp.status_code == 400
    assert error_of(resp)["code"] == "BadParameter"


@pytest.mark.parametrize("version", ["2016-10-01", "7.0", "7.3", "2025-07-01", "2026-04-01", "2099-01-01",
                                     "2099-01-01-preview", "9.9"])
def test_every_sdk_and_future_api_version_is_accepted(raw: RawVault, version: str, secret_name: str):
    resp = raw.call("PUT", f"/secrets/{secret_name}", api_version=version, json={"value": "v"})
    assert resp.status_code == 200, resp.text
    resp = raw.call("GET", f"/secrets/{secret_name}/", api_version=version)
    assert resp.status_code == 200, resp.text
    assert resp.json()["value"] == "v"


# -- shapes (spec §3, §4) ---------------------------------------------------------------


def test_set_response_shape(raw: RawVault, secret_name: str):
    resp = raw.call("PUT", f"/secrets/{secret_name}", json={
        "value": "s3cr3t", "contentType": "text/plain", "tags": {"owner": "team-a"},
        "attributes": {"enabled": True, "exp": 1924992000, "nbf": 1700000000},
    })
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert_no_nulls(body)
    assert set(body) == {"value", "id", "contentType", "tags", "attributes"}
    assert re.fullmatch(rf"https://{re.escape(raw.host)}/secrets/{secret_name}/[0-9a-f]{{32}}", body["id"])
    assert body["value"] == "s3cr3t"
    assert body["contentType"] == "text/plain"
    assert body["tags"] == {"owner": "team-a"}
    attrs = body["attributes"]
    assert set(attrs) == {"enabled", "exp", "nbf", "created", "updated", "recoverableDays", "recoveryLevel"}
    assert attrs["enabled"] is True
    assert attrs["exp"] == 1924992000 and attrs["nbf"] == 1700000000
    assert_int_timestamps(attrs, "exp", "nbf", "created", "updated")
    assert attrs["recoverableDays"] == 90
    assert attrs["recoveryLevel"] == "Recoverable+Purgeable"


def test_get_latest_with_and_without_trailing_slash(raw: RawVault, secret_name: str):
    raw.put(secret_name, "one")
    latest = raw.put(secret_name, "two")
    for path in (f"/secrets/{secret_name}/", f"/secrets/{secret_name}"):
        resp = raw.call("GET", path)
        assert resp.status_code == 200, (path, resp.text)
        assert resp.json()["id"] == latest["id"]
        assert resp.json()["value"] == "two"


def test_update_response_has_no_value(raw: RawVault, secret_name: str):
    created = raw.put(secret_name)
    version = created["id"].rsplit("/", 1)[1]
    resp = raw.call("PATCH", f"/secrets/{secret_name}/{version}", json={"tags": {"a": "b"}})
    assert resp.status_code == 200
    body = resp.json()
    assert "value" not in body
    assert body["id"] == created["id"]
    assert body["tags"] == {"a": "b"}
    assert_no_nulls(body)


def test_list_items_have_no_value_and_unversioned_ids(raw: RawVault, secret_name: str):
    raw.put(secret_name, "v", contentType="text/plain")
    resp = raw.call("GET", "/secrets", params={"maxresults": 25})
    assert resp.status_code == 200
    body = resp.json()
    assert "value" in body and "nextLink" in body
    items, link = list(body["value"]), body["nextLink"]
    while link:
        page = raw.call("GET", link).json()
        items += page["value"]
        link = page.get("nextLink")
    item = next(i for i in items if i["id"].endswith(f"/secrets/{secret_name}"))
    assert item["id"] == f"https://{raw.host}/secrets/{secret_name}"
    assert "value" not in item
    assert set(item) <= {"id", "attributes", "tags", "contentType"}
    assert item["contentType"] == "text/plain"
    assert_int_timestamps(item["attributes"], "created", "updated")
    assert_no_nulls(item)


def test_versions_items_have_versioned_ids(raw: RawVault, secret_name: str):
    created = raw.put(secret_name)
    resp = raw.call("GET", f"/secrets/{secret_name}/versions")
    assert resp.status_code == 200
    body = resp.json()
    assert [i["id"] for i in body["value"]] == [created["id"]]
    assert "value" not in body["value"][0]
    assert body.get("nextLink") is None


def test_next_link_is_absolute_and_keeps_maxresults(herald: Herald):
    vault = RawVault(herald, herald.create_vault()["vaultUri"])
    names = [f"link-{i}" for i in range(5)]
    for n in names:
        vault.put(n)
    seen, link, pages = [], "/secrets?maxresults=2", 0
    while link:
        resp = vault.call("GET", link)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        seen += [i["id"].rsplit("/", 1)[1] for i in body["value"]]
        pages += 1
        link = body.get("nextLink")
        if link:
            parts = urlparse(link)
            assert f"{parts.scheme}://{parts.netloc}" == vault.url, link
            assert parts.path == "/secrets"
            query = parse_qs(parts.query)
            assert query.get("maxresults") == ["2"], link
            assert query.get("$skiptoken"), link
        else:
            assert "nextLink" in body and body["nextLink"] is None, "last page says nextLink: null"
    assert pages == 3
    assert sorted(seen) == names


def test_delete_response_shape_and_immediate_visibility(raw: RawVault, secret_name: str):
    created = raw.put(secret_name)
    resp = raw.call("DELETE", f"/secrets/{secret_name}")
    assert resp.status_code == 200
    body = resp.json()
    assert_no_nulls(body)
    assert "value" not in body
    assert body["id"] == created["id"]
    assert body["recoveryId"] == f"https://{raw.host}/deletedsecrets/{secret_name}"
    assert type(body["deletedDate"]) is int and type(body["scheduledPurgeDate"]) is int
    assert body["scheduledPurgeDate"] - body["deletedDate"] == 90 * 86400
    # the deleted secret is visible at once (the SDK poller's first GET succeeds)
    resp = raw.call("GET", f"/deletedsecrets/{secret_name}")
    assert resp.status_code == 200
    assert resp.json()["recoveryId"] == body["recoveryId"]
    assert "value" not in resp.json()


def test_recover_response_shape_and_immediate_visibility(raw: RawVault, secret_name: str):
    created = raw.put(secret_name, "v")
    raw.call("DELETE", f"/secrets/{secret_name}")
    resp = raw.call("POST", f"/deletedsecrets/{secret_name}/recover", data=b"")
    assert resp.status_code == 200
    assert resp.json()["id"] == created["id"]
    assert "value" not in resp.json()
    got = raw.call("GET", f"/secrets/{secret_name}/")
    assert got.status_code == 200
    assert got.json()["value"] == "v"


def test_purge_returns_204_with_empty_body(raw: RawVault, secret_name: str):
    raw.put(secret_name)
    raw.call("DELETE", f"/secrets/{secret_name}")
    resp = raw.call("DELETE", f"/deletedsecrets/{secret_name}")
    assert resp.status_code == 204
    assert resp.content == b""


def test_backup_blob_is_base64url_and_restore_has_no_value(raw: RawVault, secret_name: str):
    created = raw.put(secret_name, "v")
    resp = raw.call("POST", f"/secrets/{secret_name}/backup", data=b"")
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"value"}
    assert re.fullmatch(r"[A-Za-z0-9_-]+=*", body["value"]), "backup must be base64url"
    raw.call("DELETE", f"/secrets/{secret_name}")
    assert raw.call("DELETE", f"/deletedsecrets/{secret_name}").status_code == 204
    resp = raw.call("POST", "/secrets/restore", json={"value": body["value"]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == created["id"]
    assert "value" not in resp.json()


# -- exact error bodies (spec §5, §6) ---------------------------------------------------


def test_not_found_error_body(raw: RawVault, secret_name: str):
    resp = raw.call("GET", f"/secrets/{secret_name}/")
    assert resp.status_code == 404
    error = error_of(resp)
    assert error["code"] == "SecretNotFound"
    assert error["message"].startswith(f"A secret with (name/id) {secret_name} was not found in this key vault.")


def test_deleted_not_found_error_body(raw: RawVault, secret_name: str):
    resp = raw.call("GET", f"/deletedsecrets/{secret_name}")
    assert resp.status_code == 404
    assert error_of(resp) == {"code": "SecretNotFound", "message": f"Deleted Secret not found: {secret_name}"}


def test_disabled_error_body(raw: RawVault, secret_name: str):
    raw.put(secret_name, attributes={"enabled": False})
    resp = raw.call("GET", f"/secrets/{secret_name}/")
    assert resp.status_code == 403
    assert error_of(resp) == {"code": "Forbidden", "message": "Operation get is not allowed on a disabled secret.",
                              "innererror": {"code": "SecretDisabled"}}


def test_soft_deleted_conflict_error_body(raw: RawVault, secret_name: str):
    raw.put(secret_name)
    raw.call("DELETE", f"/secrets/{secret_name}")
    resp = raw.call("PUT", f"/secrets/{secret_name}", json={"value": "v"})
    assert resp.status_code == 409
    assert error_of(resp) == {
        "code": "Conflict",
        "message": f"Secret {secret_name} is currently in a deleted but recoverable state, and its name cannot be "
                   "reused; in this state, the secret can only be recovered or purged.",
        "innererror": {"code": "ObjectIsDeletedButRecoverable"},
    }


@pytest.mark.parametrize("method,path_tpl", [("GET", "/secrets/{n}/"), ("PUT", "/secrets/{n}")])
def test_invalid_name_error_body(raw: RawVault, method: str, path_tpl: str):
    name = "bad_name"
    resp = raw.call(method, path_tpl.format(n=name), json={"value": "v"} if method == "PUT" else None)
    assert resp.status_code == 400
    assert error_of(resp) == {"code": "BadParameter", "message": f"The request URI contains an invalid name: {name}"}


def test_unknown_vault_host_is_vault_not_found(herald: Herald):
    ghost = RawVault(herald, herald.vault_url(unique_vault_name("ghost")))
    resp = ghost.call("GET", "/secrets")
    assert resp.status_code == 404
    assert error_of(resp)["code"] == "VaultNotFound"


# -- limits (spec §5; open choices default to 400 BadParameter) -------------------------


def test_value_over_25kb_is_bad_parameter(raw: RawVault, secret_name: str):
    assert raw.call("PUT", f"/secrets/{secret_name}", json={"value": "x" * (24 * 1024)}).status_code == 200
    resp = raw.call("PUT", f"/secrets/{secret_name}", json={"value": "x" * (26 * 1024)})
    assert resp.status_code == 400
    assert error_of(resp)["code"] == "BadParameter"


def test_more_than_15_tags_is_bad_parameter(raw: RawVault, secret_name: str):
    tags = {f"t{i}": "v" for i in range(15)}
    assert raw.call("PUT", f"/secrets/{secret_name}", json={"value": "v", "tags": tags}).status_code == 200
    tags["t15"] = "v"
    resp = raw.call("PUT", f"/secrets/{secret_name}", json={"value": "v", "tags": tags})
    assert resp.status_code == 400
    assert error_of(resp)["code"] == "BadParameter"


def test_maxresults_over_25_is_bad_parameter(raw: RawVault):
    resp = raw.call("GET", "/secrets", params={"maxresults": 26})
    assert resp.status_code == 400
    assert error_of(resp)["code"] == "BadParameter"


def test_set_without_value_is_bad_parameter(raw: RawVault, secret_name: str):
    resp = raw.call("PUT", f"/secrets/{secret_name}", json={"contentType": "text/plain"})
    assert resp.status_code == 400
    assert error_of(resp)["code"] == "BadParameter"


# ======================================================================================
# Management API: vaults
# ======================================================================================


def test_create_vault_returns_vault_uri(herald: Herald):
    name = unique_vault_name("mgmt")
    resp = herald.mgmt("POST", "/api/v1/vaults", json={"name": name})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["name"] == name
    assert body["vaultUri"].rstrip("/") == f"https://{name}.vault.localhost:{herald.port}"


def test_create_vault_requires_admin_token(herald: Herald):
    resp = herald.mgmt("POST", "/api/v1/vaults", token=None, json={"name": unique_vault_name()})
    assert resp.status_code == 401
    resp = herald.mgmt("POST", "/api/v1/vaults", token="hrd_wrong", json={"name": unique_vault_name()})
    assert resp.status_code in (401, 403)


def test_create_vault_with_taken_name_conflicts(herald: Herald):
    name = herald.create_vault()["name"]
    resp = herald.mgmt("POST", "/api/v1/vaults", json={"name": name})
    assert resp.status_code == 409, resp.text


@pytest.mark.parametrize("props", [
    {"name": "1starts-with-digit"}, {"name": "ab"}, {"name": "has_underscore"}, {"name": "x" * 25},
    {"softDeleteRetentionInDays": 6}, {"softDeleteRetentionInDays": 91},
], ids=["digit-first", "too-short", "underscore", "too-long", "retention-6", "retention-91"])
def test_create_vault_rejects_invalid_properties(herald: Herald, props: dict):
    body = {"name": unique_vault_name(), **props}
    resp = herald.mgmt("POST", "/api/v1/vaults", json=body)
    assert resp.status_code == 400, resp.text


def test_created_vault_is_empty_and_usable_at_once(herald: Herald, make_client, secret_name: str):
    info = herald.create_vault(softDeleteRetentionInDays=90, enablePurgeProtection=False)
    with make_client(info["vaultUri"]) as c:
        assert list(c.list_properties_of_secrets()) == []
        assert list(c.list_deleted_secrets()) == []
        assert c.set_secret(secret_name, "v").properties.recovery_level == "Recoverable+Purgeable"


# ======================================================================================
# Durability: state, ids, tenant and CA survive a restart (spec §7, §8, §12)
# ======================================================================================


def test_state_ids_tenant_and_ca_survive_restart(tmp_path, make_client):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    log = tmp_path / "herald.log"
    first = start_herald(data_dir, log)
    try:
        vault_url = first.create_vault(softDeleteRetentionInDays=30)["vaultUri"]
        challenge = RawVault(first, vault_url).call("GET", "/secrets", token=None).headers["WWW-Authenticate"]
        ca = (data_dir / "tls" / "ca.pem").read_bytes()
        with make_client(vault_url, token=first.admin_token, connection_verify=first.ca) as c:
            kept = c.set_secret("kept", "v1", tags={"a": "b"})
            c.set_secret("gone", "v")
            deleted = delete(c, "gone")
    finally:
        assert stop_herald(first) is not None

    second = start_herald(data_dir, log, port=first.port, admin_token=first.admin_token)
    try:
        assert (data_dir / "tls" / "ca.pem").read_bytes() == ca, "the generated CA is reused"
        again = RawVault(second, vault_url).call("GET", "/secrets", token=None).headers["WWW-Authenticate"]
        assert again == challenge, "tenant and challenge are stable across restarts"
        with make_client(vault_url, token=second.admin_token, connection_verify=second.ca) as c:
            got = c.get_secret("kept")
            assert got.id == kept.id
            assert got.value == "v1"
            assert got.properties.tags == {"a": "b"}
            assert got.properties.created_on == kept.properties.created_on
            assert got.properties.recoverable_days == 30
            still_deleted = c.get_deleted_secret("gone")
            assert still_deleted.deleted_date == deleted.deleted_date
            assert still_deleted.scheduled_purge_date == deleted.scheduled_purge_date
    finally:
        stop_herald(second)
