"""A throwaway PKI for TLS tests, made with the `openssl` CLI (the `cryptography` package is not a
dependency): a CA, a server certificate for 127.0.0.1/localhost, client certificates for an agent
and an admin, and a second, untrusted CA with its own client certificate."""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

OPENSSL_TIMEOUT_S = 30


@dataclass(frozen=True, slots=True)
class Pki:
    dir: Path
    ca: str
    server_cert: str
    server_key: str
    agent_cert: str
    agent_key: str
    admin_cert: str
    admin_key: str
    rogue_ca: str
    rogue_cert: str
    rogue_key: str
    agent_token_file: str
    admin_token_file: str
    wrong_token_file: str


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=OPENSSL_TIMEOUT_S)


def _key(cwd: Path, name: str) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=cwd)


def _ca(cwd: Path, name: str) -> None:
    _key(cwd, name)
    _openssl(
        "req", "-x509", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}", "-days", "2",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
        "-out", f"{name}.pem", cwd=cwd,
    )  # fmt: skip


def _leaf(cwd: Path, name: str, ca: str, ext: str) -> None:
    _key(cwd, name)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}", "-out", f"{name}.csr", cwd=cwd)
    (cwd / f"{name}.ext").write_text(ext)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=cwd,
    )  # fmt: skip


def make_pki(root: Path) -> Pki:
    root.mkdir(parents=True, exist_ok=True)
    _ca(root, "ca")
    _ca(root, "rogue-ca")
    server_ext = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    _leaf(root, "server", "ca", server_ext)
    for name, ca in (("agent", "ca"), ("admin", "ca"), ("rogue", "rogue-ca")):
        _leaf(root, name, ca, "extendedKeyUsage=clientAuth\n")
    tokens = {}
    for role in ("agent", "admin", "wrong"):
        path = root / f"{role}.token"
        path.write_text(secrets.token_urlsafe(32) + "\n")
        os.chmod(path, 0o600)
        tokens[role] = str(path)
    p = str(root)
    return Pki(
        dir=root,
        ca=f"{p}/ca.pem",
        server_cert=f"{p}/server.pem",
        server_key=f"{p}/server.key",
        agent_cert=f"{p}/agent.pem",
        agent_key=f"{p}/agent.key",
        admin_cert=f"{p}/admin.pem",
        admin_key=f"{p}/admin.key",
        rogue_ca=f"{p}/rogue-ca.pem",
        rogue_cert=f"{p}/rogue.pem",
        rogue_key=f"{p}/rogue.key",
        agent_token_file=tokens["agent"],
        admin_token_file=tokens["admin"],
        wrong_token_file=tokens["wrong"],
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Certificates and tokens shared by the session's TLS tests (made once, ~1 s)."""
    return make_pki(tmp_path_factory.mktemp("pki"))
