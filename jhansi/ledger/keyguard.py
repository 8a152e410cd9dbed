"""This user's signing key, as the appender uses it.

Every record jhansi appends is authenticated with it: a ``ledger_mac`` made with a
key derived from it (:func:`~jhansi.ledger.checkpoint.record_mac`), or, for a
checkpoint, its signature. So a signature vouches only for records jhansi wrote
(:meth:`KeyGuard.vouches`), never for records someone else appended. An existing
ledger never gets a new key (:meth:`KeyGuard.require`), and a ledger whose head
another key signed is refused (:meth:`KeyGuard.check_head`): a replaced key file is
refused, never adopted.
"""

from __future__ import annotations

import hmac
from typing import Any

from jhansi.errors import LedgerError
from jhansi.ledger.checkpoint import MAC_MEMBER, SignedHead, Signer, check_checkpoint, record_mac
from jhansi.ledger.layout import LedgerLayout
from jhansi.ledger.record import (
    CHECKPOINT,
    Digest,
    LedgerId,
    Record,
    canonical,
    make_record,
    utc_now,
)


class KeyGuard:
    """The signing key of one :class:`~jhansi.ledger.store.Ledger`, and what it checks with it.

    What the key gives (its id, public key, MAC key) is asked of ``signer`` once, when
    first needed (the public key loads ``cryptography``).
    """

    def __init__(self, signer: Signer, layout: LedgerLayout) -> None:
        self._signer = signer
        self._layout = layout
        self._kid: str | None = None
        self._mac_key: bytes | None = None
        self._public_hex: str | None = None

    def hint(self) -> str:
        """What to do when the key and the ledger do not go together."""
        where = getattr(self._signer, "path", "the signing key")
        return (
            f"Restore {where} from a backup; or start a new ledger: move {self._layout.directory} "
            "aside, or point --ledger / JHANSI_LEDGER elsewhere (its records stay checkable "
            "with `jhansi ledger verify --ledger DIR --key OLDKEY`)."
        )

    def require(self) -> None:
        """An existing ledger never gets a new key: a missing key file is restored, not made."""
        if self._signer.has_key():
            return
        if self._layout.head_file.exists() or self._layout.ledger_file.exists():
            where = getattr(self._signer, "path", "the signing key")
            directory = self._layout.directory
            raise LedgerError(
                f"the ledger signing key {where} is missing, but the ledger {directory} "
                "exists: appending with a new key would hide that",
                hint=self.hint(),
            )

    def check_head(self, head: SignedHead) -> None:
        """Refuse to append to a ledger whose head another key signed (a replaced key file)."""
        if head.kid is not None:
            if self._kid is None:
                self._kid = self._signer.key_id()
            same = hmac.compare_digest(head.kid, self._kid)
        else:
            # A legacy head without a key id: compare the public keys (loads cryptography).
            if self._public_hex is None:
                self._public_hex = self._signer.public_key().hex()
            same = head.key == self._public_hex
        if not same:
            raise LedgerError(
                f"the ledger {self._layout.directory} was signed by another key "
                f"({head.key[:16]}…) than this user's signing key: it was replaced, or "
                "this ledger is not yours",
                hint=self.hint(),
            )

    def _macs(self) -> bytes:
        if self._mac_key is None:
            self._mac_key = self._signer.mac_key()
        return self._mac_key

    def vouches(self, record: Record) -> bool:
        """Whether ``record`` was written by jhansi with this key (see
        :meth:`jhansi.ledger.store.Ledger.checkpoint`)."""
        body = dict(record.body)
        if record.kind == CHECKPOINT:
            if self._public_hex is None:
                self._public_hex = self._signer.public_key().hex()
            return body.get("key") == self._public_hex and (
                check_checkpoint(record.ledger_id, record.seq, record.prev, body) is None
            )
        mac = body.pop(MAC_MEMBER, None)
        if not isinstance(mac, str):
            return False
        unhashed = {
            "body": body,
            "kind": record.kind,
            "ledger_id": record.ledger_id,
            "prev": record.prev,
            "seq": record.seq,
            "time": record.time,
            "v": record.v,
        }
        return hmac.compare_digest(mac, record_mac(self._macs(), canonical(unhashed)))

    def make(
        self, ledger_id: LedgerId, seq: int, prev: Digest, kind: str, body: dict[str, Any]
    ) -> Record:
        """A record authenticated with this key (``ledger_mac``; a checkpoint is signed)."""
        time = utc_now()
        if kind != CHECKPOINT:
            unhashed = {
                "body": body,
                "kind": kind,
                "ledger_id": ledger_id,
                "prev": prev,
                "seq": seq,
                "time": time,
                "v": 1,
            }
            body = {**body, MAC_MEMBER: record_mac(self._macs(), canonical(unhashed))}
        return make_record(ledger_id=ledger_id, seq=seq, prev=prev, kind=kind, body=body, time=time)


__all__ = ["KeyGuard"]
