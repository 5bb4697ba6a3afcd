"""Backends keep a run's numbers and refuse what would hang: portable runs keep their thread
count on every backend; a Ray address that does not answer and a cluster without a node large
enough are refused in one line."""

import sys
import time

import pytest
import torch

from bench.config import RunConfig, apply_overrides, resolve
from bench.grid.backends import check_ray_address, run_one
from bench.identity import resolve_run
from variants.errors import ConfigError


def test_portable_runs_keep_their_thread_count_on_every_backend(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    cfg = resolve(apply_overrides(RunConfig(), {"dataset": "digits", "train.epochs": 1,
                                                "model.hidden": "8", "model.latent_dim": 2,
                                                "eval.is_samples": 5}))
    assert cfg.numerics == "portable"
    assert run_one(cfg, tmp_path, None, 1) == "ok"  # 1: what a Ray task asks for
    from bench.machine.numerics import PORTABLE_THREADS
    assert calls and set(calls) == {PORTABLE_THREADS}  # the mode's count, not the backend's


def test_a_ray_address_that_does_not_answer_fails_in_one_line():
    with pytest.raises(ConfigError, match="is invalid; allowed: HOST:PORT"):
        check_ray_address("notahost:abc")
    start = time.monotonic()
    with pytest.raises(ConfigError, match="nothing answers there within 2 s"):
        check_ray_address("127.0.0.1:1", timeout=2)
    assert time.monotonic() - start < 5


def test_ray_address_from_the_environment_and_the_client_form_get_the_same_check(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    start = time.monotonic()
    with pytest.raises(ConfigError, match="RAY_ADDRESS 127.0.0.1:1: nothing answers there"):
        check_ray_address(None, timeout=2)
    assert time.monotonic() - start < 5
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(ConfigError, match="'ray://nohost' is invalid"):
        check_ray_address("ray://nohost")
    import importlib.util
    if importlib.util.find_spec("grpc") is None:  # the ray extra does not install the client
        with pytest.raises(ConfigError, match=r"needs Ray's client \(pip install 'ray\[client\]'\)"):
            check_ray_address("ray://127.0.0.1:1")
    else:
        with pytest.raises(ConfigError, match="nothing answers there"):
            check_ray_address("ray://127.0.0.1:1", timeout=2)


@pytest.mark.parametrize("reply, why", [
    (b"SSH-2.0-OpenSSH_9.6\r\n", "not an HTTP/2 SETTINGS frame"),
    (None, "it sends nothing back"),
    (b"", "it closed the connection"),
    (b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", None),  # an HTTP/2 server's empty SETTINGS
])
def test_a_ray_address_where_something_else_listens_fails_in_one_line(reply, why):
    """Ray, pointed at a listener that is not Ray (an SSH server, a silent port), retries for
    minutes; the check asks for what every gRPC server sends first, an HTTP/2 SETTINGS frame."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer():
        conn, _ = server.accept()
        if reply is None:
            time.sleep(3)
        else:
            conn.sendall(reply)
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        start = time.monotonic()
        if why is None:
            check_ray_address(f"127.0.0.1:{port}", timeout=1)
        else:
            with pytest.raises(ConfigError, match=f"something listens there but it is not a Ray "
                               f"head \\(.*{why}"):
                check_ray_address(f"127.0.0.1:{port}", timeout=1)
        assert time.monotonic() - start < 3
    finally:
        server.close()


def test_a_ray_cluster_without_a_node_large_enough_is_refused_in_one_line(tmp_path, monkeypatch):
    """A portable run's task reserves 2 CPUs; on a cluster whose nodes have 1 CPU each Ray would
    wait forever, so the suite refuses before submitting anything (Ray itself replaced by a
    stand-in that reports such a cluster)."""
    import types

    from bench.grid.backends import _ray

    submitted = []
    fake = types.SimpleNamespace(
        init=lambda **kw: None,
        nodes=lambda: [{"Alive": True, "Resources": {"CPU": 1.0}},
                       {"Alive": False, "Resources": {"CPU": 8.0}}],  # a dead node counts not
        remote=lambda fn: submitted.append(fn))
    monkeypatch.setitem(sys.modules, "ray", fake)
    run = resolve_run(apply_overrides(RunConfig(), {"dataset": "digits"}))
    assert run.config.numerics == "portable"
    with pytest.raises(ConfigError, match="reserves 2 CPUs .* no node of this Ray cluster has "
                                          "more than 1;"):
        list(_ray([[run]], tmp_path, None, None))
    assert not submitted
