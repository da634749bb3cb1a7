"""The integrity suite (tests/unit/test_integrity.py) through the real commit path on
the S3 driver, against a real S3 server: the same tests, collected here with an S3
``driver`` fixture. Late writes from a handle opened before ``finish`` are refused at
every step of the commit, and the placed blob is exactly the bytes hashed, with the
seal a manifest swap and the move a composed multipart upload. (The batched-commit
tests are not collected here: they run a worker of their own on a filesystem.)"""

from __future__ import annotations

import pytest

from ingest.storage.base import StorageDriver
from tests.support.s3fixtures import moto_s3_server, new_s3_driver, s3_server, seaweedfs_s3_server
from tests.support.s3server import S3Server
from tests.unit.test_integrity import (
    test_a_handle_that_read_open_before_finish_but_writes_first_after_it_is_refused,
    test_a_late_write_after_a_rejection_cannot_turn_the_retry_into_a_commit_of_new_bytes,
    test_a_rerun_that_trusts_the_recorded_verification_still_commits_only_the_frozen_bytes,
    test_a_write_from_a_handle_opened_before_finish_is_refused_at_every_commit_step,
    test_an_immediate_handle_that_appends_and_finishes_while_another_request_finishes,
    test_every_step_of_the_commit_is_reported_in_order,
)

__all__ = [
    "moto_s3_server",
    "s3_server",
    "seaweedfs_s3_server",
    "test_a_handle_that_read_open_before_finish_but_writes_first_after_it_is_refused",
    "test_a_late_write_after_a_rejection_cannot_turn_the_retry_into_a_commit_of_new_bytes",
    "test_a_rerun_that_trusts_the_recorded_verification_still_commits_only_the_frozen_bytes",
    "test_a_write_from_a_handle_opened_before_finish_is_refused_at_every_commit_step",
    "test_an_immediate_handle_that_appends_and_finishes_while_another_request_finishes",
    "test_every_step_of_the_commit_is_reported_in_order",
]


@pytest.fixture
def driver(s3_server: S3Server) -> StorageDriver:
    return new_s3_driver(s3_server)
