"""Fixtures for the Herald Key Vault conformance suite.

The suite starts one real `herald serve` process per test session and drives it with the
official `azure-keyvault-secrets` SDK (and, where the SDK hides the wire, with `requests`).
Wire facts come from shared/spec/keyvault.md.

Environment:
  HERALD_BIN        path of the herald binary (default: <repo>/target/release/herald)
  HERALD_KEEP_DATA  if set, keep the temporary data dir and server log after the run
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.keyvault.secrets import SecretClient

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "target" / "release" / "herald"

STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 10.0

# None = let the SDK send its default (2026-04-01 for azure-keyvault-secrets 4.12.0).
API_VERSIONS = [None, "7.4", "7.5", "7.6"]

# Secret operations in the SDK poll with this interval (seconds) instead of the default 2 s.
POLL = {"_polling_interval": 0.1}


# --------------------------------------------------------------------------------------
# Name resolution: glibc does not resolve `*.vault.localhost`, so resolve every `.localhost`
# name (and `localhost` itself, to avoid trying ::1 first) to 127.0.0.1 in this process.
# --------------------------------------------------------------------------------------

_real_getaddrinfo = socket.getaddrinfo


def _loopback_getaddrinfo(host: Any, *args: Any, **kwargs: Any):
    name = host.decode() if isinstance(host, (bytes, bytearray)) else host
    if isinstance(name, str):
        bare = name.lower().rstrip(".")
        if bare == "localhost" or bare.endswith(".localhost"):
            host = "127.0.0.1"
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(scope="session", autouse=True)
def localhost_resolution() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", _loopback_getaddrinfo)
        yield


# --------------------------------------------------------------------------------------
# Credential (spec §9): a static bearer token. Records what the SDK asked for.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class TokenRequest:
    scopes: tuple
    tenant_id: Optional[str]
    claims: Optional[str]
    enable_cae: bool


class HeraldToken:
    """Static-token credential: any object with get_token() satisfies azure-core's TokenCredential."""

    def __init__(self, token: str):
        self.token = token
        self.requests: list[TokenRequest] = []

    def get_token(self, *scopes: str, claims: Optional[str] = None, tenant_id: Optional[str] = None,
                  enable_cae: bool = False, **kwargs: Any) -> AccessToken:
        self.requests.append(TokenRequest(tuple(scopes), tenant_id, claims, enable_cae))
        return AccessToken(self.token, int(time.time()) + 3600)


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Herald:
    proc: subprocess.Popen
    port: int
    data_dir: Path
    log_path: Path
    admin_token: str

    @property
    def ca(self) -> str:
        return str(self.data_dir / "tls" / "ca.pem")

    @property
    def base_url(self) -> str:
        """Management / health endpoint base."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def default_vault_url(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def challenge_authority(self) -> str:
        """Authority named in every 401 challenge (spec §8): the vault base domain plus port."""
        return f"vault.localhost:{self.port}"

    def vault_url(self, name: str) -> str:
        return f"https://{name}.vault.localhost:{self.port}"

    def log_tail(self, limit: int = 8000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return "<no server log>"

    # -- management API ----------------------------------------------------------------

    def mgmt(self, method: str, path: str, *, token: Optional[str] = "admin", **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if token == "admin":
            token = self.admin_token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(method, self.base_url + path, headers=headers, verify=self.ca, timeout=30, **kwargs)

    def create_vault(self, name: Optional[str] = None, **props: Any) -> dict:
        """POST /api/v1/vaults; returns the JSON body (which carries `vaultUri`)."""
        body = {"name": name or unique_vault_name()}
        body.update(props)
        try:
            resp = self.mgmt("POST", "/api/v1/vaults", json=body)
        except requests.ConnectionError:
            code = self.proc.poll()
            if code is not None:
                pytest.fail(f"herald serve exited with code {code}. Log tail:\n{self.log_tail()}", pytrace=False)
            raise
        assert resp.status_code == 201, f"creating vault {body}: {resp.status_code} {resp.text}"
        return resp.json()


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _resolve_bin() -> Path:
    path = Path(os.environ.get("HERALD_BIN") or DEFAULT_BIN)
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.exit(
            f"herald binary not found or not executable: {path}\n"
            "Build it first (cargo build --release) or point HERALD_BIN at a built binary.",
            returncode=2,
        )
    return path


def _wait_healthy(herald: Herald) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_error = "server never answered"
    ca = Path(herald.ca)
    while time.monotonic() < deadline:
        code = herald.proc.poll()
        if code is not None:
            pytest.fail(f"herald serve exited with code {code} during startup. Log:\n{herald.log_tail()}",
                        pytrace=False)
        if ca.is_file():
            try:
                resp = requests.get(f"{herald.base_url}/healthz", verify=herald.ca, timeout=2)
                if resp.status_code == 200:
                    return
                last_error = f"GET /healthz -> {resp.status_code} {resp.text[:200]}"
            except requests.RequestException as exc:  # not listening yet, CA half-written, ...
                last_error = repr(exc)
        else:
            last_error = f"{ca} not created yet"
        time.sleep(0.1)
    pytest.fail(f"herald did not become healthy in {STARTUP_TIMEOUT_S:.0f}s ({last_error}). Log:\n"
                f"{herald.log_tail()}", pytrace=False)


def start_herald(data_dir: Path, log_path: Path, *, port: Optional[int] = None,
                 admin_token: Optional[str] = None, env: Optional[dict] = None) -> Herald:
    """Run `herald serve` on a loopback port and wait until GET /healthz answers 200 over verified TLS."""
    binary = _resolve_bin()
    port = port or _free_loopback_port()
    admin_token = admin_token or "hrd_test_" + secrets.token_hex(16)
    env = dict(os.environ, HERALD_ADMIN_TOKEN=admin_token, **(env or {}))
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [str(binary), "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}", "--amqp-listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    server = Herald(proc=proc, port=port, data_dir=data_dir, log_path=log_path, admin_token=admin_token)
    try:
        _wait_healthy(server)
    except BaseException:
        stop_herald(server)
        raise
    return server


def stop_herald(server: Herald) -> Optional[int]:
    """SIGTERM, then wait (kill after SHUTDOWN_TIMEOUT_S). Returns the exit code."""
    proc = server.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.fixture(scope="session")
def herald() -> Iterator[Herald]:
    root = Path(tempfile.mkdtemp(prefix="herald-compat-"))
    data_dir = root / "data"
    data_dir.mkdir()
    server = None
    try:
        server = start_herald(data_dir, root / "herald.log")
        yield server
    finally:
        if server is not None:
            stop_herald(server)
        if os.environ.get("HERALD_KEEP_DATA"):
            print(f"\nherald data and log kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def herald_still_running(request: pytest.FixtureRequest) -> None:
    """Fail fast, with the server log, if the shared server died (instead of a cascade of connection errors)."""
    if "herald" not in request.fixturenames:
        return
    server: Herald = request.getfixturevalue("herald")
    code = server.proc.poll()
    if code is not None:
        pytest.fail(f"herald serve exited with code {code} before this test. Log tail:\n{server.log_tail()}",
                    pytrace=False)


# --------------------------------------------------------------------------------------
# Naming helpers
# --------------------------------------------------------------------------------------


def unique_vault_name(tag: str = "kv") -> str:
    """3-24 chars, letters/digits/hyphens, starting with a letter."""
    return f"{tag}-{uuid.uuid4().hex[:10]}"[:24]


@pytest.fixture
def secret_name(request: pytest.FixtureRequest) -> str:
    """A unique, valid secret name derived from the test name (for readable server logs)."""
    stem = request.node.originalname.removeprefix("test_").replace("_", "-")[:80]
    return f"{stem}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def new_name() -> Callable[[str], str]:
    """Factory for more unique secret names within one test."""
    def make(prefix: str = "s") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"
    return make


# --------------------------------------------------------------------------------------
# SDK clients
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=API_VERSIONS, ids=lambda v: f"api-{v or 'default'}")
def api_version(request: pytest.FixtureRequest) -> Optional[str]:
    return request.param


@pytest.fixture(scope="session")
def make_client(herald: Herald) -> Callable[..., SecretClient]:
    """SecretClient factory: CA trust, static token, optional api_version (None = SDK default)."""
    def make(vault_url: str, *, api_version: Optional[str] = None, token: Optional[str] = None,
             credential: Any = None, **kwargs: Any) -> SecretClient:
        if api_version is not None:
            kwargs["api_version"] = api_version
        cred = credential or HeraldToken(token or herald.admin_token)
        kwargs.setdefault("connection_verify", herald.ca)
        return SecretClient(vault_url, cred, **kwargs)
    return make


@pytest.fixture(scope="module")
def vault(herald: Herald, api_version: Optional[str]) -> dict:
    """A fresh named vault per test module and api-version (default settings: 90 days, purgeable)."""
    tag = "kv" + (api_version or "def").replace(".", "").replace("-", "")
    return herald.create_vault(unique_vault_name(tag))


@pytest.fixture(scope="module")
def client(vault: dict, api_version: Optional[str], make_client) -> Iterator[SecretClient]:
    """SDK client for `vault`, with default SDK settings (challenge resource verification on)."""
    with make_client(vault["vaultUri"], api_version=api_version) as c:
        yield c


@pytest.fixture
def fresh_client(herald: Herald, api_version: Optional[str], make_client) -> Iterator[Callable[..., SecretClient]]:
    """Factory: a client for a brand-new vault (for tests that need an empty vault or vault options)."""
    made: list[SecretClient] = []

    def make(**vault_props: Any) -> SecretClient:
        info = herald.create_vault(**vault_props)
        c = make_client(info["vaultUri"], api_version=api_version)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
