"""The module-wide live server most jobs tests share."""

from __future__ import annotations

import pytest

from tests.unit.jobs.live import jobs_server


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_model_dir):
    with jobs_server(tmp_path_factory.mktemp("jobs"), tiny_model_dir) as c:
        yield c
