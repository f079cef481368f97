"""The node config's torch-threads: a whole number >= 1, default 1, a clear error otherwise."""
from __future__ import annotations

import pytest

from client.site import SiteConfigError, torch_threads


@pytest.mark.parametrize("node_config, threads", [({}, 1), ({"torch-threads": 4}, 4), ({"torch-threads": "2"}, 2)])
def test_torch_threads_defaults_to_one_and_takes_a_whole_number(node_config, threads):
    assert torch_threads(node_config) == threads


@pytest.mark.parametrize("value", [0, -2, 2.5, "two", "", True, None])
def test_a_bad_torch_threads_names_the_setting_and_the_fix(value):
    with pytest.raises(SiteConfigError, match=r"torch-threads must be a whole number >= 1.*--node-config"):
        torch_threads({"torch-threads": value})
