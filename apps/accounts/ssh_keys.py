"""SSH public keys kept in a user's profile and offered at launch.

A key is checked by parsing it (cryptography's `load_ssh_public_key`), so what is stored is a key OpenSSH accepts,
in one canonical line (`<type> <base64> [comment]`). Its fingerprint is the one `ssh-keygen -l` prints
(`SHA256:` + unpadded base64 of the SHA-256 of the key blob), so people can compare it with their own machine.
Keys are personal: only their owner sees and uses them. A deployment keeps a copy of the key it was launched
with, so deleting a key here changes no running server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_ssh_public_key
from django.db import IntegrityError, transaction

from apps.accounts.models import Membership, SshKey, User
from apps.core import audit
from apps.core.permissions import ServiceError

MAX_NAME = 100
MAX_KEY_CHARS = 16_384  # an 8192-bit RSA key is about 1,400 characters; anything far larger is not a public key
MIN_RSA_BITS = 2048
MAX_COMMENT = 200


def _invalid(field: str, message: str) -> ServiceError:
    return ServiceError({field: [message]})


def ssh_key_fingerprint(blob: bytes) -> str:
    """The SHA-256 fingerprint of a key blob, exactly as `ssh-keygen -l -E sha256` prints it."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def ssh_key_parse(text: str) -> tuple[str, str]:
    """(canonical one-line public key, fingerprint), or ServiceError on `public_key` saying what to fix."""
    text = (text or "").strip()
    if not text:
        raise _invalid("public_key", "Paste your public key (the contents of ~/.ssh/id_ed25519.pub or similar).")
    if len(text) > MAX_KEY_CHARS:
        raise _invalid("public_key", "This is too long for an SSH public key.")
    if "PRIVATE KEY" in text:
        # never echo it back: the person pasted a secret by mistake
        raise _invalid("public_key", "This is a private key. Paste the public one (the file ending in .pub) and "
                                     "keep the private key to yourself.")
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise _invalid("public_key", "Paste one key on one line: <type> <key> [comment].")
    parts = lines[0].split(None, 2)
    if len(parts) < 2:
        raise _invalid("public_key", "A public key reads <type> <key> [comment], e.g. ssh-ed25519 AAAA… you@host.")
    kind, body = parts[0], parts[1]
    comment = parts[2].strip()[:MAX_COMMENT] if len(parts) == 3 else ""
    try:
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("public_key", "The key part is not valid base64: copy the whole line again.") from None
    try:
        key = load_ssh_public_key(f"{kind} {body}".encode())
    except UnsupportedAlgorithm:
        raise _invalid("public_key", f"Keys of type {kind[:40]} are not supported: use ssh-ed25519, ecdsa-sha2-* or "
                                     "ssh-rsa.") from None
    except ValueError:
        raise _invalid("public_key", "This is not a valid SSH public key: copy the whole line of the .pub file "
                                     "again.") from None
    if isinstance(key, dsa.DSAPublicKey):
        raise _invalid("public_key", "DSA keys are no longer accepted by OpenSSH: use an ssh-ed25519 key.")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise _invalid("public_key", f"This RSA key has {key.key_size} bits; use at least {MIN_RSA_BITS} (or "
                                     "ssh-ed25519).")
    canonical = key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    canonical_blob = base64.b64decode(canonical.split()[1])
    if canonical_blob != blob:
        raise _invalid("public_key", "The key type does not match the key: copy the whole line again.")
    line = f"{canonical} {comment}" if comment else canonical
    return line, ssh_key_fingerprint(canonical_blob)


def _clean_name(name: str) -> str:
    name = " ".join((name or "").split())
    if not name:
        raise _invalid("name", "Give the key a name you will recognise at launch (e.g. laptop).")
    if len(name) > MAX_NAME:
        raise _invalid("name", f"A key name has at most {MAX_NAME} characters.")
    return name


def _audit(user: User, verb: str, key: SshKey) -> None:
    """Key changes are personal but matter to security admins: recorded in every organisation of the user."""
    org_ids = set(Membership.objects.all_tenants().filter(user=user).values_list("organization_id", flat=True))
    for org_id in sorted(org_ids):
        audit.record(actor=user, verb=verb, organization_id=org_id, object_type="sshkey", object_id=key.pk,
                     object_label=key.name, extra={"fingerprint": key.fingerprint})


def ssh_key_add(*, user: User, name: str, public_key: str) -> SshKey:
    """Add a public key to the user's profile. A name or a key the user already has is refused."""
    errors: dict[str, list[str]] = {}
    clean_name = line = fingerprint = ""
    try:
        clean_name = _clean_name(name)
    except ServiceError as exc:
        errors.update(exc.message_dict)
    try:
        line, fingerprint = ssh_key_parse(public_key)
    except ServiceError as exc:
        errors.update(exc.message_dict)
    if errors:
        raise ServiceError(errors)
    same_name = SshKey.objects.filter(user=user, name__iexact=clean_name).first()
    if same_name is not None:
        raise _invalid("name", f"You already have a key named {same_name.name}.")
    same_key = SshKey.objects.filter(user=user, fingerprint=fingerprint).first()
    if same_key is not None:
        raise _invalid("public_key", f"This key is already in your profile as {same_key.name}.")
    try:
        with transaction.atomic():
            key = SshKey.objects.create(user=user, name=clean_name, public_key=line, fingerprint=fingerprint)
            _audit(user, "ssh_key.add", key)
    except IntegrityError:  # the same key or name added at the same moment (a double submit)
        raise _invalid("public_key", "This key or name was just added: reload the page.") from None
    return key


def ssh_key_delete(*, user: User, key: SshKey) -> None:
    """Remove a key from the user's profile. Servers launched with it keep it (the deployment holds a copy)."""
    if key.user_id != user.pk:
        raise ServiceError("No such key in your profile.")
    with transaction.atomic():
        _audit(user, "ssh_key.delete", key)
        SshKey.objects.filter(pk=key.pk, user=user).delete()
