"""S3 client libraries on the driver's two kinds of traffic, against a local S3 server.

    .venv/bin/python bench/bench_s3_clients.py [--rounds 5] [--large-mib 64]
        [--endpoint http://127.0.0.1:9000 --bucket NAME]  # else a moto_server of its own

For each client (boto3, obstore if installed, aiobotocore if installed) and each
object size (64 KiB: links, manifests, small layers; 64 MiB: a layer), PUT then GET
the object ``--rounds`` times and report wall-clock throughput and the CPU time of
this process per MiB moved (user + system, ``time.process_time``), the median of
the rounds. Clients alternate who goes first every round. GETs read the body in
1 MiB pieces, as the driver's reader does. Only this process's CPU is counted: the
server's is the same for every client.

Against moto the server is the bottleneck for large objects (it is Python too), so
the CPU column says more about the client than the throughput column does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.s3server import ACCESS_KEY, SECRET_KEY, MotoServer

Op = Callable[[str, bytes | None], bytes | None]


def boto3_client(endpoint: str, bucket: str) -> Op:
    import boto3
    from botocore.config import Config

    c = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}),
    )

    def op(key: str, data: bytes | None) -> bytes | None:
        if data is not None:
            c.put_object(Bucket=bucket, Key=key, Body=data)
            return None
        body = c.get_object(Bucket=bucket, Key=key)["Body"]
        out = bytearray()
        while chunk := body.read(1 << 20):
            out += chunk
        return bytes(out)

    return op


def obstore_client(endpoint: str, bucket: str) -> Op | None:
    try:
        import obstore
        from obstore.store import S3Store
    except ImportError:
        return None
    store = S3Store(
        bucket,
        endpoint=endpoint,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        region="us-east-1",
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )

    def op(key: str, data: bytes | None) -> bytes | None:
        if data is not None:
            obstore.put(store, key, data)
            return None
        out = bytearray()
        for chunk in obstore.get(store, key).stream(min_chunk_size=1 << 20):
            out += chunk
        return bytes(out)

    return op


def aiobotocore_client(endpoint: str, bucket: str) -> Op | None:
    try:
        from aiobotocore.session import get_session
    except ImportError:
        return None
    loop = asyncio.new_event_loop()
    ctx = get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
    client = loop.run_until_complete(ctx.__aenter__())

    async def run(key: str, data: bytes | None) -> bytes | None:
        if data is not None:
            await client.put_object(Bucket=bucket, Key=key, Body=data)
            return None
        r = await client.get_object(Bucket=bucket, Key=key)
        out = bytearray()
        async with r["Body"] as body:
            while chunk := await body.read(1 << 20):
                out += chunk
        return bytes(out)

    return lambda key, data: loop.run_until_complete(run(key, data))


def measure(op: Op, key: str, data: bytes) -> dict[str, tuple[float, float]]:
    """(MiB/s, CPU seconds per MiB) of one PUT and one GET."""
    mib = len(data) / (1 << 20)
    out = {}
    for name, arg in (("put", data), ("get", None)):
        w, c = time.perf_counter(), time.process_time()
        got = op(key, arg)
        w, c = time.perf_counter() - w, time.process_time() - c
        if arg is None:
            assert got == data, "read back other bytes"
        out[name] = (mib / w, c / mib)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--large-mib", type=int, default=64)
    ap.add_argument("--endpoint")
    ap.add_argument("--bucket", default="bench-clients")
    args = ap.parse_args()
    server = None
    endpoint = args.endpoint
    if endpoint is None:
        server = MotoServer().start()
        endpoint = server.url
        server.create_bucket(args.bucket)
    try:
        makers = {
            "boto3": boto3_client,
            "obstore": obstore_client,
            "aiobotocore": aiobotocore_client,
        }
        clients: dict[str, Op] = {}
        for n, make in makers.items():
            if (client := make(endpoint, args.bucket)) is not None:
                clients[n] = client
        sizes = {"64KiB": 64 << 10, f"{args.large_mib}MiB": args.large_mib << 20}
        results: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
        for r in range(args.rounds):
            order = list(clients.items())
            order = order[r % len(order) :] + order[: r % len(order)]
            for label, size in sizes.items():
                data = os.urandom(size)
                for name, op in order:
                    # Small objects: many in a row, or per-request noise dominates.
                    reps = 32 if size < (1 << 20) else 1
                    for i in range(reps):
                        for kind, v in measure(op, f"{name}/{label}/{r}/{i}", data).items():
                            results.setdefault((name, label, kind), []).append(v)
        print(f"endpoint {'moto_server (local)' if server else endpoint}, rounds {args.rounds}")
        print(f"{'client':12} {'size':7} {'op':4} {'MiB/s':>9} {'CPU ms/MiB':>11}")
        for (name, label, kind), vals in sorted(results.items()):
            mibs = statistics.median(v[0] for v in vals)
            cpu = statistics.median(v[1] for v in vals) * 1000
            print(f"{name:12} {label:7} {kind:4} {mibs:9.1f} {cpu:11.2f}")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
