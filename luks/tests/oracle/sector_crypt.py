#!/usr/bin/env python3
"""Independent dm-crypt sector cipher for tests: pyca/cryptography (OpenSSL) AES.

usage: sector_crypt.py encrypt|decrypt xts-plain64|cbc-essiv:sha256 KEYHEX SECTOR_SIZE
       IV_FIRST IV_STEP < input > output

The input is a whole number of SECTOR_SIZE sectors; sector i uses IV IV_FIRST + i*IV_STEP
(dm-crypt counts IVs in 512-byte units, so IV_STEP is SECTOR_SIZE/512 for LUKS2).
"""
import hashlib
import struct
import sys

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def main():
    op, mode, keyhex, ss, first, step = sys.argv[1:7]
    key = bytes.fromhex(keyhex)
    ss, first, step = int(ss), int(first), int(step)
    data = sys.stdin.buffer.read()
    if len(data) % ss:
        sys.exit("input is not a whole number of sectors")
    out = bytearray()
    for i in range(len(data) // ss):
        sector = data[i * ss:(i + 1) * ss]
        iv = struct.pack("<Q", first + i * step) + bytes(8)
        if mode == "xts-plain64":
            c = Cipher(algorithms.AES(key), modes.XTS(iv))
        elif mode == "cbc-essiv:sha256":
            essiv = Cipher(algorithms.AES(hashlib.sha256(key).digest()), modes.ECB())
            e = essiv.encryptor()
            real_iv = e.update(iv) + e.finalize()
            c = Cipher(algorithms.AES(key), modes.CBC(real_iv))
        else:
            sys.exit("unknown mode " + mode)
        x = c.encryptor() if op == "encrypt" else c.decryptor()
        out += x.update(sector) + x.finalize()
    sys.stdout.buffer.write(bytes(out))


if __name__ == "__main__":
    main()
