"""Credentials for a secure Flower federation: a TLS CA and SuperLink certificate, and one
authentication key pair per SuperNode.

Generated with the ``cryptography`` package (a Flower dependency), so no ``openssl`` binary is
needed; ``docs/flower.md`` gives the equivalent ``openssl`` / ``ssh-keygen`` commands. The
certificates are for prototyping and loopback trials: in production use your organisation's CA.

Layout written by :func:`write_credentials` (all PEM / OpenSSH text):

- ``ca.crt``: the CA certificate that SuperNodes and the ``flwr`` CLI trust (``ca.key`` signs).
- ``server.pem`` / ``server.key``: the SuperLink's certificate for the given hosts (SANs).
- ``supernode-<i>`` / ``supernode-<i>.pub``: ECDSA P-384 key pairs in OpenSSH format, the
  format ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register`` read.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Credentials", "write_credentials", "write_node_key"]

DEFAULT_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Credentials:
    """Paths of the files :func:`write_credentials` wrote."""

    root: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    node_keys: tuple[Path, ...]

    def node_public_key(self, index: int) -> Path:
        return self.node_keys[index].with_name(self.node_keys[index].name + ".pub")


def write_credentials(out_dir: str | os.PathLike, *, num_nodes: int = 2, hosts: Sequence[str] = DEFAULT_HOSTS, days: int = 365) -> Credentials:
    """Write a CA, a SuperLink certificate for ``hosts`` and ``num_nodes`` SuperNode key pairs.

    Args:
        out_dir: folder to write into (created; existing files are overwritten).
        num_nodes: SuperNode authentication key pairs to create.
        hosts: names and IP addresses the SuperLink is reached at; each becomes a SAN.
        days: validity of the certificates.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedlora Flower CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server_cert = (
        _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]), ca_name, server_key.public_key(), days)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(root / "ca.key", _private_pem(ca_key), secret=True)
    _write(root / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(root / "server.key", _private_pem(server_key), secret=True)
    _write(root / "server.pem", server_cert.public_bytes(serialization.Encoding.PEM))
    keys = tuple(write_node_key(root / f"supernode-{i}") for i in range(num_nodes))
    return Credentials(root, root / "ca.crt", root / "server.pem", root / "server.key", keys)


def write_node_key(path: str | os.PathLike) -> Path:
    """An ECDSA P-384 key pair in OpenSSH format: ``path`` (private) and ``path.pub``."""
    path = Path(path)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(path, private, secret=True)
    _write(path.with_name(path.name + ".pub"), public + b"\n")
    return path


def _builder(subject: x509.Name, issuer: x509.Name, public_key, days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=not cert_sign, data_encipherment=False,
        key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _private_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    path.write_bytes(data)
    if secret:
        path.chmod(0o600)
