"""The project's own Apache Kafka 4.x broker: one KRaft node on loopback, for tests and local development.

The broker's jars are resolved with Maven (``kafka-pom.xml`` beside this file) into ``.cache/kafka/`` once;
every start formats a fresh KRaft storage directory (or reuses one on restart), launches the JVM in its own
process group on a free port and waits until a message can be produced and consumed.

The broker serves two client listeners on loopback: PLAINTEXT (``bootstrap``) and SASL_SSL (``secured_bootstrap``,
SCRAM-SHA-512, TLS). The TLS certificates (a CA and a server certificate for 127.0.0.1/localhost) are made by
``trustme`` at the first start; the SCRAM user, with a random password, is created when the storage is formatted.
``secured.json`` in the state directory (mode 0600) says how to reach the secured listener: ``bootstrap``,
``security_protocol``, ``sasl_mechanism``, ``sasl_username``, ``sasl_password`` and ``ssl_cafile``.

Command line (what ``make kafka-up`` / ``make kafka-down`` call)::

    python tests/services/kafka_broker.py up      # start or reuse; last line printed: host:port (PLAINTEXT)
    python tests/services/kafka_broker.py down    # stop the broker started by `up`
    python tests/services/kafka_broker.py status
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("trackstream.kafka_broker")

REPO = Path(__file__).resolve().parents[2]
POM = Path(__file__).with_name("kafka-pom.xml")
CACHE = Path(os.environ.get("TRACKSTREAM_CACHE_DIR", REPO / ".cache"))
KAFKA_VERSION = "4.1.1"
JARS = CACHE / "kafka" / f"jars-{KAFKA_VERSION}"
DEFAULT_STATE = CACHE / "kafka" / "broker"
HEAP = os.environ.get("TRACKSTREAM_KAFKA_HEAP", "-Xmx768m")
SASL_MECHANISM = "SCRAM-SHA-512"
SASL_USERNAME = "trackstream-test"
SECURED_FILE = "secured.json"
_SCRAM_JAAS = "org.apache.kafka.common.security.scram.ScramLoginModule required;"


class BrokerError(RuntimeError):
    """The broker could not be provisioned or started; the message says what to do next."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def missing_tools() -> list[str]:
    """Which of java and mvn are not on PATH (mvn only matters while the jar cache is empty)."""
    missing = [tool for tool in ("java",) if shutil.which(tool) is None]
    if not _jars_ready() and shutil.which("mvn") is None:
        missing.append("mvn")
    return missing


def _jars_ready() -> bool:
    return (JARS / ".complete").exists()


def ensure_jars() -> Path:
    """Resolve the broker's jars with Maven into the git-ignored cache, once."""
    if _jars_ready():
        return JARS
    if shutil.which("mvn") is None:
        raise BrokerError("Maven (mvn) is not installed: install it (apt-get install maven) to fetch Kafka's jars")
    log.info("resolving Apache Kafka %s jars with Maven into %s", KAFKA_VERSION, JARS)
    staging = JARS.with_name(JARS.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    command = [
        "mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
        f"-Dkafka.version={KAFKA_VERSION}", f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BrokerError(f"Maven could not resolve Kafka's jars (exit {result.returncode}):\n{result.stdout[-3000:]}")
    shutil.rmtree(JARS, ignore_errors=True)
    staging.rename(JARS)
    (JARS / ".complete").touch()
    return JARS


_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
"""

_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{secured_port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{secured_port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
inter.broker.listener.name=PLAINTEXT
listener.name.sasl_ssl.sasl.enabled.mechanisms={sasl_mechanism}
listener.name.sasl_ssl.{sasl_mechanism_lower}.sasl.jaas.config={scram_jaas}
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location={keystore}
listener.name.sasl_ssl.ssl.client.auth=none
log.dirs={data_dir}
num.partitions=3
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
message.max.bytes=8388608
log.retention.hours=24
"""


@dataclass
class KafkaBroker:
    """One single-node KRaft broker whose files live under ``state_dir``; ``start``/``stop`` keep its ports.

    Two client listeners: PLAINTEXT on ``port`` and SASL_SSL (SCRAM-SHA-512 over TLS) on ``secured_port``;
    ``secured_file`` (``secured.json``) holds what a client needs for the latter, password included.
    """

    state_dir: Path
    port: int = 0
    controller_port: int = 0
    secured_port: int = 0
    sasl_password: str = field(default="", repr=False)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def secured_bootstrap(self) -> str:
        return f"127.0.0.1:{self.secured_port}"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "broker.log"

    @property
    def secured_file(self) -> Path:
        return self.state_dir / SECURED_FILE

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "tls-ca.pem"

    @property
    def keystore_file(self) -> Path:
        return self.state_dir / "tls-server-keystore.pem"

    def secured_settings(self) -> dict[str, str]:
        """What ``secured.json`` holds: how a client reaches the SASL_SSL listener."""
        return {
            "bootstrap": self.secured_bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": SASL_MECHANISM,
            "sasl_username": SASL_USERNAME,
            "sasl_password": self.sasl_password,
            "ssl_cafile": str(self.ca_file.absolute()),
        }

    def start(self, *, timeout_s: float = 120.0) -> str:
        """Format storage on first start, launch the JVM and wait until produce/consume works."""
        jars = ensure_jars()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.controller_port = self.controller_port or free_port()
        self.secured_port = self.secured_port or free_port()
        formatted = (self.state_dir / "data" / "meta.properties").exists()
        self._prepare_security(formatted=formatted)
        config = self._write_config()
        if not formatted:
            self._format(jars, config)
        log.info("starting Kafka %s broker on %s (log: %s)", KAFKA_VERSION, self.bootstrap, self.log_file)
        self.process = subprocess.Popen(
            self._java(jars, "kafka.Kafka", str(config)),
            stdout=subprocess.DEVNULL, stderr=open(self.state_dir / "stderr.log", "ab"),  # noqa: SIM115
            start_new_session=True,
        )
        (self.state_dir / "broker.pid").write_text(str(self.process.pid))
        (self.state_dir / "bootstrap").write_text(self.bootstrap)
        try:
            wait_until_ready(
                self.bootstrap, timeout_s=timeout_s, process=self.process,
                secured=(self.secured_bootstrap, secured_client_options(self.secured_settings())),
            )
        except BaseException:
            self.stop()
            raise
        return self.bootstrap

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Stop the broker's process group: SIGTERM for a clean shutdown, SIGKILL if it hangs."""
        pid = self.process.pid if self.process else _read_pid(self.state_dir)
        if pid is not None:
            terminate_group(pid, timeout_s=timeout_s)
        if self.process is not None:
            self.process.wait()
            self.process = None
        for name in ("broker.pid", "bootstrap"):
            (self.state_dir / name).unlink(missing_ok=True)

    def _write_config(self) -> Path:
        data_dir = self.state_dir / "data"
        config = self.state_dir / "server.properties"
        config.write_text(_PROPERTIES.format(
            port=self.port, controller_port=self.controller_port, secured_port=self.secured_port, data_dir=data_dir,
            sasl_mechanism=SASL_MECHANISM, sasl_mechanism_lower=SASL_MECHANISM.lower(), scram_jaas=_SCRAM_JAAS,
            keystore=self.keystore_file.absolute(),
        ))
        level = os.environ.get("TRACKSTREAM_KAFKA_LOG_LEVEL", "INFO")
        (self.state_dir / "log4j2.properties").write_text(_LOG4J2.format(log_file=self.log_file, level=level))
        return config

    def _format(self, jars: Path, config: Path) -> None:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # The SCRAM user lives in the metadata log: KRaft creates it from the bootstrap records written here.
        scram = f"{SASL_MECHANISM}=[name={SASL_USERNAME},password={self.sasl_password}]"
        command = self._java(
            jars, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(config),
            "--add-scram", scram,
        )
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BrokerError(f"formatting KRaft storage failed:\n{result.stdout}{result.stderr}")

    def _prepare_security(self, *, formatted: bool) -> None:
        """Password and TLS files of the secured listener, made once per state directory; then ``secured.json``.

        A restart keeps them: the SCRAM user was created with this password when the storage was formatted, and
        clients may hold the CA already.
        """
        if not self.sasl_password and formatted:
            try:
                self.sasl_password = json.loads(self.secured_file.read_text())["sasl_password"]
            except (OSError, ValueError, KeyError) as exc:
                raise BrokerError(
                    f"{self.state_dir} holds a formatted broker without a readable {SECURED_FILE} (its SCRAM password "
                    f"is unknown): remove the directory to start afresh ({type(exc).__name__})"
                ) from None
        if not self.sasl_password:
            self.sasl_password = secrets.token_urlsafe(24)
        if not (self.ca_file.exists() and self.keystore_file.exists()):
            self._write_certificates()
        _write_private(self.secured_file, json.dumps(self.secured_settings(), indent=2).encode() + b"\n")

    def _write_certificates(self) -> None:
        """A fresh CA and a server certificate for 127.0.0.1/localhost, as PEM files Kafka reads directly."""
        try:
            import trustme
            from cryptography.hazmat.primitives import serialization
        except ImportError as exc:
            raise BrokerError(f"the secured listener needs trustme (pip install -e '.[dev]'): {exc}") from None
        authority = trustme.CA(organization_name="trackstream test broker")
        server = authority.issue_cert("127.0.0.1", "localhost")
        # Kafka's PEM key store takes PKCS#8 keys only; trustme writes the traditional OpenSSL format.
        key = serialization.load_pem_private_key(server.private_key_pem.bytes(), password=None)
        pkcs8 = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        chain = b"".join(blob.bytes() for blob in server.cert_chain_pems)
        _write_private(self.keystore_file, pkcs8 + chain)
        _write_private(self.ca_file, authority.cert_pem.bytes())

    def _java(self, jars: Path, main: str, *args: str) -> list[str]:
        return [
            "java", HEAP, "-Xms256m", "-XX:+UseG1GC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.state_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.state_dir}", "-cp", f"{jars}/*", main, *args,
        ]


def _write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with a file only its owner can read (mode 0600)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.replace(partial, path)


def secured_client_options(settings: Mapping[str, str]) -> dict[str, Any]:
    """aiokafka keyword arguments (security only, no servers) for the listener ``secured.json`` describes."""
    import ssl

    return {
        "security_protocol": settings["security_protocol"],
        "ssl_context": ssl.create_default_context(cafile=settings["ssl_cafile"]),
        "sasl_mechanism": settings["sasl_mechanism"],
        "sasl_plain_username": settings["sasl_username"],
        "sasl_plain_password": settings["sasl_password"],
    }


def terminate_group(pid: int, *, timeout_s: float) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    log.warning("broker %d did not stop within %.0f s; killing it", pid, timeout_s)
    with _suppress_missing():
        os.killpg(pid, signal.SIGKILL)


class _suppress_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return isinstance(exc, ProcessLookupError)


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _read_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / "broker.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None


def wait_until_ready(
    bootstrap: str,
    *,
    timeout_s: float,
    process: subprocess.Popen[bytes] | None = None,
    secured: tuple[str, Mapping[str, Any]] | None = None,
) -> None:
    """Poll until a message round-trips through the broker; fail fast if the JVM exits.

    ``secured`` (bootstrap, aiokafka security options) is a second listener that must round-trip too.
    """
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    pending: list[tuple[str, Mapping[str, Any]]] = [(bootstrap, {})]
    if secured is not None:
        pending.append(secured)
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BrokerError(f"the broker exited with code {process.returncode} during start-up")
        try:
            while pending:
                address, options = pending[0]
                timeout = min(20.0, max(1.0, deadline - time.monotonic()))
                asyncio.run(_round_trip(address, timeout_s=timeout, options=options))
                pending.pop(0)
            return
        except Exception as exc:
            last_error = exc
            time.sleep(0.5)
    address = pending[0][0] if pending else bootstrap
    raise BrokerError(f"Kafka at {address} did not accept produce/consume within {timeout_s:.0f} s: {last_error!r}")


async def _round_trip(bootstrap: str, *, timeout_s: float, options: Mapping[str, Any] | None = None) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.conn import create_conn

    options = dict(options or {})
    topic = "__trackstream_ready"
    payload = uuid.uuid4().bytes
    host, port = bootstrap.rsplit(":", 1)
    # One direct connection first: it fails fast, and with the real reason (TLS, SASL), which the clients only log.
    connection = await asyncio.wait_for(
        create_conn(host, int(port), request_timeout_ms=int(timeout_s * 1000), **options), timeout_s
    )
    connection.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), **options)
    try:
        await asyncio.wait_for(producer.start(), timeout_s)
        metadata = await asyncio.wait_for(producer.send_and_wait(topic, payload, partition=0), timeout_s)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **options)
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)

        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek(partition, metadata.offset)
        record = await asyncio.wait_for(consumer.getone(), timeout_s)
        if record.value != payload:
            raise BrokerError("read back a different message than was produced")
    finally:
        await consumer.stop()


def _running_bootstrap(state_dir: Path) -> str | None:
    pid = _read_pid(state_dir)
    bootstrap_file = state_dir / "bootstrap"
    if pid is None or not _alive(pid) or not bootstrap_file.exists():
        return None
    return bootstrap_file.read_text().strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE)
    parser.add_argument("--timeout-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s kafka-broker %(message)s", stream=sys.stderr)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    running = _running_bootstrap(args.state_dir)
    if args.command == "status":
        sys.stdout.write(f"{running or 'stopped'}\n")
        return 0 if running else 1
    if args.command == "down":
        if running is None:
            log.info("no broker is running from %s", args.state_dir)
        KafkaBroker(args.state_dir).stop()
        log.info("broker stopped")
        return 0
    if running is not None and (args.state_dir / SECURED_FILE).exists():
        log.info("reusing the running broker")
        sys.stdout.write(f"{running}\n")
        return 0
    if running is not None:
        log.warning("the running broker has no secured listener (%s is missing): restarting it", SECURED_FILE)
        KafkaBroker(args.state_dir).stop()
    shutil.rmtree(args.state_dir, ignore_errors=True)
    started = time.monotonic()
    try:
        bootstrap = KafkaBroker(args.state_dir).start(timeout_s=args.timeout_s)
    except BrokerError as exc:
        log.error("%s", exc)
        return 1
    log.info("broker ready in %.1f s", time.monotonic() - started)
    sys.stdout.write(f"{bootstrap}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
