"""Images that are small on the wire and huge when decoded (decompression bombs), made honestly:
real, valid PNG files, built without ever holding the decoded pixels."""
from __future__ import annotations

import struct
import zlib

_BLOCK_BYTES = 1 << 22  # raw bytes compressed at a time


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _deflated_zeros(size: int) -> bytes:
    """Raw deflate data of `size` zero bytes ending on a full flush: the compressor's history is
    reset there, so copies of it concatenate into one valid stream."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(bytes(size)) + compressor.flush(zlib.Z_FULL_FLUSH)


def zero_png(width: int, height: int) -> bytes:
    """A valid 8-bit greyscale PNG of `width` x `height` black pixels. 20000x20000 is about
    390 KiB and decodes to 400 MB (1.2 GB as RGB). Each row is a filter byte 0 and zeros, so the
    image data is all zeros: one compressed block is repeated rather than compressing 400 MB."""
    row = width + 1
    rows_per_block = max(1, _BLOCK_BYTES // row)
    blocks, rest = divmod(height, rows_per_block)
    deflate = _deflated_zeros(rows_per_block * row) * blocks + (_deflated_zeros(rest * row) if rest else b"")
    deflate += b"\x03\x00"  # the final block: empty, fixed Huffman codes
    total = height * row
    adler32 = ((total % 65521) << 16) | 1  # of `total` zero bytes: A stays 1, B = total mod 65521
    idat = b"\x78\xda" + deflate + struct.pack(">I", adler32)  # zlib header for level 9
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
