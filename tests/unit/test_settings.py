"""The shared settings (KafkaSettings, StoreSettings, ProducerConfig): precedence, validation, and secrets."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys

import pytest

import trackstream
from trackstream.producers.config import ProducerConfig, resolve_config
from trackstream.schemas.errors import ConfigError
from trackstream.schemas.settings import KafkaSettings, Secret, StoreSettings, kafka_setting_error

PASSWORD = "hunter2-s3cret"


def test_kafka_keyword_beats_object_beats_environment_beats_default() -> None:
    env = {"TRACKSTREAM_KAFKA_BOOTSTRAP": "env:9092", "TRACKSTREAM_TOPIC_PREFIX": "envprefix",
           "TRACKSTREAM_KAFKA_CLIENT_ID": "env-client"}
    assert KafkaSettings.resolve(environ={}) == KafkaSettings()
    from_env = KafkaSettings.resolve(environ=env)
    assert (from_env.bootstrap, from_env.topic_prefix, from_env.client_id) == ("env:9092", "envprefix", "env-client")
    explicit = KafkaSettings(bootstrap="obj:9092")
    merged = KafkaSettings.resolve(explicit, environ=env)
    # the object's own field wins; the fields it left at their defaults still follow the environment
    assert (merged.bootstrap, merged.topic_prefix) == ("obj:9092", "envprefix")
    assert KafkaSettings.resolve(explicit, bootstrap="kw:9092", environ=env).bootstrap == "kw:9092"
    assert KafkaSettings.resolve(bootstrap="", environ=env).bootstrap is None


def test_kafka_security_settings_are_checked_with_the_variable_to_set() -> None:
    env = {"TRACKSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "TRACKSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "TRACKSTREAM_KAFKA_SASL_USERNAME": "alice"}
    with pytest.raises(ConfigError, match="TRACKSTREAM_KAFKA_SASL_PASSWORD"):
        KafkaSettings.resolve(environ=env)
    settings = KafkaSettings.resolve(environ={**env, "TRACKSTREAM_KAFKA_SASL_PASSWORD": PASSWORD})
    assert settings.sasl_password == Secret(PASSWORD)
    with pytest.raises(ConfigError, match="expected one of"):
        KafkaSettings.resolve(environ={"TRACKSTREAM_KAFKA_SECURITY_PROTOCOL": "TLS"})
    with pytest.raises(ConfigError, match="SASL_SSL or SASL_PLAINTEXT"):
        KafkaSettings.resolve(sasl_mechanism="PLAIN", environ={})
    with pytest.raises(ConfigError, match="TRACKSTREAM_KAFKA_BOOTSTRAP"):
        KafkaSettings.resolve(environ={}).require_bootstrap("the sink worker")
    with pytest.raises(TypeError, match="no_such"):
        KafkaSettings.resolve(no_such=1, environ={})


def test_unreadable_tls_files_name_the_setting(tmp_path: object) -> None:
    settings = KafkaSettings(bootstrap="h:1", security_protocol="SSL", ssl_cafile="/nonexistent/ca.pem")
    with pytest.raises(ConfigError, match=r"ssl_cafile='/nonexistent/ca\.pem'"):
        settings.client_options()


def test_a_secret_never_shows_in_reprs_strings_or_formatting() -> None:
    secret = Secret(PASSWORD)
    kafka = KafkaSettings(bootstrap="h:1", security_protocol="SASL_SSL", sasl_mechanism="PLAIN",
                          sasl_username="u", sasl_password=secret)
    store = StoreSettings.resolve(url="http://u:pw@host:8123/db", password=PASSWORD, environ={})
    config = resolve_config(kafka=kafka)
    for shown in (repr(secret), str(secret), f"{secret}", repr(kafka), str(kafka), repr(store), repr(config),
                  str(dataclasses.asdict(kafka))):
        assert PASSWORD not in shown
    assert secret.reveal() == PASSWORD
    assert kafka.client_options()["sasl_plain_password"] == PASSWORD
    assert hash(Secret("a")) == hash(Secret("a"))
    assert Secret("a") != Secret("b")


def test_store_credentials_move_out_of_the_url() -> None:
    store = StoreSettings.resolve(url="https://alice:pa%3Ass@ch.example:8443/metrics?password=q&secure=1", environ={})
    assert store.url == "https://ch.example:8443/metrics?secure=1"
    assert (store.user, store.password) == ("alice", Secret("q"))
    explicit = StoreSettings.resolve(url="http://bob:url-pw@h:8123", password="kw-pw", environ={})
    assert (explicit.user, explicit.password) == ("bob", Secret("kw-pw"))
    env = {"TRACKSTREAM_CLICKHOUSE_URL": "http://h:8123", "TRACKSTREAM_CLICKHOUSE_PASSWORD": PASSWORD,
           "TRACKSTREAM_DATA_DIR": "/data/x"}
    from_env = StoreSettings.resolve(environ=env)
    assert (from_env.url, from_env.password, from_env.data_dir) == ("http://h:8123", Secret(PASSWORD), "/data/x")
    assert StoreSettings.resolve(data_dir="~/s", environ=env).data_dir.endswith("/s")
    assert StoreSettings.resolve(environ={}).embedded


def test_server_errors_never_echo_the_password() -> None:
    pytest.importorskip("clickhouse_connect")
    from trackstream.sinks.errors import StoreUnavailable
    from trackstream.sinks.server_backend import ServerBackend

    # port 9 on loopback: nothing listens (discard service is not run here), so the connection is refused at once
    store = StoreSettings.resolve(url=f"http://127.0.0.1:9/?password={PASSWORD}", environ={})
    with pytest.raises(StoreUnavailable) as caught:
        ServerBackend(store)
    assert PASSWORD not in str(caught.value)
    assert caught.value.retriable


def test_producer_config_passed_explicitly_still_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKSTREAM_LINGER_MS", "50")
    monkeypatch.setenv("TRACKSTREAM_KAFKA_BOOTSTRAP", "env:9092")
    config = resolve_config(ProducerConfig(flush_points=10))
    assert (config.flush_points, config.linger_ms, config.kafka.bootstrap) == (10, 50, "env:9092")
    assert resolve_config(ProducerConfig(linger_ms=3)).linger_ms == 3
    forced = resolve_config(kafka_bootstrap="", topic_prefix="p")
    assert forced.spooled_only
    assert forced.kafka.topic_prefix == "p"
    keyword = resolve_config(kafka_sasl_password=PASSWORD, kafka_security_protocol="SASL_SSL",
                             kafka_sasl_mechanism="PLAIN", kafka_sasl_username="u")
    assert keyword.kafka.sasl_password == Secret(PASSWORD)


def test_kafka_setting_errors_are_recognised_and_not_retriable() -> None:
    settings = KafkaSettings(bootstrap="h:1", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                             sasl_username="alice", sasl_password=Secret(PASSWORD))

    class SaslAuthenticationFailed(Exception):
        pass

    try:
        try:
            raise SaslAuthenticationFailed("Authentication failed during authentication due to invalid credentials")
        except SaslAuthenticationFailed as inner:
            raise ConnectionError("Unable to bootstrap from [('h', 1)]") from inner
    except ConnectionError as outer:
        problem = kafka_setting_error(settings, outer, "the sink worker")
    assert problem is not None
    assert not problem.retriable
    assert "TRACKSTREAM_KAFKA_SASL_PASSWORD" in str(problem)
    assert PASSWORD not in str(problem)
    assert kafka_setting_error(settings, ConnectionError("connection refused"), "x") is None


def test_help_and_logs_never_show_secrets(caplog: pytest.LogCaptureFixture) -> None:
    env = {"TRACKSTREAM_KAFKA_SASL_PASSWORD": PASSWORD, "TRACKSTREAM_CLICKHOUSE_PASSWORD": PASSWORD,
           "PATH": "/usr/bin:/bin"}
    for command in (["sink", "worker", "--help"], ["streams", "worker", "--help"], ["runs", "--help"]):
        result = subprocess.run([sys.executable, "-m", "trackstream.cli", *command], capture_output=True, text=True,
                                env=env, check=True, timeout=60)
        assert PASSWORD not in result.stdout + result.stderr
        assert "--sasl-password" not in result.stdout
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("trackstream").info("settings: %s", KafkaSettings(sasl_password=Secret(PASSWORD)))
    assert PASSWORD not in caplog.text


def test_the_facade_exports_the_settings_and_the_error_root() -> None:
    assert trackstream.KafkaSettings is KafkaSettings
    assert trackstream.StoreSettings is StoreSettings
    assert issubclass(trackstream.ConfigError, trackstream.TrackstreamError)


def test_credentials_inside_a_url_rank_with_the_url_not_below_the_environment() -> None:
    env = {"TRACKSTREAM_CLICKHOUSE_USER": "env-user", "TRACKSTREAM_CLICKHOUSE_PASSWORD": "env-pw"}
    inline = StoreSettings.resolve(url="http://alice:alice-pw@h:8123", environ=env)
    assert (inline.user, inline.password) == ("alice", Secret("alice-pw"))
    user_only = StoreSettings.resolve(url="http://alice@h:8123", environ=env)
    assert user_only.user == "alice"
    keyword = StoreSettings.resolve(url="http://alice:alice-pw@h:8123", user="kw", password="kw-pw", environ=env)
    assert (keyword.user, keyword.password) == ("kw", Secret("kw-pw"))
    from_env_url = StoreSettings.resolve(environ={**env, "TRACKSTREAM_CLICKHOUSE_URL": "http://bob:bob-pw@h:1"})
    assert (from_env_url.url, from_env_url.user, from_env_url.password) == ("http://h:1", "bob", Secret("bob-pw"))


def test_a_data_dir_keyword_means_the_embedded_store_whatever_the_environment() -> None:
    env = {"TRACKSTREAM_CLICKHOUSE_URL": "http://h:8123"}
    assert StoreSettings.resolve(data_dir="/tmp/x", environ=env).embedded
    assert not StoreSettings.resolve(environ=env).embedded
    assert StoreSettings.resolve(url="", environ=env).embedded


@pytest.mark.parametrize("url", ["http://bob:pa/ss3cr3t@localhost:8123/db", "http://bob:pa#ss3cr3t@h:1",
                                 "ftp://h", "not a url"])
def test_a_url_that_does_not_parse_is_a_config_error_that_quotes_no_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        StoreSettings.resolve(url=url, environ={})
    assert "ss3cr3t" not in str(caught.value)
    assert "TRACKSTREAM_CLICKHOUSE_URL" in str(caught.value)


def test_plain_string_passwords_are_typed_as_secrets_on_construction() -> None:
    kafka = KafkaSettings(bootstrap="h:1", security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u",
                          sasl_password=PASSWORD)  # type: ignore[arg-type]
    store = StoreSettings(url="http://h:1", password=PASSWORD)  # type: ignore[arg-type]
    for settings in (kafka, store, KafkaSettings.resolve(kafka, environ={}), StoreSettings.resolve(store, environ={})):
        assert PASSWORD not in repr(settings)
    assert KafkaSettings.resolve(kafka, environ={}).client_options()["sasl_plain_password"] == PASSWORD


@pytest.mark.parametrize(("options", "match"), [
    ({"flush_points": 0}, "flush_points=0"), ({"request_timeout_ms": 0}, "request_timeout_ms"),
    ({"exit_timeout_s": -1}, "exit_timeout_s"), ({"fsync_interval_ms": 0}, "fsync_interval_ms"),
    ({"max_envelope_bytes": 0}, "max_envelope_bytes"), ({"linger_ms": -5}, "TRACKSTREAM_LINGER_MS"),
    ({"linger_ms": True}, "linger_ms=True"), ({"linger_ms": 2.7}, "linger_ms=2.7"),
    ({"max_envelope_points": 10**6}, "max_envelope_points"),
])
def test_producer_settings_out_of_range_name_their_variable(options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_config(**options)


def test_the_cli_refuses_a_password_on_its_command_line() -> None:
    result = subprocess.run([sys.executable, "-m", "trackstream.cli", "runs", "p", "--clickhouse-url",
                             f"http://bob:{PASSWORD}@127.0.0.1:9/db"], capture_output=True, text=True,
                            timeout=60, check=False, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    assert result.returncode == 2
    assert "TRACKSTREAM_CLICKHOUSE_PASSWORD" in result.stderr
    assert PASSWORD not in result.stderr
