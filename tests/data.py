"""Where the tests' data lives: in the repository, so a fresh clone tests everything."""

from pathlib import Path

#: The TarSum reference vectors (copied from the project's shared vectors; see
#: their README for where each file comes from).
TARSUM_VECTORS = Path(__file__).resolve().parent / "vectors" / "tarsum"
