"""Fixtures several unit test modules share."""
import pytest

from test_sync import Server


@pytest.fixture
def server(tmp_path):
    """A control plane on an embedded store of the test's own."""
    s = Server(f"embedded://{tmp_path}/store")
    yield s
    s.close()
