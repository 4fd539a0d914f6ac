"""CURVE key files of a LAN cluster and `flowring keys create`: modes, contents, and `up` refusing a cluster without keys."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import zmq
from typer.testing import CliRunner

from common.cluster.inventory import load_inventory
from common.cluster.keys import CLIENT_NAME, create_keys, load_keys, with_keys
from common.cluster.settings import ClusterSpec, Placement
from common.wire.curve import CurveKeyError, load_key_pair
from services.cli.main import app

EXAMPLE = Path(__file__).resolve().parents[3] / "infra" / "lan.example.toml"
BOARDS = [f"board-{i}" for i in range(1, 6)]
runner = CliRunner()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_create_keys_writes_a_private_pair_per_board_and_one_for_the_clients(tmp_path):
    folder = tmp_path / "keys"
    created = create_keys(folder, ["b1", "b2"])
    assert set(created) == {"board-b1", "board-b2", CLIENT_NAME}
    assert _mode(folder) == 0o700
    for name, pair in created.items():
        secret, public = folder / f"{name}.key_secret", folder / f"{name}.key"
        assert _mode(secret) == 0o600
        assert load_key_pair(secret) == pair
        assert zmq.auth.load_certificate(public) == (pair.public, None)  # the public file holds no secret
        assert zmq.curve_public(pair.secret) == pair.public  # a real CURVE pair
    assert create_keys(folder, ["b1", "b2"]) == {}  # existing pairs are kept
    assert set(create_keys(folder, ["b1"], replace=True)) == {"board-b1", CLIENT_NAME}


def test_load_keys_says_to_run_flowring_keys_when_a_pair_is_missing(tmp_path):
    create_keys(tmp_path, ["b1"])
    with pytest.raises(CurveKeyError, match=r"board-b2 .*run `flowring keys create --cluster lan.toml`"):
        load_keys(tmp_path, ["b1", "b2"], Path("lan.toml"))


def test_load_keys_refuses_a_secret_file_others_can_read(tmp_path):
    create_keys(tmp_path, ["b1"])
    (tmp_path / "board-b1.key_secret").chmod(0o644)
    with pytest.raises(CurveKeyError, match="readable by others"):
        load_keys(tmp_path, ["b1"], Path("lan.toml"))


def test_with_keys_gives_each_service_its_board_key_and_the_head_the_client_pair(tmp_path):
    create_keys(tmp_path, ["b1", "b2"])
    keys = load_keys(tmp_path, ["b1", "b2"], Path("lan.toml"))
    spec = ClusterSpec(base="b", draft="d", drafter=Placement("drafter"), stages=(Placement("stage-1"),),
                       verifier=Placement("verifier"), scheduler=Placement("scheduler"))
    secured = with_keys(spec, {"scheduler": "b1", "drafter": "b1", "stage-1": "b2", "verifier": "b2"}, keys)
    assert secured.scheduler.public_key == secured.drafter.public_key == keys.boards["b1"].public.decode()
    assert secured.stages[0].public_key == secured.verifier.public_key == keys.boards["b2"].public.decode()
    assert secured.curve.client_keys == (keys.client.public.decode(),)
    assert load_key_pair(secured.curve.key_file) == keys.client
    assert keys.client.secret.decode() not in secured.to_json()  # the cluster file names the file, not the key


def test_cli_keys_create_prints_public_keys_only(tmp_path):
    folder = tmp_path / "keys"
    result = runner.invoke(app, ["keys", "create", "--cluster", str(EXAMPLE), "--keys-dir", str(folder)])
    assert result.exit_code == 0, result.output
    keys = load_keys(folder, BOARDS, EXAMPLE)
    assert result.output.count("created ") == 6 and f"keys in {folder}" in result.output
    for pair in (keys.client, *keys.boards.values()):
        assert pair.public.decode() in result.output and pair.secret.decode() not in result.output
    again = runner.invoke(app, ["keys", "create", "--cluster", str(EXAMPLE), "--keys-dir", str(folder)])
    assert again.exit_code == 0 and "kept 6 existing key pair(s)" in again.output
    assert load_keys(folder, BOARDS, EXAMPLE) == keys


def test_cli_keys_create_defaults_to_the_inventory_folder_under_flowring_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWRING_HOME", str(tmp_path))
    result = runner.invoke(app, ["keys", "create", "--cluster", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "keys" / "lan.example").glob("*.key_secret"))) == 6


def test_cli_keys_create_reports_a_bad_inventory(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[models]\n")
    result = runner.invoke(app, ["keys", "create", "--cluster", str(bad), "--keys-dir", str(tmp_path / "k")])
    assert result.exit_code == 1 and "no boards" in result.output and not (tmp_path / "k").exists()


def test_up_refuses_a_lan_cluster_without_keys_in_one_line(tmp_path):
    assert load_inventory(EXAMPLE).boards  # a valid inventory: only the keys are missing
    result = runner.invoke(app, ["up", "--cluster", str(EXAMPLE), "--keys-dir", str(tmp_path / "none"),
                                 "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 1
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "run `flowring keys create --cluster" in errors[0], result.output
    assert "planning" not in result.output
