"""Signed checkpoints: what makes cutting records off the end detectable.

A hash chain proves that nothing was changed *between* records, but anyone who
can write the file can cut its last records off and leave a shorter, perfectly
valid chain. Signatures close that hole, in two places:

1. **The signed head, ``head.json``, beside the ledger.** ``Ledger.checkpoint()``
   — the runner calls it after every run — signs :func:`statement` of
   (ledger id, seq, hash) of the *last record* and writes it, with the public
   key, to ``head.json`` (temporary file, fsync, rename): a
   :class:`SignedHead`. The verifier requires the ledger to still hold that
   record with that hash; if the ledger ends before it, records were cut off.
   Appending checks the same (cheaply) and fails closed. ``head.json`` is
   written *before* ``ledger.jsonl`` is first created and never removed, so a
   ledger without one has been tampered with: no crash leaves that state.
2. **``checkpoint`` records in the ledger itself**, at most every
   ``checkpoint_interval`` records (default 100) and at creation: the body is
   ``{"alg": "ed25519", "key": <public key hex>, "sig": <signature hex>}``,
   signing the statement for the record before it — exactly the record's own
   ``ledger_id``, ``seq - 1`` and ``prev``. They keep a copy of
   ``ledger.jsonl`` alone signed, and record which key signed when. They are
   spaced out because each costs the verifier an Ed25519 verification
   (about 0.1 ms, as much as a thousand plain records); the head covers the
   records since the last one.

An intact hash chain up to a valid signature authenticates every record before
it: rewriting history and recomputing every hash after it does not help
without the private key.

What remains outside any local defence, and how to close it: records written
after the signed head (a run in progress, or one that crashed; the verifier
counts them) can be cut unnoticed; and someone who can write *both* files and
holds the key (the same user, usually) can rewrite anything, or roll both back
together. For that, keep the head elsewhere — ``jhansi ledger head`` prints
it, ``jhansi ledger verify --anchor SEQ:HASH`` checks the ledger against it —
and pin the public key (``jhansi ledger key``; ``verify --key``).

The key is Ed25519 (``cryptography``, imported only when signing or checking a
signature), one per user, in ``<data dir>/keys/ledger-ed25519.pem``, created
on first use with mode 0600 at ``open()``.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import blake3

from jhansi.errors import LedgerError
from jhansi.ledger.blobs import fsync_dir
from jhansi.ledger.record import SCHEMA_VERSION, RecordError, canonical, load_canonical
from jhansi.paths import Paths

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

ALGORITHM: Final = "ed25519"
CHECKPOINT_DOMAIN: Final = b"jhansi.ledger.checkpoint.v1\x00"
"""Prefix of every signed statement, so that a signature can never be replayed as another kind.

A v1 statement (written before signatures named what they cover) vouches for
every record up to its seq; a v2 statement names the ranges it vouches for."""
CHECKPOINT_DOMAIN_V2: Final = b"jhansi.ledger.checkpoint.v2\x00"
MAC_DOMAIN: Final = b"jhansi.ledger.record-mac.v1\x00"
"""Prefix of what a record's ``ledger_mac`` authenticates."""
MAC_MEMBER: Final = "ledger_mac"
"""The body member in which jhansi authenticates each record it appends (see :func:`record_mac`)."""
_MAC_CONTEXT: Final = "jhansi 2025 ledger record mac v1"
_KID_CONTEXT: Final = "jhansi 2025 ledger key id v1"

Ranges = tuple[tuple[int, int], ...]
"""Inclusive seq ranges, sorted, disjoint and not adjacent: ``((0, 9), (16, 17))``."""
KEY_FILE: Final = "ledger-ed25519.pem"
_HEX_KEY = re.compile(r"[0-9a-f]{64}")
_HEX_SIG = re.compile(r"[0-9a-f]{128}")


def statement(
    ledger_id: str,
    seq: int,
    digest: str,
    ranges: Ranges | None = None,
    kid: str | None = None,
) -> bytes:
    """The bytes a checkpoint signs: record ``seq`` of ledger ``ledger_id`` has hash ``digest``,
    and the key holder wrote the records in ``ranges`` (v2; ``None``: the legacy v1 form).
    A head's statement also names the signing key's id ``kid``."""
    if ranges is None:
        return CHECKPOINT_DOMAIN + canonical({"hash": digest, "ledger_id": ledger_id, "seq": seq})
    signed: dict[str, Any] = {
        "hash": digest,
        "ledger_id": ledger_id,
        "ranges": [list(r) for r in ranges],
        "seq": seq,
    }
    if kid is not None:
        signed["kid"] = kid
    return CHECKPOINT_DOMAIN_V2 + canonical(signed)


def merge_ranges(ranges: Ranges, seqs: Iterable[int]) -> Ranges:
    """``ranges`` with ``seqs`` added, normalised (sorted, disjoint, adjacent ones joined)."""
    points = sorted([*ranges, *((s, s) for s in seqs)])
    merged: list[list[int]] = []
    for start, end in points:
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return tuple((a, b) for a, b in merged)


def parse_ranges(value: object, seq: int) -> Ranges | None:
    """``value`` as :data:`Ranges` within ``0..seq``; ``None`` unless normalised and in bounds."""
    if not isinstance(value, list) or not value:
        return None
    out: list[tuple[int, int]] = []
    for item in value:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and type(item[0]) is int
            and type(item[1]) is int
            and 0 <= item[0] <= item[1] <= seq
            and (not out or item[0] > out[-1][1] + 1)
        ):
            return None
        out.append((item[0], item[1]))
    return tuple(out)


def record_mac(mac_key: bytes, unhashed: bytes) -> str:
    """The ``ledger_mac`` of a record: keyed BLAKE3 of its canonical bytes without ``hash``
    and without ``ledger_mac`` (32 hex digits).

    Only a holder of the signing key can make one, and making one needs no
    ``cryptography`` (the key is derived from the Ed25519 seed): so every append
    is authenticated as it is written, and the next signature vouches for
    exactly the records that carry a valid one: never a forged tail.
    """
    return blake3.blake3(MAC_DOMAIN + unhashed, key=mac_key).hexdigest()[:32]


def derive_mac_key(seed: bytes) -> bytes:
    """The record-MAC key derived from an Ed25519 seed."""
    return blake3.blake3(seed, derive_key_context=_MAC_CONTEXT).digest()


def derive_key_id(seed: bytes) -> str:
    """A public identifier of a key, computed from its seed without ``cryptography``."""
    return blake3.blake3(seed, derive_key_context=_KID_CONTEXT).hexdigest()[:32]


def key_path(paths: Paths) -> Path:
    """Where this user's ledger signing key lives."""
    return paths.data / "keys" / KEY_FILE


class Signer(Protocol):
    """Signs checkpoint statements."""

    def prepare(self) -> None:
        """Make sure the key can be used (raise :class:`LedgerError` if not), cheaply.

        Called before a run starts, so that a run never starts that cannot be
        signed for; may leave the expensive part (loading ``cryptography``) to
        :meth:`warm_up` or to the first signature.
        """
        ...

    def warm_up(self) -> None:
        """Start getting ready to sign in the background (the caller is about to wait)."""
        ...

    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        ...

    def sign(self, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature of ``message``."""
        ...

    def has_key(self) -> bool:
        """Whether the key exists already (an existing ledger never gets a new one)."""
        ...

    def key_id(self) -> str:
        """:func:`derive_key_id` of the key (cheap: no ``cryptography``)."""
        ...

    def mac_key(self) -> bytes:
        """:func:`derive_mac_key` of the key (cheap: no ``cryptography``)."""
        ...


class KeyFileSigner:
    """An Ed25519 key in a PEM file (PKCS #8, mode 0600), created on first use.

    Importing ``cryptography`` costs ~15 ms, which a run need not wait for:
    :meth:`prepare` reads and checks the key file without it (a PKCS #8 Ed25519
    key is a fixed 16-byte header and the 32-byte seed, and every seed is a valid
    key), and :meth:`warm_up` loads it in a background thread while the sandbox
    runs. Any other encoding is loaded with ``cryptography`` right away.
    """

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self._create = create
        self._key: Ed25519PrivateKey | None = None
        self._seed: bytes | None = None
        self._lock = threading.Lock()
        self._starting = threading.Lock()
        self._loader: threading.Thread | None = None

    @classmethod
    def for_paths(cls, paths: Paths) -> KeyFileSigner:
        """The user's key in the data directory."""
        return cls(key_path(paths))

    def prepare(self) -> None:
        """Read and check the key file (creating it if needed), without ``cryptography``."""
        with self._lock:
            if self._key is not None or self._seed is not None:
                return
            seed = read_seed(self.path) if self.path.exists() else None
            if seed is not None:
                self._seed = seed
            else:
                self._key = load_or_create_key(self.path, create=self._create)

    def warm_up(self) -> None:
        """Load the key in a daemon thread, unless it is loaded (or loading) already."""
        with self._starting:  # not self._lock, which a load in progress holds
            if self._key is not None or self._loader is not None:
                return
            self._loader = threading.Thread(
                target=self._load_quietly, name="jhansi-ledger-key", daemon=True
            )
            self._loader.start()

    def _load_quietly(self) -> None:
        # Errors surface in the foreground: sign() loads again and raises there.
        with contextlib.suppress(Exception):
            self._load()

    def _load(self) -> Ed25519PrivateKey:
        with self._lock:
            if self._key is None:
                if self._seed is not None:
                    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
                        Ed25519PrivateKey,
                    )

                    self._key = Ed25519PrivateKey.from_private_bytes(self._seed)
                else:
                    self._key = load_or_create_key(self.path, create=self._create)
            return self._key

    def public_key(self) -> bytes:
        """The raw public key (loading or creating the key file)."""
        return self._load().public_key().public_bytes_raw()

    def has_key(self) -> bool:
        """Whether the key file exists (or the key is loaded already)."""
        return self._seed is not None or self._key is not None or self.path.exists()

    def _seed_bytes(self) -> bytes:
        self.prepare()
        if self._seed is None:
            self._seed = self._load().private_bytes_raw()
        return self._seed

    def key_id(self) -> str:
        """The key's public identifier, from its seed."""
        return derive_key_id(self._seed_bytes())

    def mac_key(self) -> bytes:
        """The key for record MACs, from the seed."""
        return derive_mac_key(self._seed_bytes())

    def sign(self, message: bytes) -> bytes:
        """Sign ``message``."""
        return self._load().sign(message)


#: RFC 8410: the DER of a PKCS #8 (v1) Ed25519 private key, up to its 32-byte seed.
_PKCS8_ED25519 = bytes.fromhex("302e020100300506032b657004220420")
_PEM_BEGIN = b"-----BEGIN PRIVATE KEY-----"
_PEM_END = b"-----END PRIVATE KEY-----"


def read_seed(path: Path) -> bytes | None:
    """The seed of the PKCS #8 Ed25519 key in the PEM file at ``path``, read without
    ``cryptography``; ``None`` for any other encoding (load it with ``cryptography``).

    The file's permissions are checked as :func:`load_or_create_key` does.
    """
    import binascii

    try:
        st = path.stat()
        _check_mode(path, st.st_mode)
        raw = path.read_bytes()
    except OSError as exc:
        raise LedgerError(
            f"cannot read the ledger signing key {path}: {exc.strerror or exc}",
            hint=f"Check the permissions of {path.parent}.",
        ) from None
    lines = raw.strip().splitlines()
    if len(lines) < 3 or lines[0].strip() != _PEM_BEGIN or lines[-1].strip() != _PEM_END:
        return None
    try:
        der = binascii.a2b_base64(b"".join(line.strip() for line in lines[1:-1]), strict_mode=True)
    except binascii.Error:
        return None
    if len(der) != len(_PKCS8_ED25519) + 32 or not der.startswith(_PKCS8_ED25519):
        return None
    return der[len(_PKCS8_ED25519) :]


def _check_mode(path: Path, mode: int) -> None:
    if mode & 0o077:
        raise LedgerError(
            f"the ledger signing key {path} is accessible by other users (mode {mode & 0o777:o})",
            hint=f"Run `chmod 600 {path}`; if others may have read it, move it aside "
            "and let jhansi create a new one.",
        )


def load_or_create_key(path: Path, *, create: bool = True) -> Ed25519PrivateKey:
    """Read the private key at ``path``; with ``create``, make one there if there is none."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        st = path.stat()
    except FileNotFoundError:
        if not create:
            raise LedgerError(
                f"no ledger signing key at {path}",
                hint="Run `jhansi ledger key` to create one.",
            ) from None
        return _create_key(path)
    except OSError as exc:
        raise LedgerError(
            f"cannot read the ledger signing key {path}: {exc.strerror or exc}",
            hint=f"Check the permissions of {path.parent}.",
        ) from None
    _check_mode(path, st.st_mode)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise LedgerError(
            f"cannot load the ledger signing key {path}: {exc}",
            hint=f"Restore {path} from a backup, or move it aside to create a new key "
            "(earlier checkpoints stay verifiable with `jhansi ledger verify --key OLDKEY`).",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LedgerError(
            f"{path} is not an Ed25519 private key",
            hint=f"Move {path} aside; jhansi creates a new key on first use.",
        )
    return key


def _create_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces: a key made at the same moment wins
        except FileExistsError:
            return load_or_create_key(path, create=False)
        fsync_dir(path.parent)
    except OSError as exc:
        raise LedgerError(
            f"cannot create the ledger signing key {path}: {exc.strerror or exc}",
            hint=f"Make {path.parent} writable, or point JHANSI_HOME at a writable directory.",
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return key


def read_public_key(path: Path) -> bytes | None:
    """The public key of the key file at ``path``, or ``None`` if there is none (never creates)."""
    if not path.exists():
        return None
    from cryptography.hazmat.primitives import serialization

    key = load_or_create_key(path, create=False)
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_pem(raw: bytes) -> str:
    """The SubjectPublicKeyInfo PEM of a raw Ed25519 public key (for openssl and friends)."""
    from cryptography.hazmat.primitives import serialization

    return (
        _public(raw)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def parse_public_keys(text: str) -> list[str]:
    """Public keys (hex) from ``text``: hex keys one per line, or PEM public keys."""
    keys: list[str] = []
    if "-----BEGIN" in text:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        for block in re.findall(r"-----BEGIN [^-]+-----.*?-----END [^-]+-----", text, re.S):
            try:
                key = serialization.load_pem_public_key(block.encode())
            except ValueError as exc:
                raise ValueError(f"not a PEM public key: {exc}") from None
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not an Ed25519 public key")
            raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            keys.append(raw.hex())
        return keys
    for word in text.split():
        word = word.strip().lower().removeprefix("ed25519:")
        if not _HEX_KEY.fullmatch(word):
            raise ValueError(f"{word[:70]!r} is not an Ed25519 public key in hex (64 digits)")
        keys.append(word)
    return keys


@lru_cache(maxsize=64)
def _public(raw: bytes) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(raw)


def verify_signature(public_key_hex: str, message: bytes, signature_hex: str) -> bool:
    """Whether ``signature_hex`` is a valid Ed25519 signature of ``message`` by that key."""
    from cryptography.exceptions import InvalidSignature

    if not _HEX_KEY.fullmatch(public_key_hex) or not _HEX_SIG.fullmatch(signature_hex):
        return False
    try:
        _public(bytes.fromhex(public_key_hex)).verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def checkpoint_body(
    signer: Signer, ledger_id: str, seq: int, prev: str, ranges: Ranges
) -> dict[str, Any]:
    """The body of the checkpoint record at ``seq``: a signature over record ``seq - 1``
    (``prev``) vouching for the records in ``ranges``."""
    return {
        "alg": ALGORITHM,
        "key": signer.public_key().hex(),
        "ranges": [list(r) for r in ranges],
        "sig": signer.sign(statement(ledger_id, seq - 1, prev, ranges)).hex(),
    }


_BODY_V1: Final = frozenset({"alg", "key", "sig"})
_BODY_V2: Final = frozenset({"alg", "key", "ranges", "sig"})


def checkpoint_ranges(seq: int, body: dict[str, Any]) -> Ranges:
    """What the (valid) checkpoint record at ``seq`` vouches for; a legacy (v1) one: all before."""
    if "ranges" in body:
        return parse_ranges(body["ranges"], seq - 1) or ()
    return ((0, seq - 1),)


def check_checkpoint(ledger_id: str, seq: int, prev: str, body: Any) -> tuple[str, str] | None:
    """``(problem kind, reason)`` if the checkpoint record at ``seq`` is invalid, else None.

    Kinds: ``bad-checkpoint`` (malformed) and ``bad-signature``.
    """
    if not isinstance(body, dict) or body.keys() not in (_BODY_V1, _BODY_V2):
        return "bad-checkpoint", "a checkpoint body has exactly alg, key, sig (and ranges)"
    if body["alg"] != ALGORITHM:
        return "bad-checkpoint", f"unknown signature algorithm {body['alg']!r}"
    if seq < 1:
        return "bad-checkpoint", "a checkpoint cannot be the first record"
    key, sig = body["key"], body["sig"]
    if not isinstance(key, str) or not _HEX_KEY.fullmatch(key):
        return "bad-checkpoint", "key is not an Ed25519 public key in hex"
    if not isinstance(sig, str) or not _HEX_SIG.fullmatch(sig):
        return "bad-checkpoint", "sig is not an Ed25519 signature in hex"
    ranges: Ranges | None = None
    if "ranges" in body:
        ranges = parse_ranges(body["ranges"], seq - 1)
        if ranges is None:
            return "bad-checkpoint", "ranges are not sorted, disjoint seq ranges before it"
    if not verify_signature(key, statement(ledger_id, seq - 1, prev, ranges), sig):
        return "bad-signature", f"the signature over seq {seq - 1} does not verify"
    return None


HEAD_KEYS: Final = frozenset({"alg", "hash", "key", "ledger_id", "seq", "sig", "v"})
"""The members of a legacy (v1) head."""
HEAD_KEYS_V2: Final = HEAD_KEYS | {"kid", "ranges"}


@dataclass(frozen=True, slots=True)
class SignedHead:
    """``head.json``: a signature that record ``seq`` of ``ledger_id`` has hash ``hash``, and
    that the key holder wrote the records in ``ranges`` (``None``: a legacy head, all of them).

    ``kid`` (:func:`derive_key_id`, signed with the rest) lets an appender tell
    cheaply, without ``cryptography``, whether its key is the one that signed.
    """

    ledger_id: str
    seq: int
    hash: str
    key: str
    sig: str
    ranges: Ranges | None = None
    kid: str | None = None

    @property
    def anchor(self) -> str:
        """``SEQ:HASH``, as ``jhansi ledger verify --anchor`` takes it."""
        return f"{self.seq}:{self.hash}"

    @property
    def covered(self) -> Ranges:
        """The records this head vouches for."""
        return self.ranges if self.ranges is not None else ((0, self.seq),)

    def as_dict(self) -> dict[str, Any]:
        """The JSON object ``head.json`` holds."""
        out: dict[str, Any] = {
            "alg": ALGORITHM,
            "hash": self.hash,
            "key": self.key,
            "ledger_id": self.ledger_id,
            "seq": self.seq,
            "sig": self.sig,
            "v": SCHEMA_VERSION,
        }
        if self.ranges is not None:
            out["ranges"] = [list(r) for r in self.ranges]
            out["kid"] = self.kid
        return out

    def to_bytes(self) -> bytes:
        """The canonical line written to ``head.json``."""
        return canonical(self.as_dict()) + b"\n"

    @classmethod
    def parse(cls, raw: bytes) -> SignedHead:
        """Read ``head.json``'s bytes; ``ValueError`` says what is wrong (signature unchecked)."""
        if not raw.endswith(b"\n") or raw.count(b"\n") != 1:
            raise ValueError("not exactly one line")
        try:
            obj = load_canonical(raw[:-1])
        except RecordError as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(obj, dict) or obj.keys() not in (HEAD_KEYS, HEAD_KEYS_V2):
            raise ValueError(
                "not a signed head (members alg, hash, key, kid, ledger_id, ranges, seq, sig, v)"
            )
        if obj["v"] != SCHEMA_VERSION or obj["alg"] != ALGORITHM:
            raise ValueError(f"unknown version {obj['v']!r} or algorithm {obj['alg']!r}")
        seq = obj["seq"]
        fields = (obj["ledger_id"], obj["hash"], obj["key"], obj["sig"])
        if type(seq) is not int or seq < 0 or not all(isinstance(f, str) for f in fields):
            raise ValueError("seq is not a non-negative integer, or a field is not a string")
        ranges: Ranges | None = None
        kid: str | None = None
        if "ranges" in obj:
            ranges = parse_ranges(obj["ranges"], seq)
            kid = obj["kid"]
            if ranges is None or not isinstance(kid, str):
                raise ValueError("ranges are not sorted, disjoint seq ranges, or kid is not text")
        return cls(
            ledger_id=fields[0],
            seq=seq,
            hash=fields[1],
            key=fields[2],
            sig=fields[3],
            ranges=ranges,
            kid=kid,
        )

    def problem(self) -> str | None:
        """Why the signature does not hold, or ``None`` when it does."""
        message = statement(self.ledger_id, self.seq, self.hash, self.ranges, self.kid)
        if not verify_signature(self.key, message, self.sig):
            return "the signature does not verify"
        return None


def sign_head(signer: Signer, ledger_id: str, seq: int, digest: str, ranges: Ranges) -> SignedHead:
    """Sign that record ``seq`` of ``ledger_id`` has hash ``digest`` and that the key holder
    wrote the records in ``ranges``."""
    kid = signer.key_id()
    return SignedHead(
        ledger_id=ledger_id,
        seq=seq,
        hash=digest,
        key=signer.public_key().hex(),
        sig=signer.sign(statement(ledger_id, seq, digest, ranges, kid)).hex(),
        ranges=ranges,
        kid=kid,
    )


def load_head(path: Path) -> SignedHead:
    """The signed head in ``path``, its signature checked; :class:`LedgerError` if it fails."""
    try:
        head = SignedHead.parse(path.read_bytes())
    except FileNotFoundError:
        raise LedgerError(
            f"the signed head {path} is missing",
            hint="Run `jhansi ledger verify`: records may have been cut off the ledger.",
        ) from None
    except (OSError, ValueError) as exc:
        raise LedgerError(
            f"the signed head {path} is unreadable or damaged: {exc}",
            hint="Run `jhansi ledger verify`.",
        ) from None
    problem = head.problem()
    if problem is not None:
        raise LedgerError(
            f"the signed head {path} does not verify: {problem}",
            hint="Run `jhansi ledger verify`.",
        )
    return head
