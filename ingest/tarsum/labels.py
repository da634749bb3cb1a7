"""The TarSum label grammar: ``<version>+<hash>`` (spec §1), with upstream's error texts."""

from __future__ import annotations

from typing import Final

from ingest.errors import TarSumUnsupported

#: Every TarSum version name; ``tarsum.dev`` computes exactly what ``tarsum.v1`` does.
TARSUM_VERSIONS: Final[tuple[str, ...]] = ("tarsum", "tarsum.v1", "tarsum.dev")
#: Hash names a label may carry (upstream's label parser knows only these two).
TARSUM_HASHES: Final[tuple[str, ...]] = ("sha256", "sha512")


def go_quote(s: str) -> str:
    """Render ``s`` like Go's ``%q`` (strconv.Quote), for upstream's error texts."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append("\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(ch)])
        elif 0xDC80 <= o <= 0xDCFF:  # surrogateescape'd raw byte: Go shows \xNN
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif o < 0x80:
            out.append(f"\\x{o:02x}")
        elif o <= 0xFFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append('"')
    return "".join(out)


def unsupported(label: str, message: str) -> TarSumUnsupported:
    """The error for a label (or version/hash name) that no TarSum can be made for."""
    return TarSumUnsupported(message, {"reason": "tarsum-unsupported", "label": label})


def parse_label(label: str) -> tuple[str, str]:
    """Split ``"<version>+<hash>"`` into ``(version, hash)`` like ``NewTarSumForLabel``.

    Raises :class:`~ingest.errors.TarSumUnsupported` with upstream's error text for a
    label without ``+``, an unknown version or a hash other than sha256/sha512.
    Matching is exact: no trimming, no case folding, no ``:hex`` suffix allowed.
    """
    version, sep, hash_name = label.partition("+")
    if not sep:
        raise unsupported(
            label, "tarsum label string should be of the form: {tarsum_version}+{hash_name}"
        )
    if version not in TARSUM_VERSIONS:
        raise unsupported(label, f"unknown TarSum version name: {go_quote(version)}")
    if hash_name not in TARSUM_HASHES:
        raise unsupported(label, f"unknown TarSum hash name: {go_quote(hash_name)}")
    return version, hash_name


def version_label_for_checksum(checksum: str) -> str:
    """The text before the first ``+``, or ``""`` (upstream ``VersionLabelForChecksum``)."""
    version, sep, _ = checksum.partition("+")
    return version if sep else ""


def get_version_from_tarsum(tarsum: str) -> str:
    """The version name of a label or digest (upstream ``GetVersionFromTarsum``).

    Takes the text before the first ``+`` (or the whole string); raises
    :class:`~ingest.errors.TarSumUnsupported` if it is not a known version.
    """
    version = tarsum.partition("+")[0]
    if version not in TARSUM_VERSIONS:
        raise unsupported(tarsum, "string does not include a TarSum Version")
    return version
