# -*- test-case-name: tests.test_letsencrypt -*-
"""
Certificates from an ACME CA (Let's Encrypt) for `http.tls.letsencrypt`.

The TLS listener starts at once with a temporary self-signed certificate;
the certificate from the cache file, or a newly issued one, replaces it for
new connections as soon as it is there. Issuance answers http-01 challenges
on a plain-HTTP address (port 80 by default) and runs in a thread, because
the ACME library (certbot's `acme`) is synchronous. A daily check renews the
certificate when it is within `renewbefore` of expiring.
"""

from __future__ import annotations

import datetime
import os
import threading

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web.resource import Resource

from regd.units import parse_duration

log = Logger()

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"


class ACMEConfigError(Exception):
    pass


@attrs.frozen
class ACMESettings:
    cachefile: str
    email: str
    hosts: tuple[str, ...]
    directoryurl: str = LETS_ENCRYPT
    directorycafile: str = ""  # trust this CA for the directory (test CAs such as pebble)
    httpaddr: str = ":80"
    renewbefore: float = 30 * 24 * 3600.0


def parse_settings(raw: dict) -> ACMESettings:
    where = "http.tls.letsencrypt"
    if not raw.get("cachefile"):
        raise ACMEConfigError(f"{where}.cachefile: required")
    hosts = raw.get("hosts") or []
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and h for h in hosts):
        raise ACMEConfigError(f"{where}.hosts: a list of host names is required")
    try:
        renew = parse_duration(raw.get("renewbefore", "720h"))
    except ValueError as e:
        raise ACMEConfigError(f"{where}.renewbefore: {e}") from None
    return ACMESettings(cachefile=str(raw["cachefile"]), email=str(raw.get("email", "")), hosts=tuple(hosts),
                        directoryurl=str(raw.get("directoryurl") or LETS_ENCRYPT),
                        directorycafile=str(raw.get("directorycafile", "")),
                        httpaddr=str(raw.get("httpaddr", ":80")), renewbefore=renew)


def self_signed(hosts) -> tuple[bytes, bytes]:
    """A short-lived placeholder so the listener can start before the first issuance."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
                   .sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def split_cache(data: bytes) -> tuple[bytes, bytes] | None:
    """(chain, key) from a cache file holding a PEM key followed by the PEM chain."""
    marker = b"-----END PRIVATE KEY-----"
    if marker not in data:
        return None
    key, _, chain = data.partition(marker)
    return chain.strip() + b"\n", key + marker + b"\n"


def expires_at(chain_pem: bytes) -> float:
    return x509.load_pem_x509_certificates(chain_pem)[0].not_valid_after_utc.timestamp()


def covers(chain_pem: bytes, hosts) -> bool:
    leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    try:
        names = set(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName))
    except x509.ExtensionNotFound:
        return False
    return set(hosts) <= names


def write_atomically(path: str, data: bytes, mode: int = 0o600) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


class ChallengeResource(Resource):
    """Serves /.well-known/acme-challenge/<token> for http-01 validation."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.answers: dict[str, str] = {}
        self._lock = threading.Lock()

    def publish(self, token: str, validation: str) -> None:
        with self._lock:
            self.answers[token] = validation

    def withdraw(self, token: str) -> None:
        with self._lock:
            self.answers.pop(token, None)

    def render_GET(self, request):
        prefix = b"/.well-known/acme-challenge/"
        token = request.path[len(prefix):].decode("ascii", "replace") if request.path.startswith(prefix) else ""
        with self._lock:
            answer = self.answers.get(token)
        if answer is None:
            request.setResponseCode(404)
            return b"not found"
        request.setHeader(b"Content-Type", b"text/plain")
        return answer.encode("ascii")


def issue(settings: ACMESettings, responder: ChallengeResource) -> tuple[bytes, bytes]:
    """Obtain a certificate (blocking; run it in a thread). Returns (chain PEM, key PEM)."""
    import josepy
    from acme import challenges, client, crypto_util, errors, messages

    account_path = settings.cachefile + ".account.json"
    if os.path.exists(account_path):
        with open(account_path, "rb") as f:
            account_key = josepy.JWKRSA.json_loads(f.read())
    else:
        account_key = josepy.JWKRSA(key=rsa.generate_private_key(65537, 2048))
        write_atomically(account_path, account_key.json_dumps().encode())
    network = client.ClientNetwork(account_key, user_agent="regd",
                                   verify_ssl=settings.directorycafile or True)
    directory = client.ClientV2.get_directory(settings.directoryurl, network)
    acme = client.ClientV2(directory, network)
    registration = messages.NewRegistration.from_data(email=settings.email or None, terms_of_service_agreed=True)
    try:
        acme.new_account(registration)
    except errors.ConflictError as existing:
        network.account = acme.query_registration(
            messages.RegistrationResource(uri=existing.location, body=messages.Registration()))
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = _key_pem(key)
    order = acme.new_order(crypto_util.make_csr(key_pem, list(settings.hosts)))
    tokens = []
    try:
        for authorization in order.authorizations:
            if authorization.body.status == messages.STATUS_VALID:
                continue
            challenge = next(c for c in authorization.body.challenges if isinstance(c.chall, challenges.HTTP01))
            response, validation = challenge.response_and_validation(account_key)
            token = challenge.chall.encode("token")
            responder.publish(token, validation)
            tokens.append(token)
            acme.answer_challenge(challenge, response)
        deadline = datetime.datetime.now() + datetime.timedelta(minutes=5)
        order = acme.poll_and_finalize(order, deadline)
    finally:
        for token in tokens:
            responder.withdraw(token)
    return order.fullchain_pem.encode(), key_pem


class CertificateManager(service.Service):
    """Keeps the TLS context on a valid ACME certificate: cached, issued, renewed."""

    check_interval = 12 * 3600.0

    def __init__(self, settings: ACMESettings, context, tls_config, clock, run_in_thread,
                 responder: ChallengeResource, issue=issue):
        self.settings = settings
        self.context = context
        self.tls_config = tls_config
        self.clock = clock
        self._run = run_in_thread
        self.responder = responder
        self._issue = issue
        self._loop = None
        self.current: bytes | None = None

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.check_interval, now=True).addErrback(
            lambda f: log.failure("ACME certificate loop stopped", f))

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def check(self):
        d = defer.ensureDeferred(self._check())
        d.addErrback(lambda f: log.failure("ACME certificate check failed; will try again", f))
        return d

    async def _check(self) -> None:
        from regd.daemon.tls import options_from_pem
        cached = self._read_cache()
        if cached is not None and self.current is None:
            self.context.use(options_from_pem(self.tls_config, *cached))
            self.current = cached[0]
        if cached is not None and expires_at(cached[0]) - self.clock.seconds() > self.settings.renewbefore:
            return
        log.info("requesting a certificate for {hosts} from {directory}", hosts=", ".join(self.settings.hosts),
                 directory=self.settings.directoryurl)
        chain, key = await self._run(self._issue, self.settings, self.responder)
        self.context.use(options_from_pem(self.tls_config, chain, key))
        await self._run(write_atomically, self.settings.cachefile, key + chain)
        self.current = chain
        log.info("certificate for {hosts} installed, valid until {until}", hosts=", ".join(self.settings.hosts),
                 until=datetime.datetime.fromtimestamp(expires_at(chain), datetime.timezone.utc).isoformat())

    def _read_cache(self) -> tuple[bytes, bytes] | None:
        try:
            with open(self.settings.cachefile, "rb") as f:
                parts = split_cache(f.read())
        except OSError:
            return None
        if parts is None or not covers(parts[0], self.settings.hosts):
            return None
        return parts
