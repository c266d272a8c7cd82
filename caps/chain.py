"""The signed block chain: primitives below the safe recipes in `caps/__init__.py`.

Block 0 is signed by the host key. Every block carries a fresh `next_key`; block i+1 is signed with the
private half of block i's `next_key`, over a message that also binds the block's index and the previous
block's signature. The token ends with a proof that its holder has the last `next_key`'s private half:

* attenuable form: the private seed itself, so the holder can append a block offline;
* sealed form: a signature with that key over the last block's signature, after which the seed is dropped.

Without the proof, anyone could cut the last blocks off a token and drop the restrictions they add.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

from nacl.bindings import crypto_sign, crypto_sign_open, crypto_sign_seed_keypair
from nacl.exceptions import CryptoError

from caps.encoding import Block, RawToken, SignedBlock, encode_block
from caps.keys import HostKey

DOMAIN_BLOCK = b"ifc-caps v1 block\n"
DOMAIN_SEAL = b"ifc-caps v1 seal\n"


def block_message(index: int, previous_signature: bytes, payload: bytes) -> bytes:
    """What block `index` is signed over (block 0 has no previous signature)."""
    return DOMAIN_BLOCK + bytes([index]) + previous_signature + payload


def seal_message(last_signature: bytes) -> bytes:
    return DOMAIN_SEAL + last_signature


def sign(seed: bytes, message: bytes) -> bytes:
    _, secret = crypto_sign_seed_keypair(seed)
    return crypto_sign(message, secret)[:64]


def signature_ok(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        crypto_sign_open(signature + message, public_key)
    except (CryptoError, ValueError, TypeError):
        return False
    return True


def public_key_of(seed: bytes) -> bytes:
    return crypto_sign_seed_keypair(seed)[0]


def revocation_id(signature: bytes) -> str:
    """A block's revocation id. The signature covers the whole chain before it, so revoking a block's id
    revokes every token that contains that block: the token it ends and everything derived from it."""
    return hashlib.blake2b(signature, digest_size=16, person=b"ifc-caps-revoke").hexdigest()


def _fresh_seed() -> bytes:
    return os.urandom(32)


def start_chain(host: HostKey, block: Block) -> RawToken:
    """Sign block 0 (whose `next_key` is replaced by a fresh one) and return the attenuable token."""
    seed = _fresh_seed()
    payload = encode_block(dataclasses.replace(block, next_key=public_key_of(seed)))
    signature = sign(host.seed, block_message(0, b"", payload))
    return RawToken((SignedBlock(payload, signature),), sealed=False, proof=seed)


def append_block(raw: RawToken, block: Block) -> RawToken:
    """Append `block` (signed with the token's proof seed). The caller checks the token is attenuable."""
    assert not raw.sealed, "append_block on a sealed token"
    seed = _fresh_seed()
    index = len(raw.blocks)
    payload = encode_block(dataclasses.replace(block, next_key=public_key_of(seed)))
    signature = sign(raw.proof, block_message(index, raw.blocks[-1].signature, payload))
    return RawToken((*raw.blocks, SignedBlock(payload, signature)), sealed=False, proof=seed)


def seal_chain(raw: RawToken) -> RawToken:
    assert not raw.sealed, "seal_chain on a sealed token"
    proof = sign(raw.proof, seal_message(raw.blocks[-1].signature))
    return RawToken(raw.blocks, sealed=True, proof=proof)


def proof_ok(raw: RawToken, last_next_key: bytes) -> bool:
    """Does the token's proof show possession of the last block's next key?"""
    if raw.sealed:
        return signature_ok(last_next_key, seal_message(raw.blocks[-1].signature), raw.proof)
    return public_key_of(raw.proof) == last_next_key
