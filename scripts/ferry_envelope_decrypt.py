#!/usr/bin/env python3
"""Independent decryptor for Ferry envelopes, written from docs/FORMAT.md alone.

Usage: FERRY_FILEPASS=... ferry_envelope_decrypt.py ENVELOPE OUTPUT

Uses only the Python `cryptography` package (Argon2id, HKDF-SHA-256, AES-256-GCM).
Exits non-zero, writing nothing, if any check fails.
"""
import hashlib
import hmac
import os
import struct
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEG = 65536
OVERHEAD = 28
HEADER_LEN = 1024


def hkdf(ikm, salt, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def fail(msg):
    sys.stderr.write("error: " + msg + "\n")
    sys.exit(1)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    passphrase = os.environ["FERRY_FILEPASS"].encode()
    data = open(src, "rb").read()
    h = data[:HEADER_LEN]
    if len(h) < HEADER_LEN or h[:8] != b"FERRYENV":
        fail("not an envelope")
    if hashlib.sha256(b"ferry/v1 header-check" + h[:96]).digest()[:16] != h[96:112]:
        fail("header check")
    version, suite = h[8], h[9]
    (seg_size,) = struct.unpack(">I", h[10:14])
    (hdr_len,) = struct.unpack(">H", h[14:16])
    if (version, suite, seg_size, hdr_len, h[16], h[18:20]) != (1, 1, SEG, HEADER_LEN, 4, b"\x00\xc0"):
        fail("unsupported layout")
    context = h[:64]
    file_id = h[20:36]
    (length,) = struct.unpack(">Q", h[36:44])
    commit = h[64:96]

    dek = None
    for i in range(4):
        slot = h[128 + 192 * i:128 + 192 * (i + 1)]
        if slot[0] != 1:  # only passphrase slots here
            continue
        if hashlib.sha256(b"ferry/v1 slot-check" + slot[:176]).digest()[:16] != slot[176:]:
            fail("slot %d check" % i)
        m, t, p = struct.unpack(">III", slot[8:20])
        if not (19456 <= m <= 1048576 and 2 <= t <= 10 and 1 <= p <= 16):
            fail("argon2 parameters out of bounds")
        salt, nonce, wrapped, tag = slot[20:36], slot[36:48], slot[48:80], slot[80:96]
        k = Argon2id(salt=salt, length=32, iterations=t, lanes=p, memory_cost=m).derive(passphrase)
        wrap_key = hkdf(k, file_id, b"ferry/v1 passphrase-wrap")
        aad = b"ferry/v1 slot" + context + slot[:20] + slot[96:176]
        try:
            dek = AESGCM(wrap_key).decrypt(nonce, wrapped + tag, aad)
            break
        except Exception:
            continue
    if dek is None:
        fail("wrong passphrase")
    if not hmac.compare_digest(hkdf(dek, file_id, b"ferry/v1 commit" + context), commit):
        fail("key commitment mismatch")

    n = max(1, -(-length // SEG))
    if len(data) != HEADER_LEN + n * OVERHEAD + length:
        fail("envelope length")
    out = bytearray()
    key = None
    group = None
    for i in range(n):
        g = i >> 20
        if g != group:
            key = AESGCM(hkdf(dek, file_id, b"ferry/v1 segment-key" + struct.pack(">Q", g) + context))
            group = g
        plen = SEG if i < n - 1 else length - (n - 1) * SEG
        off = HEADER_LEN + i * (SEG + OVERHEAD)
        seg = data[off:off + plen + OVERHEAD]
        aad = struct.pack(">Q", i) + bytes([1 if i == n - 1 else 0])
        try:
            out += key.decrypt(seg[:12], seg[12:], aad)
        except Exception:
            fail("segment %d failed authentication" % i)
    with open(dst, "wb") as f:
        f.write(out)


if __name__ == "__main__":
    main()
