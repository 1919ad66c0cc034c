"""Throw-away TLS material for the lab: a CA, a server and a client certificate.

Generated at run time with Debian's ``openssl`` (nothing is committed), in a
directory of the node's state dir: private keys are created mode 0600 (umask
077 around the key writes, so they are never readable by others, not even for
an instant), certificates 0644. The CA's key stays in the same directory and is
used only to sign these certificates; the whole directory is deleted with the
node's state.

The server certificate names the broker's address (``IP:`` SAN) and
``localhost``; the client certificate (``CN=hangproof-client``) is for
brokers that ask for one (``ssl_options.verify = verify_peer``).

    >>> files = make_tls_files(Path("/tmp/hp-tls"), hosts=("127.0.0.1",))  # doctest: +SKIP
    >>> files.ca_certs.name, files.server_cert.name  # doctest: +SKIP
    ('ca.pem', 'server.pem')
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hangproof.errors import HangproofError, require_tools

#: Days a lab certificate is valid: lab runs last minutes, a test session hours.
DAYS = 2
#: P-256 keys: generated in milliseconds (RSA-2048 takes ~0.1-1 s each on 2 cores).
KEY_ALGORITHM = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
OPENSSL_TIMEOUT = 30.0


@dataclass(frozen=True)
class TlsFiles:
    """Paths of one lab CA and the certificates it signed."""

    directory: Path
    ca_certs: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_options(self, *, with_client_cert: bool = False) -> dict[str, object]:
        """``broker_use_ssl`` / kombu ``ssl`` options that trust this CA.

        >>> files = TlsFiles(*(Path(p) for p in "d ca cak sc sk cc ck".split()))
        >>> sorted(files.client_options())
        ['ca_certs', 'cert_reqs']
        """
        import ssl

        options: dict[str, object] = {
            "ca_certs": str(self.ca_certs),
            "cert_reqs": ssl.CERT_REQUIRED,
        }
        if with_client_cert:
            options["certfile"] = str(self.client_cert)
            options["keyfile"] = str(self.client_key)
        return options


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=OPENSSL_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["?"]
        raise HangproofError(f"openssl {args[0]} failed: {last[0]}")


def _san(hosts: tuple[str, ...]) -> str:
    names = []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
            names.append(f"IP:{host}")
        except ValueError:
            names.append(f"DNS:{host}")
    return ",".join(names)


def make_tls_files(
    directory: Path,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    *,
    ca_name: str = "hangproof lab CA",
) -> TlsFiles:
    """Create (or re-use, if complete) a CA plus server and client certificates in ``directory``.

    ``hosts`` go into the server certificate's subjectAltName; the first is
    also its CN.
    """
    require_tools("openssl")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    files = TlsFiles(
        d, d / "ca.pem", d / "ca.key", d / "server.pem", d / "server.key",
        d / "client.pem", d / "client.key",
    )  # fmt: skip
    if all(p.exists() for p in (files.ca_certs, files.server_cert, files.client_cert)):
        return files
    old_umask = os.umask(0o077)  # keys are born 0600
    try:
        _openssl(
            "req", "-x509", *KEY_ALGORITHM, "-nodes", "-days", str(DAYS),
            "-subj", f"/CN={ca_name}", "-keyout", files.ca_key.name, "-out", files.ca_certs.name,
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=d,
        )  # fmt: skip
        for stem, cn, extensions in (
            ("server", hosts[0], [f"subjectAltName={_san(hosts)}", "extendedKeyUsage=serverAuth"]),
            ("client", "hangproof-client", ["extendedKeyUsage=clientAuth"]),
        ):
            ext_file = d / f"{stem}.ext"
            ext_file.write_text("\n".join(["basicConstraints=CA:FALSE", *extensions]) + "\n")
            _openssl(
                "req", *KEY_ALGORITHM, "-nodes", "-subj", f"/CN={cn}",
                "-keyout", f"{stem}.key", "-out", f"{stem}.csr", cwd=d,
            )  # fmt: skip
            _openssl(
                "x509", "-req", "-in", f"{stem}.csr", "-CA", files.ca_certs.name,
                "-CAkey", files.ca_key.name, "-CAcreateserial", "-days", str(DAYS),
                "-extfile", ext_file.name, "-out", f"{stem}.pem", cwd=d,
            )  # fmt: skip
            (d / f"{stem}.csr").unlink(missing_ok=True)
    finally:
        os.umask(old_umask)
    for key in (files.ca_key, files.server_key, files.client_key):
        key.chmod(0o600)
    for cert in (files.ca_certs, files.server_cert, files.client_cert):
        cert.chmod(0o644)  # public; the broker may drop privileges to read them
    return files
