"""TLS towards upstreams (gateway/proxy/tls.py): a private CA instead of the system store, a
client certificate for mutual TLS, a minimum version — against a real TLS server on 127.0.0.1
with a CA, server and client certificates made here."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway import config as config_mod
from gateway.errors import ConfigError, Reason
from gateway.proxy.forward import Upstream
from gateway.proxy.http1_head import UpstreamError, request_head
from gateway.proxy.tls import TLSConfigError, UpstreamTLS, client_context
from tests.conftest import GatewayFactory
from tests.support import post


@dataclass
class PKI:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing we use


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )  # key_cert_sign, crl_sign
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, name: str, usage: x509.ObjectIdentifier
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(x509.ExtendedKeyUsage([usage]), False)
    )
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
    return key, builder.sign(ca_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    tmp = tmp_path_factory.mktemp("pki")
    ca_key, ca = _ca("corporate CA")
    _, other = _ca("some other CA")
    server_key, server = _leaf(ca_key, ca, "backend.internal", ExtendedKeyUsageOID.SERVER_AUTH)
    client_key, client = _leaf(ca_key, ca, "hmac-gateway", ExtendedKeyUsageOID.CLIENT_AUTH)
    paths = PKI(*(tmp / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key", "other.pem")))
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.other_ca.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    paths.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, paths.server_key)
    _write_key(client_key, paths.client_key)
    return paths


@dataclass
class TLSServer:
    port: int
    peers: list[str]  # the common name of each client certificate presented


async def _serve(
    pki: PKI, servers: list[asyncio.Server], *, require_client: bool, max_version: ssl.TLSVersion | None = None
) -> TLSServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki.ca)
    if max_version is not None:
        context.maximum_version = max_version
    peers: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cert = writer.get_extra_info("peercert")
        if cert:
            peers.append(dict(x[0] for x in cert["subject"])["commonName"])
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntls")
            await writer.drain()
            await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    servers.append(server)  # closed by the fixture
    return TLSServer(server.sockets[0].getsockname()[1], peers)


@pytest.fixture
async def servers() -> AsyncIterator[list[asyncio.Server]]:
    started: list[asyncio.Server] = []
    yield started
    for server in started:
        server.close()
        await server.wait_closed()


async def _get(port: int, tls: UpstreamTLS) -> bytes:
    upstream = Upstream(f"https://127.0.0.1:{port}", connect_timeout=2.0, read_timeout=2.0, tls=tls)
    await upstream.start()
    try:
        conn = await upstream.pool.acquire()
        conn.send("GET", request_head("GET", "/x", "127.0.0.1", [], 0), b"")
        await conn.read_head()
        body = await conn.read_all()
        upstream.pool.release(conn)
        return body
    finally:
        await upstream.close()


async def test_a_private_ca_and_a_client_certificate_reach_a_mutual_tls_upstream(
    pki: PKI, servers: list[asyncio.Server]
) -> None:
    server = await _serve(pki, servers, require_client=True)
    tls = UpstreamTLS(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    assert await _get(server.port, tls) == b"tls"
    assert server.peers == ["hmac-gateway"]


async def test_without_the_client_certificate_a_mutual_tls_upstream_is_unavailable(
    pki: PKI, servers: list[asyncio.Server]
) -> None:
    server = await _serve(pki, servers, require_client=True)
    with pytest.raises(UpstreamError) as info:
        await _get(server.port, UpstreamTLS(ca_file=pki.ca))
    assert info.value.reason is Reason.UPSTREAM_UNAVAILABLE
    assert server.peers == []


@pytest.mark.parametrize("trust", ["system store", "another CA"])
async def test_a_certificate_from_a_ca_the_route_does_not_trust_is_refused(
    pki: PKI, servers: list[asyncio.Server], trust: str
) -> None:
    server = await _serve(pki, servers, require_client=False)
    tls = UpstreamTLS() if trust == "system store" else UpstreamTLS(ca_file=pki.other_ca)
    with pytest.raises(UpstreamError) as info:
        await _get(server.port, tls)
    assert info.value.reason is Reason.UPSTREAM_UNAVAILABLE


async def test_the_minimum_version_is_enforced(pki: PKI, servers: list[asyncio.Server]) -> None:
    server = await _serve(pki, servers, require_client=False, max_version=ssl.TLSVersion.TLSv1_2)
    assert await _get(server.port, UpstreamTLS(ca_file=pki.ca, min_version="1.2")) == b"tls"
    with pytest.raises(UpstreamError):
        await _get(server.port, UpstreamTLS(ca_file=pki.ca, min_version="1.3"))


def test_unusable_files_are_named_and_never_quoted(pki: PKI, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n")
    cases = [
        (UpstreamTLS(ca_file=tmp_path / "missing.pem"), "missing.pem: not a readable PEM CA bundle"),
        (UpstreamTLS(ca_file=garbage), "garbage.pem: not a readable PEM CA bundle"),
        (UpstreamTLS(cert_file=pki.client_cert), "needs both its certificate file and its key file"),
        (UpstreamTLS(cert_file=pki.client_cert, key_file=garbage), "not a usable certificate and key"),
        (UpstreamTLS(min_version="1.1"), "minimum TLS version must be one of 1.2, 1.3"),
    ]
    for settings, message in cases:
        with pytest.raises(TLSConfigError) as info:
            client_context(settings)
        assert message in str(info.value)
        assert "c2VjcmV0" not in str(info.value)


# -- through config and a whole gateway -------------------------------------------------------


async def test_a_sign_route_reaches_a_mutual_tls_upstream_through_config(
    pki: PKI, servers: list[asyncio.Server], make_gateway: GatewayFactory
) -> None:
    server = await _serve(pki, servers, require_client=True)

    def tls_route(raw: dict[str, Any]) -> None:
        raw["routes"][0].update(
            upstream=f"https://127.0.0.1:{server.port}",
            upstream_ca_file=str(pki.ca),
            upstream_cert_file=str(pki.client_cert),
            upstream_key_file=str(pki.client_key),
            upstream_tls_min_version="1.2",
        )

    gw = await make_gateway(tweak=tls_route)
    status, doc, _ = await post(gw.url("sign", "/x"), method="GET")
    assert (status, doc) == (200, {"_text": "tls"})
    assert server.peers == ["hmac-gateway"]

    def no_client_cert(raw: dict[str, Any]) -> None:
        raw["routes"][0].update(upstream=f"https://127.0.0.1:{server.port}", upstream_ca_file=str(pki.ca))

    gw = await make_gateway(tweak=no_client_cert)
    status, doc, _ = await post(gw.url("sign", "/x"), method="GET")
    assert (status, doc["reason"]) == (502, "upstream_unavailable")


def test_unusable_tls_settings_are_config_errors(pki: PKI, tmp_path: Path) -> None:
    garbage = tmp_path / "key.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n")
    raw = {
        "keyrings": {"r": {"path": "r.json"}},
        "listeners": {"l": {"port": 0}},
        "routes": [
            {
                "name": "a",
                "listener": "l",
                "mode": "sign",
                "upstream": "https://127.0.0.1:9/a",
                "keyring": "r",
                "upstream_ca_file": "missing-ca.pem",
            },
            {
                "name": "b",
                "listener": "l",
                "mode": "sign",
                "path_prefix": "/b",
                "upstream": "https://127.0.0.1:9/b",
                "keyring": "r",
                "upstream_cert_file": str(pki.client_cert),
                "upstream_key_file": "key.pem",
            },
            {
                "name": "c",
                "listener": "l",
                "mode": "sign",
                "path_prefix": "/c",
                "upstream": "http://127.0.0.1:9/c",
                "keyring": "r",
                "upstream_ca_file": str(pki.ca),
            },
        ],
    }
    with pytest.raises(ConfigError) as info:
        config_mod.parse(raw, base_dir=tmp_path)
    problems = info.value.problems
    assert f"[[routes]] a.upstream TLS: {tmp_path / 'missing-ca.pem'}: not a readable PEM CA bundle" in problems[0]
    assert problems[1].startswith("[[routes]] b.upstream TLS:") and "not a usable certificate and key" in problems[1]
    assert problems[2] == "[[routes]] c.upstream_ca_file: applies to https upstreams only"
    assert not any("c2VjcmV0" in p for p in problems)
