"""A real RabbitMQ node (Debian's rabbitmq-server), started and stopped by pid.

Runs either inside a lab pod namespace (``netns=...``, default ports, node name
``rabbit@<pod ip>``) or on loopback in the current namespace with private
epmd/distribution ports, so tests can run a broker without touching anything
shared.

    >>> with RabbitNode("t1", Path("/tmp/hp-rmq")) as node:  # doctest: +SKIP
    ...     print(node.url)
    amqp://guest:guest@127.0.0.1:40123/

With ``tls=True`` the node also has a TLS listener (``tls_port``, 5671 in a
namespace), with a CA and certificates made at start-up in ``state_dir/tls``
(:mod:`hangproof.lab.components.tls`; keys 0600). ``client_url`` / ``client_port`` are
what clients dial (the TLS listener when ``tls``), ``client_ssl`` the
``broker_use_ssl`` that trusts the lab CA. The plain listener stays, for the
lab's own producers and readiness checks.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hangproof.credentials import mask_argv
from hangproof.errors import HangproofError, require_tools
from hangproof.lab.components.cookie import node_cookie
from hangproof.lab.components.tls import TlsFiles, make_tls_files
from hangproof.lab.engine import processes

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
#: A fresh node on 2 cores takes 5-15 s to boot; a cluster join adds more.
DEFAULT_START_TIMEOUT = 90.0
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
#: IANA's amqps port, what a TLS listener uses inside a lab namespace.
AMQPS_PORT = 5671


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on ``host`` (the usual bind-to-0 trick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class RabbitNode:
    """One rabbitmq-server process with its own data directory.

    ``state_dir`` holds the node's mnesia, logs, config and Erlang cookie.
    """

    name: str
    state_dir: Path
    host: str = "127.0.0.1"
    amqp_port: int | None = None
    netns: str | None = None
    #: Erlang cookie; None: the node's own random one (hangproof.lab.components.cookie). Never shown.
    cookie: str | None = field(default=None, repr=False)
    epmd_port: int | None = None
    dist_port: int | None = None
    pid: int | None = None
    epmd_pid: int | None = None
    extra_config: dict[str, str] = field(default_factory=dict)
    #: Node names to join on first boot (classic config peer discovery); empty
    #: for a standalone node or the cluster's first node.
    peers: tuple[str, ...] = ()
    #: Also listen with TLS on ``tls_port`` (certificates made in prepare()).
    tls: bool = False
    tls_port: int | None = None

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        if self.netns:
            # Inside its own namespace the node owns the standard ports.
            self.amqp_port = self.amqp_port or 5672
            self.epmd_port = self.epmd_port or 4369
            self.dist_port = self.dist_port or 25672
            if self.tls:
                self.tls_port = self.tls_port or AMQPS_PORT
        else:
            self.amqp_port = self.amqp_port or free_port(self.host)
            self.epmd_port = self.epmd_port or free_port(self.host)
            self.dist_port = self.dist_port or free_port(self.host)
            if self.tls:
                self.tls_port = self.tls_port or free_port(self.host)

    # -- identity ---------------------------------------------------------
    @property
    def nodename(self) -> str:
        return f"rabbit@{self.host}"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.amqp_port}/"

    # -- TLS (tls=True) ----------------------------------------------------
    @property
    def tls_url(self) -> str:
        """The TLS listener's URL (``amqps://``); only when ``tls``."""
        if not self.tls:
            raise HangproofError(f"{self.nodename} has no TLS listener (RabbitNode(tls=True))")
        return f"amqps://guest:guest@{self.host}:{self.tls_port}/"

    @property
    def client_url(self) -> str:
        """What clients dial: the TLS listener when ``tls``, else the plain one."""
        return self.tls_url if self.tls else self.url

    @property
    def client_port(self) -> int:
        """The port clients dial (what link faults act on)."""
        port = self.tls_port if self.tls else self.amqp_port
        assert port is not None
        return port

    @property
    def tls_files(self) -> TlsFiles:
        """The node's CA and certificates (made on first use, in ``state_dir/tls``)."""
        return make_tls_files(self.state_dir / "tls", (self.host, "localhost"))

    @property
    def client_ssl(self) -> dict[str, object] | None:
        """``broker_use_ssl`` that verifies this node against the lab CA (None without TLS)."""
        return self.tls_files.client_options() if self.tls else None

    def _tls_config(self) -> dict[str, str]:
        if not self.tls:
            return {}
        files = self.tls_files
        return {
            "listeners.ssl.default": f"{self.host}:{self.tls_port}",
            "ssl_options.cacertfile": str(files.ca_certs),
            "ssl_options.certfile": str(files.server_cert),
            "ssl_options.keyfile": str(files.server_key),
            # Ask for a client certificate, accept clients without one (as most
            # hosted brokers do); one that is sent must be signed by the lab CA.
            "ssl_options.verify": "verify_peer",
            "ssl_options.fail_if_no_peer_cert": "false",
        }

    @property
    def home(self) -> Path:
        return self.state_dir / "home"

    def env(self) -> dict[str, str]:
        """The environment rabbitmq-server and rabbitmqctl need for this node."""
        d = self.state_dir
        env = {
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_USE_LONGNAME": "true",
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(d / "rabbit.pid"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_LOGS": str(d / "log" / "rabbit.log"),
            # Keep distribution on this node's own address.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                f"-kernel inet_dist_use_interface {{{self.host.replace('.', ',')}}}"
            ),
        }
        if not self.netns:
            env["ERL_EPMD_ADDRESS"] = self.host
        return env

    # -- lifecycle --------------------------------------------------------
    def prepare(self) -> None:
        """Write config, plugins file and the Erlang cookie (idempotent)."""
        d = self.state_dir
        for sub in ("home", "mnesia", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        config = {
            "loopback_users": "none",  # clients come through NodePort SNAT, not loopback
            "listeners.tcp.default": f"{self.host}:{self.amqp_port}",
            "log.console": "false",
            "log.file.level": "info",
            "disk_free_limit.absolute": "50MB",
            "vm_memory_high_watermark.relative": "0.4",
            **self._peer_discovery_config(),
            **self._tls_config(),
            **self.extra_config,
        }
        (d / "rabbitmq.conf").write_text("".join(f"{k} = {v}\n" for k, v in config.items()))
        (d / "advanced.config").write_text("[].\n")
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq-env.conf").write_text("")
        # Random, created 0400 with O_EXCL in a 0700 $HOME (rabbitmqctl reads it there).
        self.cookie = node_cookie(self.home / ".erlang.cookie", self.cookie)

    def _peer_discovery_config(self) -> dict[str, str]:
        # classic_config joins the first reachable peer on a blank node's first
        # boot; a node whose peers are all down boots standalone, so the lab
        # boots the first node alone and lists only it for the others.
        if not self.peers:
            return {}
        config = {"cluster_formation.peer_discovery_backend": "classic_config"}
        for i, peer in enumerate(self.peers, start=1):
            config[f"cluster_formation.classic_config.nodes.{i}"] = peer
        return config

    def cluster_status(self, timeout: float = 20.0) -> dict[str, list[str]]:
        """Members and running members of this node's cluster (via rabbitmqctl).

        >>> node.cluster_status()  # doctest: +SKIP
        {'members': ['rabbit@198.19.1.2', ...], 'running': ['rabbit@198.19.1.2', ...]}
        """
        data = json.loads(self.ctl("cluster_status", "--formatter", "json", timeout=timeout))
        return {
            "members": sorted(data.get("disk_nodes", []) + data.get("ram_nodes", [])),
            "running": sorted(data.get("running_nodes", [])),
        }

    def start(self, timeout: float = DEFAULT_START_TIMEOUT, *, wait: bool = True) -> None:
        """Start epmd and the broker (by pid); block until AMQP answers."""
        require_tools("epmd")
        if not (RABBITMQ_BIN / "rabbitmq-server").exists():
            require_tools("rabbitmq-server")
        self.prepare()
        env = self.env()
        # Start epmd ourselves, in the foreground, so that we own its pid:
        # erl would otherwise daemonize one we could only find by name.
        epmd = processes.spawn(
            ["epmd", "-port", str(self.epmd_port)],
            netns=self.netns,
            env=env,
            log=self.state_dir / "log" / "epmd.log",
        )
        self.epmd_pid = epmd.pid
        server = processes.spawn(
            [str(RABBITMQ_BIN / "rabbitmq-server")],
            netns=self.netns,
            env=env,
            log=self.state_dir / "log" / "stdout.log",
            cwd=self.state_dir,
        )
        self.pid = server.pid
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Poll until the node answers the AMQP header with Connection.Start."""
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.25) + 1):
            if self.pid is not None and not processes.pid_alive(self.pid):
                raise HangproofError(
                    f"rabbitmq-server {self.nodename} exited while starting; "
                    f"see {self.state_dir / 'log'}"
                )
            if self.answers_amqp(timeout=1.0) and (not self.tls or self.answers_tls(timeout=2.0)):
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.25)
        raise HangproofError(
            f"rabbitmq-server {self.nodename} did not answer AMQP within {timeout:.0f} s; "
            f"see {self.state_dir / 'log'}"
        )

    def answers_amqp(self, timeout: float = 1.0) -> bool:
        """True if the node sends Connection.Start (a method frame) for our header."""
        code = (
            "import socket,sys\n"
            f"s=socket.create_connection(({self.host!r},{self.amqp_port}),timeout={timeout})\n"
            f"s.sendall({AMQP_HEADER!r})\n"
            "b=s.recv(1)\n"
            "sys.exit(0 if b==b'\\x01' else 1)\n"
        )
        if not self.netns:
            with contextlib.suppress(OSError):
                with socket.create_connection((self.host, self.amqp_port), timeout=timeout) as s:
                    s.settimeout(timeout)
                    s.sendall(AMQP_HEADER)
                    return s.recv(1) == b"\x01"
            return False
        try:
            result = processes.run(
                [sys.executable, "-c", code], netns=self.netns, timeout=timeout + 5, check=False
            )
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    def answers_tls(self, timeout: float = 2.0) -> bool:
        """True if the TLS listener completes a verified handshake and sends Connection.Start."""
        if not self.tls:
            return False
        code = (
            "import socket,ssl,sys\n"
            f"c=ssl.create_default_context(cafile={str(self.tls_files.ca_certs)!r})\n"
            f"s=socket.create_connection(({self.host!r},{self.tls_port}),timeout={timeout})\n"
            f"t=c.wrap_socket(s,server_hostname={self.host!r})\n"
            f"t.sendall({AMQP_HEADER!r})\n"
            "sys.exit(0 if t.recv(1)==b'\\x01' else 1)\n"
        )
        try:
            result = processes.run(
                [sys.executable, "-c", code], netns=self.netns, timeout=timeout + 5, check=False
            )
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl`` against this node; returns stdout.

        >>> node.ctl("add_user", "bob", "secret")  # doctest: +SKIP
        """
        result = processes.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.nodename, "-q", *args],
            netns=self.netns,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise HangproofError(
                f"rabbitmqctl {' '.join(mask_argv(args))} on {self.nodename} failed: "
                f"{(result.stderr or result.stdout).strip().splitlines()[-1:] or ['?']}"
            )
        return result.stdout

    def beam_pid(self) -> int | None:
        """The Erlang VM's pid (for SIGSTOP faults), a descendant of ours."""
        if self.pid is None:
            return None
        return processes.descendant_named(self.pid, "beam.smp")

    def stop(self) -> None:
        """Stop broker and epmd by the pids we started. Idempotent."""
        for attr in ("pid", "epmd_pid"):
            pid = getattr(self, attr)
            if pid is not None:
                processes.stop_pid(pid)
                setattr(self, attr, None)

    def __enter__(self) -> RabbitNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
