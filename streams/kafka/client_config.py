"""One security model, mapped to every Kafka client recon-streams uses.

``Settings`` holds the protocol, SASL mechanism, credentials and TLS files once. This module
turns them into:

* a librdkafka (confluent-kafka) config dict, for the CLI's producers, consumers and admin
  clients (:func:`confluent_config`);
* Faust's ``broker_credentials`` (which Faust hands to aiokafka) for the worker
  (:func:`faust_credentials`).

Secrets stay ``SecretStr`` until the last moment and are only unwrapped into the client
config dicts; nothing here logs.
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


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """A verifying TLS client context for TLS protocols, else None."""
    if settings.security_protocol not in _TLS:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ssl_cafile)
    if settings.ssl_certfile:
        password = (
            settings.ssl_keyfile_password.get_secret_value()
            if settings.ssl_keyfile_password is not None
            else None
        )
        context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile, password)
    return context


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
