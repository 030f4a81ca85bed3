"""One security model, mapped to every Kafka client recon-streams uses.

``Settings`` holds the protocol, SASL mechanism, credentials and TLS files once. This module
turns them into:

* a librdkafka (confluent-kafka) config dict, for the CLI's producers, consumers and admin
  clients (:func:`confluent_config`);
* Faust's ``broker_credentials`` (which Faust hands to aiokafka) for the worker
  (:func:`faust_credentials`).

Secrets stay ``SecretStr`` until the last moment and are only unwrapped into the client
config dicts; nothing here logs.

Every Kafka client the project creates is built from one of these two (a test enforces it),
except the readiness probe of the embedded broker in ``streams/broker.py``, which only ever
talks to that PLAINTEXT loopback broker.
"""

from __future__ import annotations

import ssl
from typing import Any

from streams.settings import SecurityProtocol, Settings

_SASL = (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)
_TLS = (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)


def confluent_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """librdkafka settings for ``settings``; ``extra`` adds or overrides client-specific keys."""
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.security_protocol.value,
    }
    if settings.security_protocol in _SASL:
        assert settings.sasl_mechanism is not None  # guaranteed by Settings validation
        assert settings.sasl_password is not None
        conf["sasl.mechanism"] = settings.sasl_mechanism.value
        conf["sasl.username"] = settings.sasl_username
        conf["sasl.password"] = settings.sasl_password.get_secret_value()
    if settings.security_protocol in _TLS:
        if settings.ssl_cafile:
            conf["ssl.ca.location"] = settings.ssl_cafile
        if settings.ssl_certfile:
            conf["ssl.certificate.location"] = settings.ssl_certfile
            conf["ssl.key.location"] = settings.ssl_keyfile
        if settings.ssl_keyfile_password is not None:
            conf["ssl.key.password"] = settings.ssl_keyfile_password.get_secret_value()
    conf.update(extra)
    return conf


class TlsConfigError(ValueError):
    """The TLS files named in the settings cannot be loaded (the message never holds a secret)."""


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """A verifying TLS client context (certificate and hostname checked) for TLS protocols,
    else None. Raises :class:`TlsConfigError` if a CA, certificate or key cannot be loaded."""
    if settings.security_protocol not in _TLS:
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ssl_cafile)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"cannot load ssl_cafile {settings.ssl_cafile}: {_why(exc)}") from None
    if settings.ssl_certfile:
        # "" rather than None when no password is set: with None, OpenSSL would prompt on the
        # terminal for an encrypted key (a worker would hang); with "" it fails clearly.
        password = (
            settings.ssl_keyfile_password.get_secret_value()
            if settings.ssl_keyfile_password is not None
            else ""
        )
        try:
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile, password)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(
                f"cannot load ssl_certfile {settings.ssl_certfile} with ssl_keyfile "
                f"{settings.ssl_keyfile} (wrong or missing RECON_SSL_KEYFILE_PASSWORD?): "
                f"{_why(exc)}"
            ) from None
    return context


def _why(exc: BaseException) -> str:
    # ssl.SSLError carries a library reason ("PEM lib", "KEY_VALUES_MISMATCH"); OSError a
    # strerror. Neither includes the password we passed.
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    return f"{type(exc).__name__}: {reason or exc}"


def faust_credentials(settings: Settings) -> Any:
    """``broker_credentials`` for the Faust app (None for PLAINTEXT)."""
    import faust  # deferred: the CLI's non-worker commands need not import Faust

    context = ssl_context(settings)
    if settings.security_protocol in _SASL:
        assert settings.sasl_mechanism is not None
        assert settings.sasl_password is not None
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value(),
            mechanism=settings.sasl_mechanism.value,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None
