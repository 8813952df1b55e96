"""Signed decisions on model versions: an in-toto Statement in a DSSE envelope, signed with Ed25519.

A decision (approve or reject) is the statement

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": "models:/NAME/VERSION", "digest": {"sha256": MODEL_DIGEST}}],
     "predicateType": PREDICATE_TYPE,
     "predicate": {"decision", "approver", "mode", "decided_at", "evidence": {"sha256"}, "storage_uri", "note"}}

where ``MODEL_DIGEST`` is :meth:`edgeloop.core.model_card.ModelCard.digest` (the card's canonical JSON,
which lists every file's sha256: the model file and the card are both covered) and the evidence digest
is the staging evaluation's (:meth:`EvaluationReport.digest`). It is signed over DSSE's pre-authentication
encoding with the approver's Ed25519 key. Which keys count is configuration
(:class:`edgeloop.core.config.ApprovalSettings`), never what an envelope says about itself: the envelope
names an approver, and only the key configured for that approver can have signed it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.core.errors import EdgeloopError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from edgeloop.core.config import Settings

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://edgeloop.dev/attestation/model-decision/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
MODES = ("human", "auto")
DECISIONS = ("approved", "rejected")
LOCAL_TRUST_FILE = "trusted-approvers.json"


class AttestationError(EdgeloopError):
    """An attestation is malformed, signed by an untrusted or wrong key, or says something else than
    the artifacts it is checked against; the message says which."""


@dataclass(frozen=True)
class Statement:
    model: str
    version: str
    model_digest: str
    decision: str  # approved | rejected
    approver: str  # the MLflow user the server authenticated
    mode: str  # human | auto
    decided_at: str
    evidence_digest: str
    storage_uri: str = ""
    note: str = ""

    @property
    def subject_name(self) -> str:
        return f"models:/{self.model}/{self.version}"

    def to_intoto(self) -> dict[str, Any]:
        return {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": self.subject_name, "digest": {"sha256": self.model_digest}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "decision": self.decision,
                "approver": self.approver,
                "mode": self.mode,
                "decided_at": self.decided_at,
                "evidence": {"sha256": self.evidence_digest},
                "storage_uri": self.storage_uri,
                "note": self.note,
            },
        }

    @classmethod
    def from_intoto(cls, doc: Mapping[str, Any]) -> Statement:
        try:
            if doc["_type"] != STATEMENT_TYPE or doc["predicateType"] != PREDICATE_TYPE:
                raise AttestationError(f"not an edgeloop decision statement ({doc.get('predicateType')!r})")
            (subject,) = doc["subject"]
            p = doc["predicate"]
            name = subject["name"].removeprefix("models:/")
            model, _, version = name.rpartition("/")
            st = cls(
                model=model,
                version=version,
                model_digest=subject["digest"]["sha256"],
                decision=p["decision"],
                approver=p["approver"],
                mode=p["mode"],
                decided_at=p["decided_at"],
                evidence_digest=p["evidence"]["sha256"],
                storage_uri=p.get("storage_uri", ""),
                note=p.get("note", ""),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise AttestationError(f"malformed decision statement: {type(e).__name__}: {e}") from e
        if st.decision not in DECISIONS or st.mode not in MODES or not model or not version:
            raise AttestationError(f"malformed decision statement: {st.decision!r}/{st.mode!r} for {name!r}")
        return st

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- DSSE -------------------------------------------------------------------------------------------------
def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is actually signed."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def keyid(public: Ed25519PublicKey) -> str:
    """sha256 of the raw public key, hex: names a key without trusting the name."""
    return hashlib.sha256(_raw(public)).hexdigest()


def _raw(public: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign(statement: Statement, key: Ed25519PrivateKey) -> dict[str, Any]:
    """The DSSE envelope of ``statement`` signed with ``key``."""
    payload = json.dumps(statement.to_intoto(), sort_keys=True, separators=(",", ":")).encode()
    sig = key.sign(pae(PAYLOAD_TYPE, payload))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": _b64(payload),
        "signatures": [{"keyid": keyid(key.public_key()), "sig": _b64(sig)}],
    }


def verify(envelope: Mapping[str, Any] | str, trusted: Mapping[str, Ed25519PublicKey]) -> Statement:
    """The statement in ``envelope`` if the key configured for its approver signed it; else
    :class:`AttestationError` (unknown approver, wrong key, bad signature, malformed)."""
    from cryptography.exceptions import InvalidSignature

    try:
        env = json.loads(envelope) if isinstance(envelope, str) else dict(envelope)
        if env.get("payloadType") != PAYLOAD_TYPE:
            raise AttestationError(f"payload type {env.get('payloadType')!r} is not {PAYLOAD_TYPE}")
        payload = base64.b64decode(env["payload"], validate=True)
        signatures = [(s["keyid"], base64.b64decode(s["sig"], validate=True)) for s in env["signatures"]]
        statement = Statement.from_intoto(json.loads(payload))
    except AttestationError:
        raise
    except (KeyError, TypeError, ValueError) as e:  # binascii.Error and JSONDecodeError are ValueErrors
        raise AttestationError(f"malformed attestation envelope: {type(e).__name__}: {e}") from e
    key = trusted.get(statement.approver)
    if key is None:
        raise AttestationError(
            f"signed as {statement.approver!r}, who is not a trusted approver "
            f"(trusted: {', '.join(sorted(trusted)) or 'nobody'}); add their public key to "
            "approvals.trusted_keys / approvals.trusted_keys_file"
        )
    for kid, sig in signatures:
        if kid != keyid(key):
            continue
        try:
            key.verify(sig, pae(PAYLOAD_TYPE, payload))
            return statement
        except InvalidSignature:
            break
    raise AttestationError(
        f"the signature is not by {statement.approver!r}'s trusted key ({keyid(key)[:16]}...): "
        "the statement was altered or signed with another key"
    )


# -- keys -------------------------------------------------------------------------------------------------
def generate_key(path: Path) -> Ed25519PrivateKey:
    """A new Ed25519 key written to ``path`` as unencrypted PKCS#8 PEM, mode 0600."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.replace(tmp, path)
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise AttestationError(f"cannot read the signing key {path}: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise AttestationError(f"{path} is not an Ed25519 private key")
    return key


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The base64 raw public key: what a trusted-keys entry holds."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return _b64(_raw(public))


def parse_public_key(text: str, owner: str) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        if text.strip().startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not an Ed25519 key")
            return key
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except ValueError as e:
        raise AttestationError(f"the trusted key of {owner!r} is not an Ed25519 public key: {e}") from e


def local_keys_dir(settings: Settings) -> Path:
    return settings.state_dir / "keys"


def trusted_keys(settings: Settings) -> dict[str, Ed25519PublicKey]:
    """Approver (MLflow user) -> public key, from the settings; the local stack's file when none are set."""
    entries: dict[str, str] = {}
    a = settings.approvals
    file = a.trusted_keys_file
    if file is None and not a.trusted_keys:
        file = local_keys_dir(settings) / LOCAL_TRUST_FILE
        if not file.exists():
            return {}
    if file is not None:
        try:
            entries |= json.loads(Path(file).read_text())
        except (OSError, ValueError) as e:
            raise AttestationError(f"cannot read the trusted approver keys {file}: {e}") from e
    entries |= a.trusted_keys
    return {owner: parse_public_key(text, owner) for owner, text in entries.items()}


def signing_key(settings: Settings, user: str) -> Ed25519PrivateKey:
    """The key ``user`` signs decisions with: ``approvals.signing_key``, else the local stack's key for them."""
    path = settings.approvals.signing_key or local_keys_dir(settings) / f"{user}.pem"
    if not Path(path).exists():
        raise AttestationError(
            f"no signing key for {user!r} ({path} does not exist): set EDGELOOP_APPROVALS__SIGNING_KEY "
            "to your Ed25519 private key (PEM), and have its public key added to the trusted approvers"
        )
    return load_private_key(Path(path))


def ensure_local_keys(settings: Settings, users: Iterable[str]) -> Path:
    """The local stack's signing keys (``<state_dir>/keys/<user>.pem``, 0600) and its trusted-keys file
    listing them; existing keys and entries are kept. Returns the trusted-keys file."""
    from edgeloop.core.config import private_dir

    directory = private_dir(local_keys_dir(settings))
    trust_file = directory / LOCAL_TRUST_FILE
    trust: dict[str, str] = json.loads(trust_file.read_text()) if trust_file.exists() else {}
    for user in users:
        path = directory / f"{user}.pem"
        key = load_private_key(path) if path.exists() else generate_key(path)
        trust[user] = public_key_text(key)
    tmp = trust_file.with_name(f".{trust_file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(trust, indent=2, sort_keys=True))
    os.replace(tmp, trust_file)
    return trust_file
