"""`mmotif run` prints the dashboard's real address: Ray moves to another port when 8265
is taken, and the printed URL must follow (real Ray, real dashboard)."""

import re
import socket
import urllib.error
import urllib.request

import pytest
import ray

from mmotif.config import load_config
from mmotif.runtime.driver import Driver

pytestmark = pytest.mark.slow


def hold_port(port: int):
    """A socket listening on 127.0.0.1:port, or None when something else already holds it."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    s.listen()
    return s


def answers_http(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=10).close()
    except urllib.error.HTTPError:  # 401 with token auth on: still the dashboard answering
        return True
    except OSError:
        return False
    return True


def test_the_printed_dashboard_url_is_where_ray_put_it(tmp_path, capsys):
    held = hold_port(8265)  # 8265 taken either way: by us, or by another Ray on this machine
    cfg = load_config(preset_name="local", overrides={"paths": {"run_dir": str(tmp_path / "run")},
                                                      "cluster": {"num_cpus": 1}})
    try:
        driver = Driver(cfg)
        driver._start_ray()
        printed = re.findall(r"Ray dashboard at (\S+)", capsys.readouterr().out)
        assert printed == [driver.dashboard_url], printed
        port = int(driver.dashboard_url.rsplit(":", 1)[1])
        assert port != 8265, "8265 was taken, so Ray must have moved the dashboard"
        assert answers_http(driver.dashboard_url)
    finally:
        ray.shutdown()
        if held is not None:
            held.close()
