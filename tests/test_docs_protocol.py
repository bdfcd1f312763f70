"""docs/protocol.md's byte-level tables reproduce the spec's bytes, so documentation drift fails CI.

The tests read the two layout tables from the document (canonical tensor encoding; commitment signing
bytes), build the bytes of every conformance test vector *from the document alone*, and compare them
with the vectors and with the spec functions. A reordered row, a wrong width or a wrong domain string in
the document (or a layout change in the spec that the document does not follow) fails here.
"""

from __future__ import annotations

import ast
import json
import re
import struct
from pathlib import Path

from verisplit.conformance import vectors
from verisplit.spec import commitment, encoding

DOC = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")
WIDTHS = {"u8": "<B", "u16": "<H", "u32": "<I", "u64": "<Q"}


def table_after(marker: str) -> list[list[str]]:
    """Body rows (cells stripped) of the first Markdown table after the line containing ``marker``."""
    lines = DOC.splitlines()
    start = next(i for i, line in enumerate(lines) if marker in line)
    rows: list[list[str]] = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    assert len(rows) > 2, f"no table after {marker!r}"
    return rows[2:]  # drop the header and the |---| rule


def quoted_bytes(text: str) -> bytes:
    """The bytes of a documented string literal such as ``"verisplit/tensor/v1\\x00"``."""
    literal = re.search(r'"((?:[^"\\]|\\.)*)"', text)
    assert literal, text
    return ast.literal_eval('b"' + literal.group(1) + '"')


# ---- tensors ------------------------------------------------------------------------------------

def tensor_rows() -> list[list[str]]:
    return table_after("Every tensor on the wire is the spec's canonical encoding")


def encode_from_doc(dtype: str, shape: list[int], data: bytes) -> bytes:
    """Build a tensor encoding by following the documented table row by row."""
    rank = len(shape)
    out = bytearray()
    for offset_text, size_text, field, value in tensor_rows():
        offset = eval(re.sub(r"(\d)r", r"\1*r", offset_text), {"__builtins__": {}}, {"r": rank})  # noqa: S307
        assert offset == len(out), f"documented offset of {field}"
        if field == "magic":
            out += quoted_bytes(value)
        elif field == "version":
            out += struct.pack("<B", int(value.strip("`")))
        elif field == "dtype":
            codes = {name: int(code) for name, code in re.findall(r"([a-z0-9]+)=(\d+)", value)}
            out += struct.pack("<B", codes[dtype])
        elif field == "rank":
            low, high = (int(x) for x in value.split(".."))
            assert low <= rank <= high
            out += struct.pack("<B", rank)
        elif field == "reserved":
            out += struct.pack("<B", int(value))
        elif field == "dims":
            assert size_text == "8 x rank" and value.startswith("u64")
            out += b"".join(struct.pack("<Q", d) for d in shape)
        elif field == "nbytes":
            assert size_text == "8" and value.startswith("u64")
            out += struct.pack("<Q", len(data))
        elif field == "data":
            assert size_text == "nbytes"
            out += data
        else:
            raise AssertionError(f"undocumented field {field!r} in the tensor table")
    return bytes(out)


def test_tensor_table_matches_the_spec_constants() -> None:
    rows = {row[2]: row for row in tensor_rows()}
    assert [row[2] for row in tensor_rows()] == ["magic", "version", "dtype", "rank", "reserved", "dims", "nbytes", "data"]
    assert quoted_bytes(rows["magic"][3]) == encoding.MAGIC
    assert int(rows["version"][3].strip("`")) == encoding.ENCODING_VERSION
    assert {n: int(c) for n, c in re.findall(r"([a-z0-9]+)=(\d+)", rows["dtype"][3])} == encoding.DTYPE_CODES
    assert rows["rank"][3] == f"0..{encoding.MAX_RANK}"


def test_every_tensor_vector_is_reproduced_from_the_document() -> None:
    domain_line = next(line for line in DOC.splitlines() if line.startswith("Digest of a tensor"))
    domain = quoted_bytes(domain_line)
    assert domain == encoding.TENSOR_DOMAIN
    import hashlib

    cases = json.loads((vectors.VECTORS_DIR / "tensor_digest.json").read_text())["cases"]
    assert {c["dtype"] for c in cases} == set(encoding.DTYPE_CODES)
    assert {len(c["shape"]) for c in cases} >= {0, 1, 2}
    for case in cases:
        data = bytes.fromhex(case["data_hex"])
        blob = encode_from_doc(case["dtype"], case["shape"], data)
        assert blob.hex() == case["encoding_hex"], case["name"]
        assert blob == encoding.encode_tensor(case["dtype"], case["shape"], data), case["name"]
        assert hashlib.sha256(domain + blob).hexdigest() == case["digest_hex"], case["name"]


# ---- commitment signing bytes -------------------------------------------------------------------

def signing_rows() -> list[list[str]]:
    return table_after("Signing bytes (`spec/commitment.py: signing_bytes`)")


def signing_bytes_from_doc(c: dict[str, object]) -> bytes:
    """Build the signing bytes by following the documented table row by row."""
    out = bytearray()
    for field, encoding_text in signing_rows():
        if field == "domain":
            declared = int(re.search(r"the (\d+) bytes", encoding_text).group(1))  # type: ignore[union-attr]
            domain = quoted_bytes(encoding_text)
            assert len(domain) == declared, "documented domain length"
            out += domain
            continue
        value = c[field]
        kind = encoding_text.split()[0]
        if kind in WIDTHS:
            out += struct.pack(WIDTHS[kind], value)
        elif kind == "text":
            raw = str(value).encode("utf-8")
            out += struct.pack("<H", len(raw)) + raw
        elif encoding_text.startswith("32 bytes"):
            raw = bytes.fromhex(str(value))
            assert len(raw) == 32, field
            out += raw
        else:
            raise AssertionError(f"undocumented encoding {encoding_text!r} for {field}")
    return bytes(out)


def test_signing_table_lists_every_signed_field_once_in_order() -> None:
    fields = [row[0] for row in signing_rows()]
    signed = [name for name in commitment.BoundaryCommitment.__dataclass_fields__ if name != "signature"]
    assert fields == ["domain"] + signed
    domain_row = signing_rows()[0][1]
    assert quoted_bytes(domain_row) == commitment.COMMITMENT_DOMAIN


def test_every_commitment_vector_is_reproduced_from_the_document() -> None:
    cases = json.loads((vectors.VECTORS_DIR / "commitment_signature.json").read_text())["cases"]
    assert cases
    for case in cases:
        built = signing_bytes_from_doc(case["commitment"])
        assert built.hex() == case["signing_bytes_hex"], case["name"]
        assert built == commitment.signing_bytes(commitment.commitment_from_dict(case["commitment"])), case["name"]


def test_document_drift_is_detected() -> None:
    """The reproducer really depends on the document: swapping two rows changes the bytes."""
    case = json.loads((vectors.VECTORS_DIR / "commitment_signature.json").read_text())["cases"][0]
    global signing_rows
    original = signing_rows
    try:
        rows = original()
        swapped = rows[:1] + [rows[2], rows[1]] + rows[3:]
        signing_rows = lambda: swapped  # noqa: E731
        assert signing_bytes_from_doc(case["commitment"]).hex() != case["signing_bytes_hex"]
    finally:
        signing_rows = original
