"""The ad-hoc embedded code signature at the end of every cache file, and the UUID derived from it.

A signature is a big-endian SuperBlob (``CSMAGIC_EMBEDDED_SIGNATURE``) indexing three blobs: a
CodeDirectory (version 0x20400, flags ADHOC) holding one SHA-256 hash per page of the file up
to the signature and two "special slot" hashes before them (-1 Info.plist: none, so zero; -2 the
requirements blob), an empty requirements set and an empty CMS wrapper (ad-hoc: no certificate).
The kernel checks the page hashes as pages come in; dyld refuses a cache whose signature does
not cover everything before it. The cache UUID is a hash of the CodeDirectory (see
``docs/cache-format.md`` §6). Layout reserves :func:`signature_size` before any content
exists, so the size depends only on the covered length, page size and identifier.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..record import Record

CSMAGIC_EMBEDDED_SIGNATURE = 0xFADE0CC0
CSMAGIC_CODEDIRECTORY = 0xFADE0C02
CSMAGIC_REQUIREMENTS = 0xFADE0C01
CSMAGIC_BLOBWRAPPER = 0xFADE0B01
CSSLOT_CODEDIRECTORY = 0
CSSLOT_REQUIREMENTS = 2
CSSLOT_ALTERNATE_CODEDIRECTORIES = 0x1000
CSSLOT_SIGNATURESLOT = 0x10000
#: CodeDirectory version with the exec-segment fields (the newest field we write)
CS_SUPPORTSEXECSEG = 0x20400
CS_SUPPORTSCODELIMIT64 = 0x20300
CS_ADHOC = 0x2
CS_HASHTYPE_SHA1 = 1
CS_HASHTYPE_SHA256 = 2
CS_HASHTYPE_SHA256_TRUNCATED = 3
CS_HASHTYPE_SHA384 = 4

#: hash type -> (digest function, bytes kept)
_HASHES: dict[int, tuple[Callable[..., Any], int]] = {
    CS_HASHTYPE_SHA1: (hashlib.sha1, 20),
    CS_HASHTYPE_SHA256: (hashlib.sha256, 32),
    CS_HASHTYPE_SHA256_TRUNCATED: (hashlib.sha256, 20),
    CS_HASHTYPE_SHA384: (hashlib.sha384, 48),
}
_SHA256_SIZE = 32
#: special slots we write: -1 (Info.plist, absent) and -2 (requirements)
_SPECIAL_SLOTS = 2
#: pages hashed per thread-pool task: large enough that scheduling costs nothing
_CHUNK_BYTES = 8 << 20


@dataclass(frozen=True, slots=True)
class SuperBlobHeader(Record):
    """CS_SuperBlob header; followed by ``count`` BlobIndex entries"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct(">3I")
    magic: int = CSMAGIC_EMBEDDED_SIGNATURE
    length: int = 0  # of the whole superblob, index and blobs included
    count: int = 0  # BlobIndex entries


@dataclass(frozen=True, slots=True)
class BlobIndex(Record):
    """CS_BlobIndex"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct(">2I")
    type: int = 0  # CSSLOT_*
    offset: int = 0  # of the blob, from the start of the superblob


@dataclass(frozen=True, slots=True)
class CodeDirectory(Record):
    """CS_CodeDirectory up to the exec-segment fields (version 0x20400), 88 bytes"""

    STRUCT: ClassVar[struct.Struct] = struct.Struct(">9I4B4IQ3Q")
    magic: int = CSMAGIC_CODEDIRECTORY
    length: int = 0  # of the whole CodeDirectory blob, hashes included
    version: int = CS_SUPPORTSEXECSEG
    flags: int = CS_ADHOC
    hash_offset: int = 0  # of code slot 0; special slot -n is n hashes before it
    ident_offset: int = 0  # of the NUL-terminated identifier
    n_special_slots: int = 0
    n_code_slots: int = 0  # pages covered
    code_limit: int = 0  # bytes covered (32-bit form)
    hash_size: int = 0  # bytes per hash
    hash_type: int = 0  # CS_HASHTYPE_*
    platform: int = 0  # 0: not a platform binary
    page_size: int = 0  # log2 of the page size (0: one page covers everything)
    spare2: int = 0
    scatter_offset: int = 0  # 0x20100+: unused
    team_offset: int = 0  # 0x20200+: no team for ad-hoc
    spare3: int = 0  # 0x20300+
    code_limit64: int = 0  # 0x20300+: bytes covered when they do not fit in 32 bits
    exec_seg_base: int = 0  # 0x20400+: file offset of the executable segment (text region)
    exec_seg_limit: int = 0  # its size
    exec_seg_flags: int = 0


assert SuperBlobHeader.SIZE == 12
assert BlobIndex.SIZE == 8
assert CodeDirectory.SIZE == 88

#: an empty requirements set (no requirements): magic, length, count 0
EMPTY_REQUIREMENTS = struct.pack(">3I", CSMAGIC_REQUIREMENTS, 12, 0)
#: an empty CMS signature wrapper (ad-hoc signatures carry no certificate)
EMPTY_CMS_WRAPPER = struct.pack(">2I", CSMAGIC_BLOBWRAPPER, 8)
_BLOB_COUNT = 3
_CD_OFFSET = SuperBlobHeader.SIZE + _BLOB_COUNT * BlobIndex.SIZE


def _byte_view(buf: Any) -> memoryview:
    view = memoryview(buf)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _log2_page(page_size: int) -> int:
    if page_size < 1 or page_size & (page_size - 1):
        raise ValueError(f"code signing page size {page_size} is not a power of two")
    return page_size.bit_length() - 1


def _slots(code_limit: int, page_size: int) -> int:
    return -(-code_limit // page_size)


def _ident(identifier: str) -> bytes:
    raw = identifier.encode()
    if b"\0" in raw:
        raise ValueError("the signing identifier contains a NUL")
    return raw + b"\0"


def _cd_length(code_limit: int, page_size: int, identifier: str) -> int:
    return (
        CodeDirectory.SIZE
        + len(_ident(identifier))
        + (_SPECIAL_SLOTS + _slots(code_limit, page_size)) * _SHA256_SIZE
    )


def signature_size(code_limit: int, page_size: int, identifier: str) -> int:
    """Exact length of the superblob :func:`build_code_signature` makes for ``code_limit`` bytes."""
    _log2_page(page_size)
    return (
        _CD_OFFSET
        + _cd_length(code_limit, page_size, identifier)
        + len(EMPTY_REQUIREMENTS)
        + len(EMPTY_CMS_WRAPPER)
    )


def hash_pages(data: memoryview | bytes, page_size: int, hash_type: int = CS_HASHTYPE_SHA256) -> bytes:
    """The concatenated page hashes of ``data`` (the last page may be short).

    Pages are hashed on a thread pool in large chunks: hashlib releases the GIL while it
    hashes, so this scales with cores on multi-GB files.
    """
    fn, size = _HASHES[hash_type]
    view = _byte_view(data)
    total = len(view)
    pages_per_chunk = max(1, _CHUNK_BYTES // page_size)
    chunk = pages_per_chunk * page_size

    def work(start: int) -> bytes:
        stop = min(start + chunk, total)
        return b"".join(
            fn(view[o : min(o + page_size, stop)]).digest()[:size] for o in range(start, stop, page_size)
        )

    starts = range(0, total, chunk)
    if len(starts) <= 1:
        return work(0) if total else b""
    with ThreadPoolExecutor(max_workers=min(len(starts), os.cpu_count() or 1)) as pool:
        return b"".join(pool.map(work, starts))


def build_code_signature(
    data: memoryview | bytes,
    *,
    identifier: str,
    page_size: int,
    exec_seg_base: int,
    exec_seg_limit: int,
    page_hashes: bytes | None = None,
) -> bytes:
    """An ad-hoc SHA-256 embedded signature over ``data``: the whole file up to the signature.

    ``page_hashes``: ``hash_pages(data, page_size)`` when the caller has them already (the
    builder hashes a large file window by window); ``data`` is then only measured."""
    log2 = _log2_page(page_size)
    data = _byte_view(data)
    code_limit = len(data)
    ident = _ident(identifier)
    n_slots = _slots(code_limit, page_size)
    hash_offset = CodeDirectory.SIZE + len(ident) + _SPECIAL_SLOTS * _SHA256_SIZE
    cd_len = hash_offset + n_slots * _SHA256_SIZE
    fits32 = code_limit <= 0xFFFFFFFF
    cd = CodeDirectory(
        length=cd_len,
        version=CS_SUPPORTSEXECSEG,
        flags=CS_ADHOC,
        hash_offset=hash_offset,
        ident_offset=CodeDirectory.SIZE,
        n_special_slots=_SPECIAL_SLOTS,
        n_code_slots=n_slots,
        # readers that only know the 32-bit field see the largest value it can hold
        code_limit=code_limit if fits32 else 0xFFFFFFFF,
        hash_size=_SHA256_SIZE,
        hash_type=CS_HASHTYPE_SHA256,
        page_size=log2,
        code_limit64=0 if fits32 else code_limit,
        exec_seg_base=exec_seg_base,
        exec_seg_limit=exec_seg_limit,
    )
    # special slots sit just before code slot 0, most negative first: -2 then -1
    special = hashlib.sha256(EMPTY_REQUIREMENTS).digest() + bytes(_SHA256_SIZE)
    if page_hashes is None:
        page_hashes = hash_pages(data, page_size)
    elif len(page_hashes) != n_slots * _SHA256_SIZE:
        raise ValueError(f"{len(page_hashes)} bytes of page hashes for {n_slots} pages")
    cd_bytes = cd.pack() + ident + special + page_hashes
    assert len(cd_bytes) == cd_len
    reqs_offset = _CD_OFFSET + cd_len
    cms_offset = reqs_offset + len(EMPTY_REQUIREMENTS)
    total = cms_offset + len(EMPTY_CMS_WRAPPER)
    out = b"".join(
        (
            SuperBlobHeader(CSMAGIC_EMBEDDED_SIGNATURE, total, _BLOB_COUNT).pack(),
            BlobIndex(CSSLOT_CODEDIRECTORY, _CD_OFFSET).pack(),
            BlobIndex(CSSLOT_REQUIREMENTS, reqs_offset).pack(),
            BlobIndex(CSSLOT_SIGNATURESLOT, cms_offset).pack(),
            cd_bytes,
            EMPTY_REQUIREMENTS,
            EMPTY_CMS_WRAPPER,
        )
    )
    assert len(out) == total == signature_size(code_limit, page_size, identifier)
    return out


def _blobs(superblob: bytes | memoryview) -> dict[int, tuple[int, int]]:
    """slot type -> (offset, length) of every blob a superblob indexes; raises ValueError."""
    sb = bytes(superblob[: SuperBlobHeader.SIZE])
    if len(sb) < SuperBlobHeader.SIZE:
        raise ValueError("too short for a superblob header")
    head = SuperBlobHeader.unpack_from(sb)
    if head.magic != CSMAGIC_EMBEDDED_SIGNATURE:
        raise ValueError(f"superblob magic {head.magic:#010x} is not {CSMAGIC_EMBEDDED_SIGNATURE:#010x}")
    if head.length > len(superblob) or head.length < SuperBlobHeader.SIZE + head.count * BlobIndex.SIZE:
        raise ValueError(f"superblob length {head.length:#x} does not fit its {len(superblob):#x} bytes")
    out: dict[int, tuple[int, int]] = {}
    for k in range(head.count):
        idx = BlobIndex.unpack_from(superblob, SuperBlobHeader.SIZE + k * BlobIndex.SIZE)
        if idx.offset + 8 > head.length:
            raise ValueError(f"blob {k} (type {idx.type:#x}) at {idx.offset:#x} is outside the superblob")
        length = int.from_bytes(superblob[idx.offset + 4 : idx.offset + 8], "big")
        if length < 8 or idx.offset + length > head.length:
            raise ValueError(f"blob {k} (type {idx.type:#x}) length {length:#x} runs outside the superblob")
        out.setdefault(idx.type, (idx.offset, length))
    return out


def code_directory(superblob: bytes | memoryview) -> bytes:
    """The bytes of the primary CodeDirectory of a superblob; raises ValueError if malformed."""
    blobs = _blobs(superblob)
    if CSSLOT_CODEDIRECTORY not in blobs:
        raise ValueError("the signature has no CodeDirectory")
    off, length = blobs[CSSLOT_CODEDIRECTORY]
    cd = bytes(superblob[off : off + length])
    if int.from_bytes(cd[:4], "big") != CSMAGIC_CODEDIRECTORY or length < CodeDirectory.SIZE:
        raise ValueError("slot 0 does not hold a CodeDirectory")
    return cd


def uuid_from_code_directory(cd: bytes) -> bytes:
    """The cache UUID: SHA-256 of the CodeDirectory cut to 16 bytes, marked as a version-3 UUID."""
    u = bytearray(hashlib.sha256(cd).digest()[:16])
    u[6] = (u[6] & 0x0F) | 0x30
    u[8] = (u[8] & 0x3F) | 0x80
    return bytes(u)


def verify_code_signature(file_bytes: bytes | memoryview, offset: int, size: int) -> list[str]:
    """Problems with the signature at ``offset`` (``size`` bytes) of a file; empty if it is valid.

    Checks the superblob and CodeDirectory structure, that the signature covers exactly the
    bytes before it, the requirements special slot, and every page hash.
    """
    data = _byte_view(file_bytes)
    if offset < 0 or size < 0 or offset + size > len(data):
        return [f"signature {offset:#x}+{size:#x} is outside the file ({len(data):#x} bytes)"]
    sig = data[offset : offset + size]
    try:
        blobs = _blobs(sig)
        cd_raw = code_directory(sig)
    except ValueError as exc:
        return [f"signature at {offset:#x}: {exc}"]
    cd = CodeDirectory.unpack_from(cd_raw)
    problems: list[str] = []
    where = f"CodeDirectory at {offset + blobs[CSSLOT_CODEDIRECTORY][0]:#x}"
    if cd.hash_type not in _HASHES:
        return [f"{where}: unknown hash type {cd.hash_type}"]
    fn, hsize = _HASHES[cd.hash_type]
    if cd.hash_size != hsize:
        return [f"{where}: hash size {cd.hash_size} does not match hash type {cd.hash_type} ({hsize})"]
    if cd.ident_offset >= len(cd_raw) or b"\0" not in cd_raw[cd.ident_offset :]:
        problems.append(f"{where}: identifier offset {cd.ident_offset:#x} is outside it or unterminated")
    if cd.hash_offset < cd.n_special_slots * hsize or cd.hash_offset + cd.n_code_slots * hsize > len(cd_raw):
        return [
            *problems,
            f"{where}: hash slots ({cd.hash_offset:#x}, {cd.n_code_slots} pages) lie outside it",
        ]
    use64 = cd.version >= CS_SUPPORTSCODELIMIT64 and cd.code_limit64 != 0
    code_limit = cd.code_limit64 if use64 else cd.code_limit
    if code_limit != offset:
        problems.append(f"{where}: code limit {code_limit:#x} is not the signature offset {offset:#x}")
    if cd.page_size > 30:
        return [*problems, f"{where}: page size 2^{cd.page_size} is absurd"]
    page_size = 1 << cd.page_size if cd.page_size else max(code_limit, 1)
    expected_slots = _slots(code_limit, page_size)
    if cd.n_code_slots != expected_slots:
        problems.append(
            f"{where}: {cd.n_code_slots} code slots for {code_limit:#x} bytes ({expected_slots} pages)"
        )
    if cd.flags & CS_ADHOC == 0:
        problems.append(f"{where}: flags {cd.flags:#x} lack CS_ADHOC")
    if CSSLOT_REQUIREMENTS in blobs and cd.n_special_slots >= CSSLOT_REQUIREMENTS:
        roff, rlen = blobs[CSSLOT_REQUIREMENTS]
        stored = cd_raw[
            cd.hash_offset - CSSLOT_REQUIREMENTS * hsize : cd.hash_offset - (CSSLOT_REQUIREMENTS - 1) * hsize
        ]
        if fn(sig[roff : roff + rlen]).digest()[:hsize] != stored:
            problems.append(f"{where}: special slot -2 does not hold the hash of the requirements blob")
    n = min(cd.n_code_slots, expected_slots)
    covered = min(code_limit, n * page_size, len(data))
    computed = hash_pages(data[:covered], page_size, cd.hash_type)
    stored_all = cd_raw[cd.hash_offset : cd.hash_offset + n * hsize]
    mismatch = np.frombuffer(computed, np.uint8).reshape(n, hsize) != np.frombuffer(
        stored_all, np.uint8
    ).reshape(n, hsize)
    bad = np.flatnonzero(mismatch.any(axis=1)).tolist()
    shown = 20
    for i in bad[:shown]:
        problems.append(f"page {i} (file offset {i * page_size:#x}): hash does not match the CodeDirectory")
    if len(bad) > shown:
        problems.append(f"... and {len(bad) - shown} more pages whose hash does not match")
    return problems
