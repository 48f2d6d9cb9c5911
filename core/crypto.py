"""Encryption at rest for tool secrets, and hashing of one-time tokens."""

import hashlib
import secrets

from cryptography.fernet import Fernet


class SecretBox:
    def __init__(self, key: str) -> None:
        self._fernet = Fernet(key.encode())

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        return self._fernet.decrypt(token.encode()).decode()


def token_hash(token: str) -> str:
    """Tokens with 256 bits of entropy need no salt: a plain SHA-256 is enough to store."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)
