"""Test certificates, made with ``cryptography``: a CA, a broker certificate for
127.0.0.1, a client certificate, and a second CA, which signed nothing the broker uses,
with a client certificate of its own.

Files (PEM) in the directory given to ``make_certs``: ``ca.crt``; ``broker.crt`` and
``broker.key`` (unencrypted PKCS#8, as ``local-kafka --security sasl_ssl --certs DIR``
reads them); ``client.crt`` and ``client.key`` (PKCS#8, encrypted with the key
password when one is given); ``other-ca.crt`` (a CA the broker's certificate is not
signed by) and ``other-client.crt``/``other-client.key`` (a client certificate of that
CA, its key unencrypted).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Certs:
    """Where ``make_certs`` wrote each file."""

    directory: Path
    key_password: str | None

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def other_ca(self) -> Path:
        return self.directory / "other-ca.crt"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.directory / "client.key"

    @property
    def other_client_cert(self) -> Path:
        return self.directory / "other-client.crt"

    @property
    def other_client_key(self) -> Path:
        return self.directory / "other-client.key"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    usages: list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName] | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey, password: str | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def make_certs(directory: Path, key_password: str | None = None) -> Certs:
    """Write the test's CA, broker, client and other-CA files into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("enforcer test CA")
    broker_key, broker_cert = _issue(
        ca_key,
        ca_cert,
        "localhost",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key, client_cert = _issue(
        ca_key, ca_cert, "enforcer-client", [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    other_ca_key, other_ca = _ca("a CA the broker does not use")
    other_key, other_client = _issue(
        other_ca_key, other_ca, "enforcer-client", [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    files = {
        "ca.crt": _pem(ca_cert),
        "broker.crt": _pem(broker_cert) + _pem(ca_cert),
        "broker.key": _key_pem(broker_key, None),
        "client.crt": _pem(client_cert),
        "client.key": _key_pem(client_key, key_password),
        "other-ca.crt": _pem(other_ca),
        "other-client.crt": _pem(other_client),
        "other-client.key": _key_pem(other_key, None),
    }
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        if name.endswith(".key"):
            path.chmod(0o600)
    return Certs(directory, key_password)
