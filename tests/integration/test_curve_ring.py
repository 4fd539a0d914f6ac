"""The real ring with CURVE on: one process per service over TCP on loopback, keys as `flowring keys` makes them.

Greedy output equals the base model's; a client without a key or with an unauthorized one gets nothing
through, and is logged and counted by the service it knocked at; no secret key reaches a log.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
import zmq

from common.cluster.keys import board_key_name, create_keys, load_keys, with_keys
from common.speculation.modes import DraftSettings
from common.wire.commands import Shutdown
from common.wire.curve import ClientCurve, KeyPair
from common.wire.transport import push, send
from services.client import Client, ClusterUnavailable
from services.launcher import client_for, plan_local, start, stop
from services.run_folder import RunFolder
from tests.support.reference import assert_greedy_on_random_prompts
from tests.support.tiny_models import make_tiny_pair

TREES = DraftSettings(top_k=3, fill_nodes=12, fill_depth=4, segment_cap=4, expand_nodes=6, expand_depth=3)
REFUSED_WAIT_S = 2.0  # how long a stranger waits for an answer that must never come


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_tiny_pair(tmp_path_factory.mktemp("pair"), family="qwen2", seed=13)


def test_a_curve_ring_decodes_like_the_base_model_and_refuses_strangers(pair, tmp_path):
    base, draft = pair
    create_keys(tmp_path / "keys", ["here"])
    keys = load_keys(tmp_path / "keys", ["here"], Path("loopback.toml"))
    spec = plan_local(base, draft, 2, draft_settings=TREES, threads=1)
    spec = with_keys(spec, {p.name: "here" for p in (*spec.ring, spec.scheduler)}, keys)
    # One cluster file for every local service: they hold the board's pair. `start` waits for them as a client
    # with that file, so the board's key is admitted as a client too; the tests below use the clients' pair.
    board_file = str(keys.secret_file(board_key_name("here")))
    services_spec = replace(spec, curve=replace(spec.curve, key_file=board_file,
                                                client_keys=(*spec.curve.client_keys, spec.scheduler.public_key)))
    endpoint = spec.scheduler.endpoint(spec.scheduler.client_port)
    stranger = KeyPair(*zmq.curve_keypair())
    run_dir = tmp_path / "run"
    start(services_spec, run_dir)
    try:
        with client_for(spec, 120) as client:
            assert_greedy_on_random_prompts(client, base, seed=5, prompts=4, longest=40, max_new_tokens=12)
        for curve in (None, ClientCurve(stranger, spec.scheduler.public_key)):  # no key; a key nobody authorized
            with Client(endpoint, REFUSED_WAIT_S, curve) as outsider, pytest.raises(ClusterUnavailable):
                outsider.shutdown(timeout_s=REFUSED_WAIT_S)
        # The clients' own key is not a board key: the ring's sockets refuse it too.
        stage = spec.stages[0]
        ring_intruder = push(zmq.Context.instance(), stage.endpoint(stage.cmd_port),
                             ClientCurve(keys.client, stage.public_key))
        send(ring_intruder, Shutdown(cmd_seq=-1))
        with client_for(spec, 120) as client:  # nothing got through: the ring still decodes
            assert client.status().ready
            assert client.generate("", prompt_ids=(5, 6, 7), max_new_tokens=4).ok
        ring_intruder.close(0)
        assert _refused(spec.scheduler.metrics_url) >= 1 and _refused(stage.metrics_url) >= 1
    finally:
        stop(run_dir)
    scheduler_log = _events(RunFolder(run_dir).logs / "scheduler.log")
    refusals = [e for e in scheduler_log if e["event"] == "peer_refused"]
    assert [(e["address"], e["public_key"], e["domain"]) for e in refusals if e["public_key"]] == [
        ("127.0.0.1", stranger.public.decode(), "client")]  # once, though its handshake was retried
    # The client without CURVE: refused in the handshake, before ZAP; logged with its address once, or also
    # once without it when a refusal closed the connection before its address was read.
    plain = [e for e in refusals if not e["public_key"]]
    assert 1 <= len(plain) <= 2 and {e["address"] for e in plain} <= {"127.0.0.1", ""}, plain
    assert all(e["domain"] == "client" and ("no CURVE" in e["reason"] or "cut short" in e["reason"])
               for e in plain), plain
    stage_refusals = [e for e in _events(RunFolder(run_dir).logs / "stage-1.log") if e["event"] == "peer_refused"]
    assert [(e["public_key"], e["domain"]) for e in stage_refusals] == [(keys.client.public.decode(), "ring")]
    secrets = [p.secret.decode() for p in (keys.client, *keys.boards.values(), stranger)]
    for log_file in (RunFolder(run_dir).logs).iterdir():
        text = log_file.read_text(errors="replace")
        assert not any(secret in text for secret in secrets), log_file


def _refused(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=10) as answer:
        lines = answer.read().decode().splitlines()
    return sum(float(ln.split()[-1]) for ln in lines if ln.startswith("flowring_peers_refused_total"))


def _events(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
