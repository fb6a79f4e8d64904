"""The settings every component shares, resolved once: keyword > explicit object > environment > default.

Two objects describe a deployment, and the SDK, the stream worker, the sink worker and the CLI all take them:

- :class:`KafkaSettings`: how to reach Kafka (bootstrap servers, topic prefix, security protocol, SASL, TLS files,
  client id). Environment: ``TRACKSTREAM_KAFKA_<FIELD>`` (``TRACKSTREAM_KAFKA_BOOTSTRAP``,
  ``TRACKSTREAM_KAFKA_SASL_PASSWORD``, ...) and ``TRACKSTREAM_TOPIC_PREFIX``.
- :class:`StoreSettings`: where the metrics are stored: a ClickHouse server (``url``, ``user``, ``password``,
  ``database``) or, with no URL, the embedded chDB directory ``data_dir``. Environment:
  ``TRACKSTREAM_CLICKHOUSE_<FIELD>`` and ``TRACKSTREAM_DATA_DIR``.

Resolution (:func:`resolve_fields`): a keyword that is not ``None`` wins; else the field's value in a settings
object passed as ``base`` when it differs from the default; else a non-empty environment variable; else the default.
So an object passed explicitly keeps every field it sets, and the fields it leaves at their defaults still follow
the environment.

Secrets (:class:`Secret`) never appear in reprs, logs, errors or ``--help``: only :meth:`Secret.reveal` gives the
value, and only the code that hands it to a client library calls it.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from trackstream.schemas.errors import ConfigError

DEFAULT_TOPIC_PREFIX: Final = "trackstream"
DEFAULT_DATA_DIR: Final = "~/.trackstream/data"
SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

T = TypeVar("T")


class Secret:
    """A string that never shows itself: ``repr``, ``str`` and f-strings print ``'***'``.

    Equal secrets compare and hash equal, so settings objects holding them stay usable as dictionary keys.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for handing to a client library; never log or format it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Secret, (self._value,))


def _convert(name: str, env_var: str, raw: Any, kind: Any) -> Any:
    """``raw`` (a keyword value or an environment string) as the field's declared type."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    target = args[0] if typing.get_origin(kind) is not None and len(args) == 1 else kind
    if typing.get_origin(target) is typing.Literal:
        choices = typing.get_args(target)
        if raw not in choices:
            raise ConfigError(f"{name}={raw!r} ({env_var}): expected one of {', '.join(map(str, choices))}")
        return raw
    try:
        if target is Secret:
            return raw if isinstance(raw, Secret) else Secret(str(raw))
        if target is bool:
            return raw if isinstance(raw, bool) else str(raw).strip().lower() in ("1", "true", "yes", "on")
        if target is int and not isinstance(raw, bool):
            number = raw if isinstance(raw, int) else float(raw) if isinstance(raw, float) else int(str(raw).strip())
            if number != int(number):
                raise ValueError("not a whole number")
            return int(number)
        if target is float and not isinstance(raw, bool):
            return float(raw)
        if target in (int, float):  # a bool where a number belongs
            raise TypeError("a bool is not a number")
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name}={raw!r} ({env_var}) is not a valid {target.__name__}") from None
    if target is str:
        return str(raw)
    return raw


def resolve_fields(
    cls: type[T],
    base: T | None,
    overrides: Mapping[str, Any],
    env_var: Callable[[str], str],
    *,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Build the dataclass ``cls``: keywords, else ``base``'s non-default fields, else the environment, else defaults.

    ``env_var(field)`` names the variable of each field. Unknown keywords raise :class:`TypeError`; a value
    that does not convert to the field's type raises :class:`ConfigError` naming the field and the variable.
    Keywords equal to ``None`` count as not given.
    """
    env = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise TypeError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    default_obj = cls()
    values: dict[str, Any] = {}
    for name in fields:
        default = getattr(default_obj, name)
        variable = env_var(name)
        if overrides.get(name) is not None:
            raw: Any = overrides[name]
        elif base is not None and getattr(base, name) != default:
            values[name] = getattr(base, name)
            continue
        elif env.get(variable):
            raw = env[variable]
        else:
            values[name] = default
            continue
        values[name] = _convert(name, variable, raw, hints[name])
    return cls(**values)


def _kafka_env(name: str) -> str:
    return "TRACKSTREAM_TOPIC_PREFIX" if name == "topic_prefix" else f"TRACKSTREAM_KAFKA_{name.upper()}"


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """How every trackstream client reaches Kafka; hashable, so equal settings share one producer.

    ``bootstrap`` is ``host:port[,host:port...]``; ``None`` means no Kafka (the SDK then writes to the local
    spool only). ``security_protocol`` is one of :data:`SECURITY_PROTOCOLS`; SASL needs ``sasl_mechanism``
    (one of :data:`SASL_MECHANISMS`), ``sasl_username`` and ``sasl_password``; TLS may name a CA bundle
    (``ssl_cafile``) and a client certificate and key (PEM files).
    """

    bootstrap: str | None = None
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    security_protocol: typing.Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: typing.Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    client_id: str = "trackstream"

    def __post_init__(self) -> None:
        if isinstance(self.sasl_password, str):  # a plain string would show in reprs: type it as a secret
            object.__setattr__(self, "sasl_password", Secret(self.sasl_password))

    @classmethod
    def resolve(
        cls, base: KafkaSettings | None = None, *, environ: Mapping[str, str] | None = None, **keywords: Any
    ) -> KafkaSettings:
        """Keyword > ``base`` > ``TRACKSTREAM_KAFKA_<FIELD>`` / ``TRACKSTREAM_TOPIC_PREFIX`` > default.

        ``bootstrap=""`` means "no Kafka" even when ``TRACKSTREAM_KAFKA_BOOTSTRAP`` is set. Raises
        :class:`ConfigError` for an unknown protocol or mechanism, or SASL settings that are incomplete.
        """
        forced_off = keywords.get("bootstrap") == ""
        settings = resolve_fields(cls, base, keywords, _kafka_env, environ=environ)
        if forced_off or not settings.bootstrap:
            settings = dataclasses.replace(settings, bootstrap=None)
        settings.check()
        return settings

    def check(self) -> None:
        """Raise :class:`ConfigError` when the security settings cannot work together."""
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and (self.sasl_mechanism is None or self.sasl_username is None or self.sasl_password is None):
            raise ConfigError(
                f"security_protocol={self.security_protocol} needs sasl_mechanism, sasl_username and sasl_password "
                "(TRACKSTREAM_KAFKA_SASL_MECHANISM, TRACKSTREAM_KAFKA_SASL_USERNAME, TRACKSTREAM_KAFKA_SASL_PASSWORD)"
            )
        if self.sasl_mechanism is not None and not sasl:
            raise ConfigError(
                f"sasl_mechanism={self.sasl_mechanism} is set but security_protocol={self.security_protocol}: "
                "use SASL_SSL or SASL_PLAINTEXT (TRACKSTREAM_KAFKA_SECURITY_PROTOCOL)"
            )

    def to_environment(self) -> dict[str, str]:
        """The ``TRACKSTREAM_KAFKA_*`` variables that resolve back to these settings, for a child process's env.

        The password is revealed into that mapping: pass it only as a subprocess environment, never log it.
        """
        env: dict[str, str] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is not None:
                env[_kafka_env(item.name)] = value.reveal() if isinstance(value, Secret) else str(value)
        return env

    def require_bootstrap(self, what: str) -> str:
        """The bootstrap servers, or :class:`ConfigError` saying how to set them for ``what`` (e.g. "the sink
        worker")."""
        if not self.bootstrap:
            raise ConfigError(f"{what} needs Kafka: pass --bootstrap or set TRACKSTREAM_KAFKA_BOOTSTRAP")
        return self.bootstrap

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for every aiokafka client (producer, consumer, admin): servers, client id, security.

        Builds the TLS context here (aiokafka's ``create_ssl_context``); raises :class:`ConfigError` when a
        CA, certificate or key file cannot be read.
        """
        options: dict[str, Any] = {
            "bootstrap_servers": self.require_bootstrap("this client"),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = self.ssl_context()
        if self.sasl_mechanism is not None:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.reveal() if self.sasl_password else None
        return options

    def ssl_context(self) -> Any:
        """An ``ssl.SSLContext`` that verifies the brokers against ``ssl_cafile`` (else the system CAs)."""
        import ssl

        try:
            context = ssl.create_default_context(cafile=self.ssl_cafile)
            if self.ssl_certfile:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the Kafka TLS files (ssl_cafile={self.ssl_cafile!r}, ssl_certfile={self.ssl_certfile!r}, "
                f"ssl_keyfile={self.ssl_keyfile!r}; TRACKSTREAM_KAFKA_SSL_*): {exc}"
            ) from exc
        return context


def _store_env(name: str) -> str:
    return "TRACKSTREAM_DATA_DIR" if name == "data_dir" else f"TRACKSTREAM_CLICKHOUSE_{name.upper()}"


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Where metrics are stored: a ClickHouse server when ``url`` is set, else the chDB directory ``data_dir``.

    ``url`` is ``http[s]://host:port[/database]``; credentials given inside it (``user:password@`` or
    ``?password=``) are moved to ``user`` / ``password`` at resolution, so the URL itself never holds a secret.
    ``database`` defaults to the URL's database, else ``default``.
    """

    url: str | None = None
    user: str | None = None
    password: Secret | None = None
    database: str | None = None
    data_dir: str = DEFAULT_DATA_DIR

    @classmethod
    def resolve(
        cls, base: StoreSettings | None = None, *, environ: Mapping[str, str] | None = None, **keywords: Any
    ) -> StoreSettings:
        """Keyword > ``base`` > ``TRACKSTREAM_CLICKHOUSE_<FIELD>`` / ``TRACKSTREAM_DATA_DIR`` > default.

        ``data_dir`` accepts any path-like; ``~`` is expanded. A ``data_dir`` keyword without a ``url`` keyword
        means the embedded store even when ``TRACKSTREAM_CLICKHOUSE_URL`` is set; ``url=""`` means it too.
        Credentials inside the URL rank with the URL: above the environment's user and password, below
        ``user=`` / ``password=`` keywords. Raises :class:`ConfigError` for a URL that does not parse (its
        credentials are never quoted).
        """
        env = os.environ if environ is None else environ
        if keywords.get("data_dir") is not None:
            keywords["data_dir"] = os.fspath(keywords["data_dir"])
            if keywords.get("url") is None:
                keywords["url"] = ""
        raw_url = keywords.get("url")
        if raw_url is None:
            raw_url = base.url if base is not None and base.url else env.get(_store_env("url")) or None
        start = base if base is not None else cls()
        if raw_url:
            url, url_user, url_password = _split_credentials(raw_url)
            start = dataclasses.replace(
                start, url=url, user=start.user or url_user,
                password=start.password or (Secret(url_password) if url_password else None),
            )
            keywords["url"] = url
        settings = resolve_fields(cls, start, keywords, _store_env, environ=environ)
        return dataclasses.replace(settings, url=settings.url or None, data_dir=os.path.expanduser(settings.data_dir))

    def __post_init__(self) -> None:
        if isinstance(self.password, str):  # a plain string would show in reprs: type it as a secret
            object.__setattr__(self, "password", Secret(self.password))

    @property
    def embedded(self) -> bool:
        """True when the store is the chDB directory (no server URL)."""
        return not self.url

    @property
    def data_path(self) -> Path:
        """``data_dir`` as an absolute :class:`~pathlib.Path`."""
        return Path(self.data_dir).expanduser().absolute()

    def describe(self) -> str:
        """Where the store is, for messages: the server URL (no credentials) or the chDB directory."""
        return f"ClickHouse at {self.url}" if self.url else f"the chDB store {self.data_dir}"


def _split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without credentials, and the user and password it carried (userinfo or query string).

    Raises :class:`ConfigError` when the URL does not parse, without quoting it (it may hold a password).
    """
    try:
        return _split(url)
    except ValueError:
        raise ConfigError(
            "the ClickHouse URL (url / TRACKSTREAM_CLICKHOUSE_URL) does not parse as http[s]://host:port[/database]; "
            "set the password in TRACKSTREAM_CLICKHOUSE_PASSWORD rather than inside the URL"
        ) from None


def _split(url: str) -> tuple[str, str | None, str | None]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    query = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "password":
            password = value
        elif key in ("user", "username"):
            user = value
        else:
            query.append((key, value))
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query))), user, password


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def kafka_setting_error(settings: KafkaSettings, exc: BaseException, what: str) -> ConfigError | None:
    """A :class:`ConfigError` naming the setting to fix when ``exc`` (from a Kafka client) is a settings problem.

    Rejected SASL credentials and unverifiable broker certificates are not retriable: trying again with the same
    settings cannot succeed. Returns ``None`` for anything else (an unreachable broker, a timeout), which the
    caller reports as retriable. ``what`` names the component ("the stream worker").
    """
    text = " ".join(f"{type(e).__name__} {e}" for e in _chain(exc)).lower()
    where = f"{what}: Kafka at {settings.bootstrap}"
    if "authentication" in text or "sasl" in text:
        return ConfigError(
            f"{where} rejected the SASL credentials of user {settings.sasl_username!r} "
            f"(mechanism {settings.sasl_mechanism}): check sasl_username / sasl_password "
            "(TRACKSTREAM_KAFKA_SASL_USERNAME, TRACKSTREAM_KAFKA_SASL_PASSWORD)"
        )
    if "certificate" in text or ("ssl" in text and "handshake" in text):
        return ConfigError(
            f"{where}: the broker's TLS certificate could not be verified with ssl_cafile={settings.ssl_cafile!r} "
            "(TRACKSTREAM_KAFKA_SSL_CAFILE)"
        )
    return None


async def diagnose_connect_failure(settings: KafkaSettings, exc: BaseException, what: str) -> ConfigError | None:
    """:func:`kafka_setting_error` for ``exc``; when that finds nothing on a secured connection, find out.

    aiokafka reports a rejected login only in its log and raises a bare "Unable to bootstrap" error, so on a
    SASL or TLS connection this opens one probe connection to the first bootstrap server (10 s at most) and
    classifies what that raised.
    """
    problem = kafka_setting_error(settings, exc, what)
    if problem is not None or settings.security_protocol == "PLAINTEXT" or not settings.bootstrap:
        return problem
    from aiokafka.conn import create_conn

    host, _, port = settings.bootstrap.split(",")[0].strip().rpartition(":")
    options = settings.client_options()
    del options["bootstrap_servers"]
    try:
        connection = await create_conn(host.strip("[]"), int(port), request_timeout_ms=10_000, **options)
    except Exception as probe_error:
        return kafka_setting_error(settings, probe_error, what)
    connection.close()
    return None
