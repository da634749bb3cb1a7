"""The development harness: run the whole pipeline on one machine. Not shipped.

* :mod:`devtools.localredis` -- a private, throwaway ``redis-server`` on a free port;
* :mod:`devtools.devstack` -- the frontend, Celery workers, beat and Flower as
  subprocesses in their own process groups;
* :mod:`devtools.demo` -- the main job (``python -m devtools.demo``, run by
  ``scripts/demo.sh``).

The demo, the integration tests and the benchmarks share it. It lives outside the wheel
(``[tool.hatch.build.targets.wheel] packages`` lists ``ingest`` and ``workers`` only), so
it is importable only from a checkout: the repository root must be on ``sys.path``, as
it is for ``python -m`` run from the root (what ``scripts/demo.sh`` and
``scripts/test.sh`` do), under pytest (rootdir), and with the editable install the
bootstrap makes. The processes it starts need only the installed ``ingest`` and
``workers``. Nothing under ``ingest/`` or ``workers/`` may import it.
"""
