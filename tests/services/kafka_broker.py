"""The project's own Apache Kafka 4.x broker: one KRaft node on loopback, for tests and local development;
or a cluster of several such nodes (:class:`KafkaCluster`), for fault tests that lose a broker.

The broker's jars are resolved with Maven (``kafka-pom.xml`` beside this file) into ``.cache/kafka/`` once;
every start formats a fresh KRaft storage directory (or reuses one on restart), launches the JVM in its own
process group on a free port and waits until a message can be produced and consumed.

The broker serves two client listeners on loopback: PLAINTEXT (``bootstrap``) and SASL_SSL (``secured_bootstrap``,
SCRAM-SHA-512, TLS). The TLS certificates (a CA and a server certificate for 127.0.0.1/localhost) are made by
``trustme`` at the first start; the SCRAM user, with a random password, is created when the storage is formatted.
``secured.json`` in the state directory (mode 0600) says how to reach the secured listener: ``bootstrap``,
``security_protocol``, ``sasl_mechanism``, ``sasl_username``, ``sasl_password`` and ``ssl_cafile``.

The cluster (``cluster-up``): ``--brokers`` nodes (3 by default), each a combined controller + broker and a
voter of one static KRaft quorum, all on 127.0.0.1 with PLAINTEXT listeners only. Topics default to replication
factor min(nodes, 3) with ``min.insync.replicas`` 2 (the offsets and transaction state topics too), so acks=all
writes go on while one node is down. Every node has its own directory ``node<id>`` under the state directory and
keeps its ports across restarts (:meth:`KafkaCluster.stop_broker` / :meth:`KafkaCluster.start_broker`).

Command line (what ``make kafka-up`` / ``make kafka-down`` call)::

    python tests/services/kafka_broker.py up      # start or reuse; last line printed: host:port (PLAINTEXT)
    python tests/services/kafka_broker.py down    # stop the broker started by `up`
    python tests/services/kafka_broker.py status
    python tests/services/kafka_broker.py cluster-up --brokers 3 --state-dir DIR   # last line: host:port,...
    python tests/services/kafka_broker.py cluster-down --state-dir DIR
    python tests/services/kafka_broker.py cluster-status --state-dir DIR
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
DEFAULT_CLUSTER_STATE = CACHE / "kafka" / "cluster"
CLUSTER_FILE = "cluster.json"
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
node.id={node_id}
controller.quorum.voters={voters}
listeners={listeners},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners={listeners}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
inter.broker.listener.name=PLAINTEXT
{secured_properties}log.dirs={data_dir}
num.partitions=3
auto.create.topics.enable=true
default.replication.factor={replication}
min.insync.replicas={min_isr}
offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=6
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_isr}
share.coordinator.state.topic.replication.factor={replication}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
message.max.bytes=8388608
log.retention.hours=24
"""

_SECURED_PROPERTIES = """\
listener.name.sasl_ssl.sasl.enabled.mechanisms={sasl_mechanism}
listener.name.sasl_ssl.{sasl_mechanism_lower}.sasl.jaas.config={scram_jaas}
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location={keystore}
listener.name.sasl_ssl.ssl.client.auth=none
"""


@dataclass
class KafkaBroker:
    """One single-node KRaft broker whose files live under ``state_dir``; ``start``/``stop`` keep its ports.

    Two client listeners: PLAINTEXT on ``port`` and SASL_SSL (SCRAM-SHA-512 over TLS) on ``secured_port``;
    ``secured_file`` (``secured.json``) holds what a client needs for the latter, password included.

    As a node of a :class:`KafkaCluster`: ``node_id``, the quorum's ``voters`` (``id@host:port,...``; empty: this
    node alone), the shared ``cluster_id``, the ``replication`` factor of new and internal topics (with
    ``min.insync.replicas`` 2 when it is above 1), and ``secured=False`` for the PLAINTEXT listener only.
    """

    state_dir: Path
    port: int = 0
    controller_port: int = 0
    secured_port: int = 0
    sasl_password: str = field(default="", repr=False)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    node_id: int = 1
    voters: str = ""
    cluster_id: str = ""
    replication: int = 1
    secured: bool = True

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
        self.launch()
        try:
            wait_until_ready(
                self.bootstrap, timeout_s=timeout_s, process=self.process,
                secured=(self.secured_bootstrap, secured_client_options(self.secured_settings()))
                if self.secured else None,
            )
        except BaseException:
            self.stop()
            raise
        return self.bootstrap

    def launch(self) -> None:
        """Format storage on first launch and start the JVM, without waiting for it (a cluster node cannot be
        ready before a majority of the quorum runs)."""
        jars = ensure_jars()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.controller_port = self.controller_port or free_port()
        if self.secured:
            self.secured_port = self.secured_port or free_port()
        formatted = (self.state_dir / "data" / "meta.properties").exists()
        if self.secured:
            self._prepare_security(formatted=formatted)
        config = self._write_config()
        if not formatted:
            self._format(jars, config)
        log.info("starting Kafka %s broker %d on %s (log: %s)", KAFKA_VERSION, self.node_id, self.bootstrap,
                 self.log_file)
        self.process = subprocess.Popen(
            self._java(jars, "kafka.Kafka", str(config)),
            stdout=subprocess.DEVNULL, stderr=open(self.state_dir / "stderr.log", "ab"),  # noqa: SIM115
            start_new_session=True,
        )
        (self.state_dir / "broker.pid").write_text(str(self.process.pid))
        (self.state_dir / "bootstrap").write_text(self.bootstrap)

    def alive(self) -> bool:
        """True while the JVM this object started (or the one of ``broker.pid``) runs."""
        if self.process is not None:
            return self.process.poll() is None
        pid = _read_pid(self.state_dir)
        return pid is not None and _alive(pid)

    def kill(self) -> None:
        """SIGKILL the broker's process group (a crash: no controlled shutdown) and reap it."""
        pid = self.process.pid if self.process else _read_pid(self.state_dir)
        if pid is not None:
            with _suppress_missing():
                os.killpg(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()
            self.process = None
        for name in ("broker.pid", "bootstrap"):
            (self.state_dir / name).unlink(missing_ok=True)

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
        listeners = f"PLAINTEXT://127.0.0.1:{self.port}"
        secured_properties = ""
        if self.secured:
            listeners += f",SASL_SSL://127.0.0.1:{self.secured_port}"
            secured_properties = _SECURED_PROPERTIES.format(
                sasl_mechanism=SASL_MECHANISM, sasl_mechanism_lower=SASL_MECHANISM.lower(), scram_jaas=_SCRAM_JAAS,
                keystore=self.keystore_file.absolute(),
            )
        config.write_text(_PROPERTIES.format(
            node_id=self.node_id, voters=self.voters or f"{self.node_id}@127.0.0.1:{self.controller_port}",
            listeners=listeners, controller_port=self.controller_port, secured_properties=secured_properties,
            data_dir=data_dir, replication=self.replication, min_isr=min(self.replication, 2),
        ))
        level = os.environ.get("TRACKSTREAM_KAFKA_LOG_LEVEL", "INFO")
        (self.state_dir / "log4j2.properties").write_text(_LOG4J2.format(log_file=self.log_file, level=level))
        return config

    def _format(self, jars: Path, config: Path) -> None:
        cluster_id = self.cluster_id or new_cluster_id()
        command = self._java(jars, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(config))
        if self.secured:
            # The SCRAM user lives in the metadata log: KRaft creates it from the bootstrap records written here.
            command += ["--add-scram", f"{SASL_MECHANISM}=[name={SASL_USERNAME},password={self.sasl_password}]"]
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


def new_cluster_id() -> str:
    """A fresh KRaft cluster id: a random UUID in URL-safe base64 without padding, as ``kafka-storage`` wants."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass
class KafkaCluster:
    """``size`` combined controller + broker KRaft nodes on 127.0.0.1, one static quorum, PLAINTEXT only.

    Node ``i`` of :attr:`nodes` (node id ``i + 1``) lives in ``state_dir/node<i + 1>``; ``cluster.json`` in
    ``state_dir`` keeps the cluster id and every node's ports, so nodes restart where they were. Topics default to
    replication factor min(size, 3) and ``min.insync.replicas`` 2 (internal topics too).
    """

    state_dir: Path
    size: int = 3
    nodes: list[KafkaBroker] = field(default_factory=list)

    @property
    def replication(self) -> int:
        return min(self.size, 3)

    @property
    def bootstrap(self) -> str:
        """Every node's PLAINTEXT address, comma-separated (clients find the live ones)."""
        return ",".join(node.bootstrap for node in self.nodes)

    def start(self, *, timeout_s: float = 180.0) -> str:
        """Launch every node not running and wait until all are registered and an acks=all round trip on a
        fully replicated topic works; returns the bootstrap list. Stops the cluster if it does not get there."""
        if not self.nodes:
            self._plan()
        for node in self.nodes:
            if not node.alive():
                node.launch()
        try:
            wait_until_cluster_ready(
                self.bootstrap, brokers={node.node_id for node in self.nodes}, timeout_s=timeout_s,
                processes=[node.process for node in self.nodes if node.process is not None],
            )
        except BaseException:
            self.stop()
            raise
        (self.state_dir / "bootstrap").write_text(self.bootstrap)
        return self.bootstrap

    def stop_broker(self, index: int, *, sig: int = signal.SIGKILL) -> None:
        """Stop node ``index``: SIGKILL by default (a crash), SIGTERM for a controlled shutdown (bounded)."""
        node = self.nodes[index]
        if sig == signal.SIGKILL:
            node.kill()
        else:
            node.stop()

    def start_broker(self, index: int, *, timeout_s: float = 120.0) -> None:
        """Restart node ``index`` on its ports and data; returns once the cluster lists it as a live broker."""
        node = self.nodes[index]
        if node.alive():
            raise BrokerError(f"broker {node.node_id} is already running")
        node.launch()
        # Asked through the node's own listener: the cluster's metadata may still list a node killed moments ago.
        wait_until_cluster_ready(node.bootstrap, brokers={node.node_id}, timeout_s=timeout_s,
                                 processes=[node.process] if node.process is not None else [], round_trip=False)

    def index_of(self, node_id: int) -> int:
        """Index in :attr:`nodes` of the node with this id."""
        return next(i for i, node in enumerate(self.nodes) if node.node_id == node_id)

    def leader(self, topic: str, partition: int, *, timeout_s: float = 30.0) -> int:
        """Index in :attr:`nodes` of the current leader of ``topic``/``partition``."""
        described = asyncio.run(_describe_topics(self.bootstrap, [topic], timeout_s=timeout_s))
        for entry in described[0]["partitions"]:
            if entry["partition"] == partition and entry["leader"] >= 0:
                return self.index_of(entry["leader"])
        raise BrokerError(f"{topic}/{partition} has no leader")

    def wait_in_sync(self, *, timeout_s: float = 120.0, topics: list[str] | None = None) -> None:
        """Wait until every partition (of ``topics``, default all) has all its replicas in sync."""
        deadline = time.monotonic() + timeout_s
        behind: list[str] = []
        while time.monotonic() < deadline:
            try:
                described = asyncio.run(_describe_topics(self.bootstrap, topics, timeout_s=10.0))
            except Exception as exc:
                behind = [repr(exc)]
            else:
                behind = [f"{t['topic']}/{p['partition']}" for t in described for p in t["partitions"]
                          if set(p["replicas"]) - set(p["isr"])]
                if not behind:
                    return
            time.sleep(0.5)
        raise BrokerError(f"replicas not in sync after {timeout_s:.0f} s: {', '.join(behind[:10])}")

    def stop(self, *, timeout_s: float = 30.0, last_grace_s: float = 3.0) -> None:
        """Stop every node, one after the other: SIGTERM (a controlled shutdown), SIGKILL after ``timeout_s``.

        The last node cannot shut down cleanly (it has no quorum left, and waits for one): it gets ``last_grace_s``.
        """
        if not self.nodes:
            self._plan(create=False)
        running = [node for node in self.nodes if node.alive()]
        for node in running[:-1]:
            node.stop(timeout_s=timeout_s)
        if running:
            last = running[-1]
            pid = last.process.pid if last.process else _read_pid(last.state_dir)
            if pid is not None:
                with _suppress_missing():
                    os.killpg(pid, signal.SIGTERM)
                deadline = time.monotonic() + last_grace_s
                while last.alive() and time.monotonic() < deadline:
                    time.sleep(0.1)
        for node in self.nodes:
            node.kill()  # reaps what is left and removes the pid files of nodes that were already down
        (self.state_dir / "bootstrap").unlink(missing_ok=True)

    def running_bootstrap(self) -> str | None:
        """The bootstrap list when every node recorded in ``state_dir`` runs, else None."""
        if not self.nodes:
            self._plan(create=False)
        if not self.nodes or not all(node.alive() for node in self.nodes):
            return None
        return self.bootstrap

    def _plan(self, *, create: bool = True) -> None:
        """Nodes from ``cluster.json``; a new plan (cluster id, free ports) when there is none and ``create``."""
        spec_file = self.state_dir / CLUSTER_FILE
        if spec_file.exists():
            spec = json.loads(spec_file.read_text())
        elif not create:
            return
        else:
            ports: set[int] = set()
            while len(ports) < 2 * self.size:
                ports.add(free_port())
            pairs = sorted(ports)
            spec = {"cluster_id": new_cluster_id(), "nodes": [
                {"node_id": i + 1, "port": pairs[2 * i], "controller_port": pairs[2 * i + 1]} for i in range(self.size)
            ]}
            self.state_dir.mkdir(parents=True, exist_ok=True)
            spec_file.write_text(json.dumps(spec, indent=2) + "\n")
        self.size = len(spec["nodes"])
        voters = ",".join(f"{n['node_id']}@127.0.0.1:{n['controller_port']}" for n in spec["nodes"])
        self.nodes = [
            KafkaBroker(self.state_dir / f"node{n['node_id']}", port=n["port"], controller_port=n["controller_port"],
                        node_id=n["node_id"], voters=voters, cluster_id=spec["cluster_id"],
                        replication=self.replication, secured=False)
            for n in spec["nodes"]
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


def wait_until_cluster_ready(
    bootstrap: str,
    *,
    brokers: set[int],
    timeout_s: float,
    processes: list[subprocess.Popen[bytes]] | None = None,
    round_trip: bool = True,
) -> None:
    """Poll until the cluster's metadata lists every broker id of ``brokers`` as live and, with ``round_trip``, a
    message round-trips with acks=all through a topic of the default replication; fail fast if a JVM exits."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        for process in processes or []:
            if process.poll() is not None:
                raise BrokerError(f"a broker exited with code {process.returncode} during start-up")
        try:
            timeout = min(20.0, max(1.0, deadline - time.monotonic()))
            described = asyncio.run(asyncio.wait_for(_describe_cluster(bootstrap, timeout_s=timeout), timeout + 5))
            missing = brokers - {int(broker["node_id"]) for broker in described["brokers"]}
            if missing:
                raise BrokerError(f"brokers {sorted(missing)} are not registered yet")
            if round_trip:
                asyncio.run(_round_trip(bootstrap, timeout_s=timeout, producer_options={"acks": "all"}))
            return
        except Exception as exc:
            last_error = exc
            time.sleep(0.5)
    raise BrokerError(f"the Kafka cluster at {bootstrap} was not ready within {timeout_s:.0f} s: {last_error!r}")


async def _describe_cluster(bootstrap: str, *, timeout_s: float) -> dict[str, Any]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await admin.start()
        described: dict[str, Any] = await admin.describe_cluster()
        return described
    finally:
        await admin.close()


async def _describe_topics(bootstrap: str, topics: list[str] | None, *, timeout_s: float) -> list[Any]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        return await asyncio.wait_for(admin.describe_topics(topics), timeout_s)
    finally:
        await admin.close()


async def _round_trip(bootstrap: str, *, timeout_s: float, options: Mapping[str, Any] | None = None,
                      producer_options: Mapping[str, Any] | None = None) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.conn import create_conn

    options = dict(options or {})
    topic = "__trackstream_ready"
    payload = uuid.uuid4().bytes
    host, port = bootstrap.split(",", maxsplit=1)[0].rsplit(":", 1)
    # One direct connection first: it fails fast, and with the real reason (TLS, SASL), which the clients only log.
    connection = await asyncio.wait_for(
        create_conn(host, int(port), request_timeout_ms=int(timeout_s * 1000), **options), timeout_s
    )
    connection.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), **options,
                                **(producer_options or {}))
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


def _cluster_main(command: str, state_dir: Path, brokers: int, timeout_s: float) -> int:
    cluster = KafkaCluster(state_dir, size=brokers)
    running = cluster.running_bootstrap()
    if command == "cluster-status":
        sys.stdout.write(f"{running or 'stopped'}\n")
        return 0 if running else 1
    if command == "cluster-down":
        if running is None:
            log.info("no complete cluster is running from %s", state_dir)
        cluster.stop()
        log.info("cluster stopped")
        return 0
    if running is not None and cluster.size == brokers:
        log.info("reusing the running cluster")
        sys.stdout.write(f"{running}\n")
        return 0
    if cluster.nodes:
        cluster.stop()
    shutil.rmtree(state_dir, ignore_errors=True)
    cluster = KafkaCluster(state_dir, size=brokers)
    started = time.monotonic()
    try:
        bootstrap = cluster.start(timeout_s=timeout_s)
    except BrokerError as exc:
        log.error("%s", exc)
        return 1
    log.info("cluster of %d brokers ready in %.1f s", brokers, time.monotonic() - started)
    sys.stdout.write(f"{bootstrap}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "down", "status", "cluster-up", "cluster-down", "cluster-status"))
    parser.add_argument("--state-dir", type=Path, default=None,
                        help=f"default: {DEFAULT_STATE} (broker), {DEFAULT_CLUSTER_STATE} (cluster)")
    parser.add_argument("--brokers", type=int, default=3, help="nodes of the cluster (cluster-up)")
    parser.add_argument("--timeout-s", type=float, default=None, help="start-up bound (default 120 s, cluster 180 s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s kafka-broker %(message)s", stream=sys.stderr)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    if args.command.startswith("cluster-"):
        if args.brokers < 1:
            parser.error("--brokers must be at least 1")
        return _cluster_main(args.command, args.state_dir or DEFAULT_CLUSTER_STATE, args.brokers,
                             args.timeout_s or 180.0)
    args.state_dir = args.state_dir or DEFAULT_STATE
    args.timeout_s = args.timeout_s or 120.0
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
