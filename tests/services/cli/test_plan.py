"""``flowring plan`` on a tiny checkpoint: the table, the bottleneck mark, errors as one red line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from common.cluster.partition import layer_costs
from services.cli import plan
from tests.support.tiny_models import make_tiny_model

MIB = 1024 * 1024
WIDE = {"COLUMNS": "200"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("plan") / "base", num_layers=6)


def hosts_file(tmp_path, *hosts: dict) -> str:
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps({"hosts": list(hosts)}))
    return str(path)


def invoke(*args: str):
    return CliRunner().invoke(plan.app, list(args), env=WIDE)


def test_prints_the_table_and_marks_the_bottleneck(base, tmp_path) -> None:
    hosts = hosts_file(
        tmp_path,
        {"name": "board-1", "address": "10.0.0.11", "memory_mib": 64, "speed": 40.0, "cpus": "0-3"},
        {"name": "board-2", "address": "10.0.0.12", "memory_mib": 64, "speed": 20.0},
    )
    result = invoke("--base", str(base), "--hosts", hosts, "--overhead-mib", "1", "--kv-tokens", "256")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    row1 = next(line for line in lines if "board-1" in line)
    row2 = next(line for line in lines if "board-2" in line)
    assert "0-4 (4+emb)" in row1 and "100.0" in row1  # 4 layers at 40/s
    assert "4-6 (2)" in row2 and "100.0" in row2  # 2 layers at 20/s
    assert "bottleneck" in row1 and "bottleneck" not in row2  # a tie goes to the first stage
    assert "/ 64" in row1
    assert "layer ranges: 0-4,4-6" in result.stdout
    assert "verifier" in result.stdout


def test_bottleneck_is_the_slow_host(base, tmp_path) -> None:
    hosts = hosts_file(
        tmp_path,
        {"name": "fast", "address": "a", "memory_mib": 64, "speed": 10.0},
        {"name": "slow", "address": "b", "memory_mib": 64, "speed": 1.0},
    )
    result = invoke("--base", str(base), "--hosts", hosts, "--overhead-mib", "0")
    assert result.exit_code == 0, result.output
    slow = next(line for line in result.stdout.splitlines() if "slow" in line)
    assert "5-6 (1)" in slow and "bottleneck" in slow


def test_impossible_budget_exits_1_with_one_line(base, tmp_path) -> None:
    hosts = hosts_file(
        tmp_path,
        {"name": "board-1", "address": "a", "memory_mib": 64, "speed": 1.0},
        {"name": "board-2", "address": "b", "memory_mib": 0.05, "speed": 1.0},
    )
    result = invoke("--base", str(base), "--hosts", hosts, "--overhead-mib", "0")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ") and "board-2" in result.stderr and "short" in result.stderr


def test_memory_column_adds_weights_kv_and_overhead(base, tmp_path) -> None:
    costs = layer_costs(base, 2)
    hosts = hosts_file(tmp_path, {"name": "solo", "address": "a", "memory_mib": 4096, "speed": 1.0})
    result = invoke("--base", str(base), "--hosts", hosts, "--dtype", "bfloat16", "--overhead-mib", "300",
                    "--kv-tokens", "2048")
    assert result.exit_code == 0, result.output
    expected = costs.embedding_bytes + sum(costs.layer_bytes) + 6 * 2048 * costs.kv_bytes_per_token + 300 * MIB
    assert f"{expected / MIB:,.0f} / 4,096" in result.stdout


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "cannot read hosts file"), ("{not json", "cannot read hosts file"), ('{"hosts": 3}', "hosts file must")],
)
def test_unreadable_hosts_file_exits_1(base, tmp_path, content, match) -> None:
    path = tmp_path / "hosts.json"
    if content is not None:
        path.write_text(content)
    result = invoke("--base", str(base), "--hosts", str(path))
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and match in result.stderr


def test_bad_options_exit_1(base, tmp_path) -> None:
    assert invoke("--base", str(base)).exit_code == 1  # neither --hosts nor --measure
    result = invoke("--base", str(base), "--hosts", "x.json", "--dtype", "float16")
    assert result.exit_code == 1 and "--dtype" in result.stderr
    result = invoke("--base", str(tmp_path / "nowhere"), "--hosts", "x.json")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1


def test_measure_prints_this_hosts_speed_and_fills_missing_speeds(base, tmp_path) -> None:
    result = invoke("--base", str(base), "--measure")
    assert result.exit_code == 0, result.output
    assert "layer-forwards/s" in result.stdout
    hosts = hosts_file(tmp_path, {"name": "here", "address": "127.0.0.1", "memory_mib": 64},
                       {"name": "there", "address": "b", "memory_mib": 64, "speed": 1e9})
    result = invoke("--base", str(base), "--hosts", hosts, "--measure", "--overhead-mib", "0")
    assert result.exit_code == 0, result.output
    assert "bottleneck" in next(line for line in result.stdout.splitlines() if "here" in line)


def test_missing_speed_without_measure_is_an_error(base, tmp_path) -> None:
    hosts = hosts_file(tmp_path, {"name": "here", "address": "a", "memory_mib": 64})
    result = invoke("--base", str(base), "--hosts", hosts)
    assert result.exit_code == 1 and "--measure" in result.stderr
