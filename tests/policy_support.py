"""Test peers of the policy: an HTTPS JWKS server with its own CA, an OPA data API.

Everything is real: certificates and keys are generated with `cryptography`, the JWKS is
served over TLS that the server under test verifies against the generated CA, and the OPA
stand-in evaluates a real Rego policy with regopy (the Rego interpreter as a library)
behind OPA's REST data API shape (`POST /v1/data/<path>` -> `{"result": ...}`).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

ISSUER = "https://idp.test"
AUDIENCE = "inferflux-tests"


@contextmanager
def serving_in_thread(server: ThreadingHTTPServer) -> Iterator[None]:
    """Serve on a background thread for the duration of the block, then stop cleanly."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def wait_for(condition, timeout_s: float = 10) -> bool:  # noqa: ANN001
    """Poll `condition` until it holds (True) or `timeout_s` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@dataclass
class TLSFiles:
    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str


def make_tls(directory: Path, extra_sans: Sequence[str] = ()) -> TLSFiles:
    """A CA, a server certificate for 127.0.0.1/localhost (and `extra_sans`: IP addresses
    or DNS names, e.g. a network namespace's address) and a client certificate, both
    signed by the CA."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "inferflux test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key, cert = _leaf(
        ca_key, ca_name, "localhost", x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, extra_sans
    )
    client_key, client = _leaf(
        ca_key, ca_name, "inferflux test client", x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
    )
    files = TLSFiles(
        *(str(directory / name) for name in ("ca.pem", "cert.pem", "key.pem")),
        *(str(directory / name) for name in ("client.pem", "client-key.pem")),
    )
    Path(files.ca).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for path, written in ((files.cert, cert), (files.client_cert, client)):
        Path(path).write_bytes(written.public_bytes(serialization.Encoding.PEM))
    for path, private in ((files.key, key), (files.client_key, client_key)):
        Path(path).write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return files


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    name: str,
    usage: x509.ObjectIdentifier,
    extra_sans: Sequence[str] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and a certificate for 127.0.0.1/localhost (+ `extra_sans`), signed by the CA,
    for `usage` (server or client authentication)."""
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    for extra in extra_sans:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(extra)))
        except ValueError:
            sans.append(x509.DNSName(extra))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(sans),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


@dataclass
class SigningKey:
    kid: str
    private: Any
    alg: str

    def public_jwk(self) -> dict[str, Any]:
        algorithm = (
            jwt.algorithms.RSAAlgorithm if self.alg == "RS256" else jwt.algorithms.ECAlgorithm
        )
        jwk = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, ec.generate_private_key(ec.SECP256R1()), "ES256")


def token(
    key: SigningKey,
    *,
    sub: str = "alice",
    roles: list[str] | None = None,
    iss: str = ISSUER,
    aud: str = AUDIENCE,
    expires_in: float = 300,
    kid: str | None = None,
    **claims: Any,
) -> str:
    now = time.time()
    payload = {"iss": iss, "aud": aud, "sub": sub, "iat": int(now), "exp": int(now + expires_in)}
    payload.update(claims)
    if roles is not None:
        payload["roles"] = roles
    return jwt.encode(payload, key.private, algorithm=key.alg, headers={"kid": kid or key.kid})


@dataclass
class JWKSServer:
    """Serves {"keys": [...]} at /jwks.json over HTTPS; `keys` may change while it runs."""

    tls: TLSFiles
    keys: list[SigningKey] = field(default_factory=list)
    fetches: int = 0
    port: int = 0
    status: int = 200
    """Another status plays an identity provider that is down."""
    document: Any = None
    """Served instead of the keys when set (a broken JWKS)."""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/jwks.json"

    @contextmanager
    def running(self) -> Iterator[JWKSServer]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                outer.fetches += 1
                if outer.status != 200:
                    self.send_error(outer.status)
                    return
                document = outer.document
                if document is None:
                    document = {"keys": [k.public_jwk() for k in outer.keys]}
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tls.cert, self.tls.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        with serving_in_thread(server):
            yield self


# Deny max_tokens 13, and prompts of principals named "oidc:mallory"; allow the rest.
REGO_POLICY = """
package inferflux

default allow := true

allow := false if { input.max_tokens == 13 }
allow := false if { input.principal == "oidc:mallory" }
"""


@dataclass
class OPAServer:
    """OPA's data API over a real Rego policy (regopy). `delay_s` makes it slow."""

    policy: str = REGO_POLICY
    delay_s: float = 0.0
    inputs: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/data/inferflux/allow"

    def evaluate(self, path: str, data_input: Any) -> Any:
        from regopy import Interpreter

        rego = Interpreter()
        rego.add_module("policy", self.policy)
        rego.set_input(data_input)
        rule = path.removeprefix("/v1/data/").replace("/", ".")
        answer = json.loads(str(rego.query(f"x = data.{rule}")))
        return answer.get("bindings", {}).get("x")

    @contextmanager
    def running(self) -> Iterator[OPAServer]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                outer.inputs.append(body.get("input"))
                time.sleep(outer.delay_s)
                result = outer.evaluate(self.path, body.get("input"))
                answer = json.dumps({} if result is None else {"result": result}).encode()
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass  # the client gave up (timeout tests)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        with serving_in_thread(server):
            yield self
