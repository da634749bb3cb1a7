"""A pusher process for the GC stress test: pushes images over the OCI HTTP API for a
while, some reusing old blobs it finds present (HEAD, then no upload), and writes one
JSON line per accepted manifest (tag, digest, the blobs it references).

    python -m tests.integration.gc_pusher URL REPO SEED_FILE OUT_FILE SECONDS
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def upload(client: httpx.Client, repo: str, data: bytes) -> None:
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(data)}, content=data)
    if r.status_code != 201:
        raise RuntimeError(f"blob upload: {r.status_code} {r.text[:200]}")


def ensure(client: httpx.Client, repo: str, data: bytes, stats: dict[str, int]) -> None:
    """Like a client: HEAD first, upload only if the registry lacks the blob."""
    if client.head(f"/v2/{repo}/blobs/{sha256(data)}").status_code == 200:
        stats["reused"] += 1
        return
    upload(client, repo, data)


def main(url: str, repo: str, seed_file: str, out_file: str, seconds: float) -> int:
    with open(seed_file) as f:
        seeds = [bytes.fromhex(line.strip()) for line in f if line.strip()]
    rng = random.Random(os.getpid())
    stats = {"pushed": 0, "reused": 0, "refused": 0}
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=60) as client, open(out_file, "w") as out:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            config = json.dumps({"pusher": os.getpid(), "n": n}).encode()
            layers = [os.urandom(rng.randint(1, 64) << 10)]
            if seeds and rng.random() < 0.7:
                layers.append(rng.choice(seeds))  # an old blob, maybe garbage by now
            tag = f"t{n}"
            for _attempt in range(5):
                for data in (config, *layers):
                    ensure(client, repo, data, stats)
                manifest = {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": sha256(config),
                        "size": len(config),
                    },
                    "layers": [
                        {
                            "mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": sha256(d),
                            "size": len(d),
                        }
                        for d in layers
                    ],
                }
                body = json.dumps(manifest).encode()
                r = client.put(
                    f"/v2/{repo}/manifests/{tag}",
                    content=body,
                    headers={"Content-Type": OCI_MANIFEST},
                )
                if r.status_code == 201:
                    stats["pushed"] += 1
                    refs = [sha256(config), *(sha256(d) for d in layers)]
                    record = {"tag": tag, "digest": sha256(body), "blobs": refs}
                    out.write(json.dumps(record) + "\n")
                    out.flush()
                    break
                if r.status_code == 400 and "MANIFEST_BLOB_UNKNOWN" in r.text:
                    stats["refused"] += 1  # collected between our HEAD and PUT: again
                    continue
                raise RuntimeError(f"manifest put: {r.status_code} {r.text[:300]}")
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])))
