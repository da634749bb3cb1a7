"""What a finish costs the frontend before the worker: the session files and the send.

    .venv/bin/python bench/bench_enqueue.py [--count 2000] [--rounds 3] [--tmpdir /tmp]

No HTTP and no worker: on a private ``redis-server`` (devtools.localredis), per
round and in an order that rotates every round, ``--count`` times each of

* ``send_task+event``: Celery's ``send_task`` of a verification message with the
  task-sent event (what the frontend did before it published directly);
* ``send_task``: the same without the event;
* ``direct``: ``CeleryTaskQueue``'s direct publish of the same message (one LPUSH);
* ``Staging.create``: a new upload session on the filesystem driver (a directory,
  ``info.json``, the empty data file).

Reports the median over the rounds of wall and CPU (user + system of this process)
per operation, and each send's CPU as a ratio to ``direct``. The queue is emptied
between rounds.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.localredis import LocalRedis
from ingest.queue import QUEUE_VERIFY, TASK_VERIFY, CeleryTaskQueue, client_config
from ingest.storage.filesystem import FilesystemDriver
from ingest.uploads import Staging

DIGEST = "sha256:" + "ab" * 32


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _measure(op: Callable[[], None], count: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per call."""
    cpu0, t0 = _cpu(), time.perf_counter()
    for _ in range(count):
        op()
    return (time.perf_counter() - t0) / count * 1e3, (_cpu() - cpu0) / count * 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tmpdir", default="/tmp")
    args = p.parse_args()

    from celery import Celery

    server = LocalRedis().start()
    root = Path(tempfile.mkdtemp(prefix="bench-enqueue-", dir=args.tmpdir))
    try:
        url = server.url
        apps = {}
        for name, sent in (("send_task+event", True), ("send_task", False)):
            app = Celery(name, set_as_current=False)
            app.conf.update(client_config(url, url, 3600))
            app.conf.task_send_sent_event = sent
            apps[name] = app
        queue = CeleryTaskQueue.from_urls(url, url)
        assert queue._direct is not None
        staging = Staging(FilesystemDriver(root))

        def sender(app: Celery) -> Callable[[], None]:
            def send() -> None:
                upload = str(uuid.uuid4())
                app.send_task(
                    TASK_VERIFY,
                    args=(upload, DIGEST, 65536),
                    kwargs={"staged_size": 65536},
                    task_id=str(uuid.uuid4()),
                    queue=QUEUE_VERIFY,
                    argsrepr=f"upload={upload} digest={DIGEST} size=65536",
                    kwargsrepr="staged_size=65536 repository=None",
                )

            return send

        def direct() -> None:
            queue._send_verify(
                {
                    "upload_id": str(uuid.uuid4()),
                    "digest": DIGEST,
                    "size": 65536,
                    "staged_size": 65536,
                    "task_id": str(uuid.uuid4()),
                    "repository": None,
                }
            )

        def create() -> None:
            staging.create("bench/enqueue")

        ops: dict[str, Callable[[], None]] = {
            "send_task+event": sender(apps["send_task+event"]),
            "send_task": sender(apps["send_task"]),
            "direct": direct,
            "Staging.create": create,
        }
        for op in ops.values():  # warm-up: connections, imports
            for _ in range(20):
                op()
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in ops}
        names = list(ops)
        import redis

        client = redis.Redis.from_url(url)
        for rnd in range(args.rounds):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for name in order:
                results[name].append(_measure(ops[name], args.count))
                client.delete(QUEUE_VERIFY)
            print(f"round {rnd}: " + ", ".join(f"{n} {results[n][-1][1]:.3f}" for n in names))
        direct_cpu = statistics.median(c for _, c in results["direct"])
        print(f"\n{args.count} operations per round, medians of {args.rounds} rounds\n")
        print("| operation | wall ms/op | CPU ms/op | CPU vs direct |")
        print("| --- | --- | --- | --- |")
        for name in names:
            wall = statistics.median(w for w, _ in results[name])
            cpu = statistics.median(c for _, c in results[name])
            ratio = f"{cpu / direct_cpu:.1f}" if name != "Staging.create" else "—"
            print(f"| {name} | {wall:.3f} | {cpu:.3f} | {ratio} |")
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
