"""The one security model, mapped to every Kafka client: librdkafka dicts, Faust credentials and
(through Faust's own ``credentials_to_aiokafka_auth``) aiokafka's keyword arguments.

The embedded broker speaks neither TLS nor SASL, so these are unit tests of the mapping plus
two real checks that need no Kafka broker: librdkafka and aiokafka accept the settings (and
librdkafka loads the certificate files), and a TLS handshake with the built ``SSLContext``
against a loopback TLS server that requires a client certificate.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiokafka
import confluent_kafka
import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import ValidationError

from streams.app import ReconApp, faust_app_options
from streams.kafka.client_config import (
    TlsConfigError,
    confluent_config,
    faust_credentials,
    ssl_context,
)
from streams.settings import SaslMechanism, Settings
from tests.streams.kafka.certs import KEY_PASSWORD, CertFiles, make_certs

SERVERS = "127.0.0.1:1"  # nothing listens there; only librdkafka's background threads try it
MARKER = "s3cret-MARKER-4c1d"
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the values a test passes count: no RECON_* security variable from outside."""
    for name in (
        "SECURITY_PROTOCOL",
        "SASL_MECHANISM",
        "SASL_USERNAME",
        "SASL_PASSWORD",
        "SSL_CAFILE",
        "SSL_CERTFILE",
        "SSL_KEYFILE",
        "SSL_KEYFILE_PASSWORD",
    ):
        monkeypatch.delenv(f"RECON_{name}", raising=False)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_certs(tmp_path_factory.mktemp("certs"))


@dataclass(frozen=True)
class Case:
    id: str
    settings: dict[str, str]  # Settings kwargs; "{ca}", "{client_cert}", ... name cert files
    conf: dict[str, str]  # the exact confluent dict, less bootstrap.servers

    @property
    def protocol(self) -> str:
        return self.settings.get("security_protocol", "PLAINTEXT")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")


def _cases() -> list[Case]:
    ssl_ca = {"security_protocol": "SSL", "ssl_cafile": "{ca}"}
    conf_ca = {"security.protocol": "SSL", "ssl.ca.location": "{ca}"}
    client = {"ssl_certfile": "{client_cert}", "ssl_keyfile": "{client_key}"}
    conf_client = {
        "ssl.certificate.location": "{client_cert}",
        "ssl.key.location": "{client_key}",
    }
    encrypted = {
        "ssl_certfile": "{client_cert}",
        "ssl_keyfile": "{client_key_encrypted}",
        "ssl_keyfile_password": KEY_PASSWORD,
    }
    conf_encrypted = {
        "ssl.certificate.location": "{client_cert}",
        "ssl.key.location": "{client_key_encrypted}",
        "ssl.key.password": KEY_PASSWORD,
    }
    cases = [
        Case("plaintext", {}, {"security.protocol": "PLAINTEXT"}),
        Case("ssl-system-ca", {"security_protocol": "SSL"}, {"security.protocol": "SSL"}),
        Case("ssl-ca", ssl_ca, conf_ca),
        Case("ssl-client-cert", {**ssl_ca, **client}, {**conf_ca, **conf_client}),
        Case("ssl-key-password", {**ssl_ca, **encrypted}, {**conf_ca, **conf_encrypted}),
    ]
    for protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        for mechanism in SaslMechanism:
            password = f"pw-{mechanism.value.lower()}"
            settings = {
                "security_protocol": protocol,
                "sasl_mechanism": mechanism.value,
                "sasl_username": "svc-recon",
                "sasl_password": password,
            }
            conf = {
                "security.protocol": protocol,
                "sasl.mechanism": mechanism.value,
                "sasl.username": "svc-recon",
                "sasl.password": password,
            }
            if protocol == "SASL_SSL":
                settings["ssl_cafile"] = "{ca}"
                conf["ssl.ca.location"] = "{ca}"
            cases.append(Case(f"{protocol.lower()}-{mechanism.value.lower()}", settings, conf))
    mtls = {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "svc-recon",
        "sasl_password": "pw-mtls",
        "ssl_cafile": "{ca}",
        **encrypted,
    }
    conf_mtls = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc-recon",
        "sasl.password": "pw-mtls",
        "ssl.ca.location": "{ca}",
        **conf_encrypted,
    }
    cases.append(Case("sasl_ssl-scram-sha-512-client-cert-key-password", mtls, conf_mtls))
    return cases


CASES = [pytest.param(case, id=case.id) for case in _cases()]


def _fill(values: dict[str, str], certs: CertFiles) -> dict[str, str]:
    paths = {name: str(getattr(certs, name)) for name in CertFiles.__dataclass_fields__}
    return {k: v.format(**paths) for k, v in values.items()}


def _settings(case: Case, certs: CertFiles) -> Settings:
    return Settings(bootstrap_servers=SERVERS, **_fill(case.settings, certs))  # type: ignore[arg-type]


# --- librdkafka (CLI producers, consumers, admin clients) ------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_confluent_config_is_exact(case: Case, certs: CertFiles) -> None:
    settings = _settings(case, certs)
    expected = {"bootstrap.servers": SERVERS, **_fill(case.conf, certs)}
    assert confluent_config(settings) == expected
    # Client-specific keys are added; they never drop a security key.
    assert confluent_config(settings, **{"group.id": "g"}) == {**expected, "group.id": "g"}


@pytest.mark.parametrize("case", CASES)
def test_librdkafka_accepts_the_config(case: Case, certs: CertFiles) -> None:
    # librdkafka validates every key and loads the CA, certificate and (decrypted) key when
    # the client is created, so a wrong key password or an unreadable file fails here.
    producer = confluent_kafka.Producer(confluent_config(_settings(case, certs), log_level=0))
    assert producer.flush(0) == 0


# --- Faust / aiokafka (the worker) -----------------------------------------------------------


def _without_context(auth: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(auth).items() if k != "ssl_context"}


@pytest.mark.parametrize("case", CASES)
def test_faust_credentials_and_aiokafka_kwargs(case: Case, certs: CertFiles) -> None:
    settings = _settings(case, certs)
    credentials = faust_credentials(settings)
    auth = dict(credentials_to_aiokafka_auth(credentials))

    expected: dict[str, Any] = {"security_protocol": case.protocol}
    if case.sasl:
        assert isinstance(credentials, faust.SASLCredentials)
        password = case.settings["sasl_password"]
        assert password not in repr(credentials)
        expected.update(
            sasl_mechanism=case.settings["sasl_mechanism"],
            sasl_plain_username="svc-recon",
            sasl_plain_password=password,
        )
    elif case.tls:
        assert isinstance(credentials, faust.SSLCredentials)
    else:
        assert credentials is None
    if case.tls:
        context = auth["ssl_context"]
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
        if "ssl_cafile" in case.settings:
            subjects = [dict(x[0] for x in c["subject"]) for c in context.get_ca_certs()]
            assert {"commonName": "recon-test-ca"} in subjects
        expected["ssl_context"] = context
    elif case.sasl:
        expected["ssl_context"] = None
    assert auth == expected

    # The worker's own clients: Faust hands app.conf.broker_credentials to its producer and
    # consumers through the same function.
    app = ReconApp("g", **faust_app_options(settings))
    producer_auth = app.producer._settings_auth()
    assert _without_context(producer_auth) == _without_context(expected)
    assert (producer_auth.get("ssl_context") is None) == (not case.tls)
    assert isinstance(app.conf.broker_credentials, type(credentials))

    # aiokafka validates the combination when its clients are built (no connection yet).
    async def build() -> None:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=SERVERS, **auth)
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=SERVERS, **auth)
        await producer.stop()
        await consumer.stop()

    asyncio.run(build())


# --- TLS for real: a handshake on the loopback interface --------------------------------------


@dataclass
class _TlsServer:
    port: int
    errors: list[BaseException]
    peers: list[dict[str, Any]]


@pytest.fixture
def tls_server(certs: CertFiles) -> Iterator[_TlsServer]:
    """A one-connection-at-a-time TLS server on 127.0.0.1 that requires a client certificate
    signed by the test CA; it answers b"ok" after the handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    context.load_verify_locations(cafile=certs.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    server = _TlsServer(listener.getsockname()[1], [], [])
    stop = threading.Event()

    def serve() -> None:
        for _ in range(4):  # bounded: at most 4 connections per test
            if stop.is_set():
                return
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if stop.is_set():  # the wake-up connection from teardown
                conn.close()
                return
            try:
                conn.settimeout(10)
                with context.wrap_socket(conn, server_side=True) as tls:
                    server.peers.append(tls.getpeercert() or {})
                    tls.sendall(b"ok")
            except (OSError, ssl.SSLError) as exc:
                server.errors.append(exc)

    thread = threading.Thread(target=serve, name="tls-test-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        with contextlib.suppress(OSError):  # wake the accept() so the thread ends now
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
        thread.join(timeout=10)
        listener.close()


def _handshake(context: ssl.SSLContext, port: int) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.recv(2)


def test_tls_handshake_with_client_certificate_and_key_password(
    certs: CertFiles, tls_server: _TlsServer
) -> None:
    settings = Settings(
        bootstrap_servers=SERVERS,
        security_protocol="SSL",  # type: ignore[arg-type]
        ssl_cafile=str(certs.ca),
        ssl_certfile=str(certs.client_cert),
        ssl_keyfile=str(certs.client_key_encrypted),
        ssl_keyfile_password=KEY_PASSWORD,  # type: ignore[arg-type]
    )
    context = ssl_context(settings)
    assert context is not None
    assert _handshake(context, tls_server.port) == b"ok"
    subject = dict(x[0] for x in tls_server.peers[0]["subject"])
    assert subject["commonName"] == "recon-client"


def test_tls_context_rejects_a_server_its_ca_did_not_sign(
    certs: CertFiles, tls_server: _TlsServer
) -> None:
    settings = Settings(
        bootstrap_servers=SERVERS,
        security_protocol="SSL",  # type: ignore[arg-type]
        ssl_cafile=str(certs.other_ca),
    )
    context = ssl_context(settings)
    assert context is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(context, tls_server.port)


# --- invalid combinations: a clear settings error that never echoes a secret ------------------


INVALID = [
    pytest.param(
        {"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": MARKER},
        "needs RECON_SASL_MECHANISM",
        id="sasl-without-mechanism",
    ),
    pytest.param(
        {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_password": MARKER},
        "needs RECON_SASL_USERNAME",
        id="sasl-without-username",
    ),
    pytest.param(
        {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "u"},
        "needs RECON_SASL_PASSWORD",
        id="sasl-without-password",
    ),
    pytest.param(
        {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-256",
            "sasl_username": "u",
            "sasl_password": "",
        },
        "needs RECON_SASL_PASSWORD",
        id="sasl-with-empty-password",
    ),
    pytest.param(
        {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "GSSAPI",
            "sasl_username": "u",
            "sasl_password": MARKER,
        },
        "sasl_mechanism",
        id="unsupported-mechanism",
    ),
    pytest.param({"security_protocol": "TLS"}, "security_protocol", id="unknown-protocol"),
    pytest.param(
        {"security_protocol": "SSL", "ssl_certfile": "{client_cert}"},
        "ssl_certfile and ssl_keyfile go together",
        id="cert-without-key",
    ),
    pytest.param(
        {"security_protocol": "SSL", "ssl_keyfile": "{client_key}"},
        "ssl_certfile and ssl_keyfile go together",
        id="key-without-cert",
    ),
    pytest.param(
        {"security_protocol": "SSL", "ssl_keyfile_password": MARKER},
        "RECON_SSL_KEYFILE_PASSWORD given without RECON_SSL_KEYFILE",
        id="key-password-without-key",
    ),
    pytest.param(
        {"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"},
        "ssl_cafile: no such file",
        id="missing-ca-file",
    ),
    pytest.param(
        {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "u",
            "sasl_password": MARKER,
            "ssl_certfile": "{client_cert}",
            "ssl_keyfile": "/nonexistent/key.pem",
        },
        "ssl_keyfile: no such file",
        id="missing-key-file",
    ),
]


@pytest.mark.parametrize(("values", "message"), INVALID)
def test_invalid_combinations_raise_a_clear_error(
    values: dict[str, str], message: str, certs: CertFiles
) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(bootstrap_servers=SERVERS, **_fill(values, certs))  # type: ignore[arg-type]
    text = str(caught.value) + repr(caught.value)
    assert message in text
    assert MARKER not in text


def test_cli_settings_error_does_not_echo_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.cli import main

    monkeypatch.setenv("RECON_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RECON_SASL_PASSWORD", MARKER)
    monkeypatch.setenv("RECON_SSL_KEYFILE_PASSWORD", MARKER)
    assert main(["topics", "--bootstrap-servers", SERVERS]) == 2
    captured = capsys.readouterr()
    assert "needs RECON_SASL_MECHANISM, RECON_SASL_USERNAME" in captured.err
    assert MARKER not in captured.out + captured.err


@pytest.mark.parametrize(
    "key_password", [pytest.param(None, id="missing"), pytest.param(MARKER, id="wrong")]
)
def test_unusable_key_password_is_a_clear_error(key_password: str | None, certs: CertFiles) -> None:
    settings = Settings(
        bootstrap_servers=SERVERS,
        security_protocol="SSL",  # type: ignore[arg-type]
        ssl_certfile=str(certs.client_cert),
        ssl_keyfile=str(certs.client_key_encrypted),
        ssl_keyfile_password=key_password,  # type: ignore[arg-type]
    )
    # No terminal prompt for the password (a worker would hang): a clear error instead.
    with pytest.raises(TlsConfigError, match="cannot load ssl_certfile") as caught:
        faust_credentials(settings)
    assert MARKER not in str(caught.value)
    assert "RECON_SSL_KEYFILE_PASSWORD" in str(caught.value)


# --- settings the protocol does not use: accepted, ignored, warned about -----------------------


def test_unused_secrets_are_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture, certs: CertFiles
) -> None:
    settings = Settings(
        bootstrap_servers=SERVERS,
        sasl_password=MARKER,  # type: ignore[arg-type]
        ssl_cafile=str(certs.ca),
        ssl_keyfile_password=MARKER,  # type: ignore[arg-type]
    )
    assert confluent_config(settings) == {
        "bootstrap.servers": SERVERS,
        "security.protocol": "PLAINTEXT",
    }
    assert faust_credentials(settings) is None
    assert "RECON_SASL_PASSWORD set but security_protocol=PLAINTEXT" in caplog.text
    assert "RECON_SSL_CAFILE, RECON_SSL_KEYFILE_PASSWORD set" in caplog.text
    assert MARKER not in caplog.text
    assert MARKER not in repr(settings) + str(settings) + settings.model_dump_json()


def test_sasl_plain_without_tls_warns(caplog: pytest.LogCaptureFixture) -> None:
    Settings(
        bootstrap_servers=SERVERS,
        security_protocol="SASL_PLAINTEXT",  # type: ignore[arg-type]
        sasl_mechanism="PLAIN",  # type: ignore[arg-type]
        sasl_username="u",
        sasl_password=MARKER,  # type: ignore[arg-type]
    )
    assert "sends the password unencrypted" in caplog.text
    assert MARKER not in caplog.text


def test_sink_url_password_is_redacted_in_repr() -> None:
    settings = Settings(sink_url=f"postgresql://recon:{MARKER}@127.0.0.1:5432/db?table=t")
    assert MARKER not in repr(settings) + str(settings)
    assert "postgresql://recon:***@127.0.0.1:5432/db?table=t" in repr(settings)


# --- every client goes through this mapping ---------------------------------------------------

_CLIENTS = {
    "Producer",
    "Consumer",
    "AdminClient",
    "AIOKafkaProducer",
    "AIOKafkaConsumer",
    "AIOKafkaAdminClient",
    "AIOKafkaClient",
    "App",
    "ReconApp",
}
_MAPPINGS = ("confluent_config(", "faust_app_options(", "faust_credentials(")
# The embedded broker's readiness probe talks only to that PLAINTEXT loopback broker;
# ensure_broker passes the caller's confluent_config through it.
_EXEMPT = {("streams/broker.py", "broker_answers")}


def _client_calls() -> Iterator[tuple[str, str, str]]:
    """(module, enclosing function, client class) for every Kafka client construction."""
    for package in ("streams", "processors"):
        for path in sorted((REPO / package).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
            for func in ast.walk(tree):
                if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(func):
                    if not isinstance(node, ast.Call):
                        continue
                    callee = node.func
                    name = callee.attr if isinstance(callee, ast.Attribute) else None
                    if isinstance(callee, ast.Name):
                        name = callee.id
                    if name in _CLIENTS:
                        segment = ast.get_source_segment(source, func) or ""
                        mapped = any(m in segment for m in _MAPPINGS)
                        module = str(path.relative_to(REPO))
                        yield module, func.name, name if not mapped else f"{name}:mapped"


def test_every_kafka_client_goes_through_the_security_mapping() -> None:
    calls = list(_client_calls())
    assert calls, "the scan found no client at all: the test is broken"
    unmapped = {
        (module, func)
        for module, func, client in calls
        if not client.endswith(":mapped") and (module, func) not in _EXEMPT
    }
    assert unmapped == set(), f"Kafka clients built without confluent_config/faust: {unmapped}"
