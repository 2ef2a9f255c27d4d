"""Secrets at rest (cloud credentials, webhook secrets): MultiFernet over SKYPORT_FERNET_KEYS.

The first key encrypts; every key decrypts, so rotation is: put a new key first, run the re-encryption command,
then drop the old key. Without SKYPORT_FERNET_KEYS (embedded demo) a key is derived from SECRET_KEY; the deploy
check warns about that.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class DecryptionError(Exception):
    pass


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...], secret_key: str) -> MultiFernet:
    if keys:
        return MultiFernet([Fernet(k.encode()) for k in keys])
    derived = base64.urlsafe_b64encode(hashlib.sha256(("skyport-fernet|" + secret_key).encode()).digest())
    return MultiFernet([Fernet(derived)])


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.SKYPORT_FERNET_KEYS), settings.SECRET_KEY)


def encrypt(plaintext: str) -> str:
    return fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise DecryptionError(
            "Stored secret cannot be decrypted with the configured SKYPORT_FERNET_KEYS: was a key removed too early?"
        ) from None


def rotate(token: str) -> str:
    """Re-encrypt with the first key (after a new key was put in front)."""
    return fernet().rotate(token.encode()).decode()


def fingerprint(plaintext: str) -> str:
    """A short, keyed fingerprint: tells two secrets apart without letting anyone test guesses offline."""
    key = ("skyport-fingerprint|" + settings.SECRET_KEY).encode()
    return hmac.new(key, plaintext.encode(), "sha256").hexdigest()[:16]
