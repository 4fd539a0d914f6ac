"""A LAN bring-up on one machine, end to end through the CLI: three network-namespace boards, each with its
own address and OpenSSH server (services/testbed/netns.py), SmolLM2-135M split across them.

Runs `up --cluster`, `status`, `generate`, `logs --request`, `logs -f` (interrupted as Ctrl-C does), `down`,
a second `up` (which should ship nothing), `down`; writes what each printed, the time each `up` took and
the weight bytes shipped to --out. Removes the namespaces and checks no service, ssh or tail is left.

Usage (as root): PYTHONPATH=$PWD .venv/bin/python infra/lan_demo.py --out infra/results/FILE.txt
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from services.testbed.netns import NetnsLan, unavailable  # noqa: E402

MODEL = Path.home() / ".cache" / "flowring" / "models" / "smollm2-135m"
PROMPT = "The three primary colours are"
FOLLOW_SETTLE_S = 3.0  # `logs -f` has fetched the logs and started its tails by then


def inventory(lan: NetnsLan, model: Path) -> str:
    boards = "".join(f"""
[[boards]]
name = "{b.name}"
address = "{b.address}"
user = "{lan.user}"
cores = 1
memory_mib = 2048
python = "{sys.executable}"
workdir = "{REPO}"
home = "{b.root / 'home'}"
""" for b in lan.boards)
    return f"""
[models]
base = "{model}"
draft = "{model}"
dtype = "float32"

[placement]
scheduler = "b1"
drafter = "b1"
stages = ["b2", "b3"]
verifier = "b3"
layers = "auto"

[resources]
threads = 1
overhead_mib = 300
kv_tokens = 512

[ssh]
identity = "{lan.identity}"
known_hosts = "{lan.known_hosts}"
connect_timeout_s = 3

[timeouts]
ready_timeout_s = 300
request_timeout_s = 300
{boards}"""


class Session:
    """Runs `flowring ...` as a user would, against one run folder; keeps a transcript."""

    def __init__(self, head: Path, run_dir: Path) -> None:
        self.env = {**os.environ, "FLOWRING_HOME": str(head), "PYTHONPATH": str(REPO)}
        self.run_dir = run_dir
        self.transcript: list[str] = []

    def argv(self, *args: str) -> list[str]:
        run_dir = [] if args[0] == "keys" else ["--run-dir", str(self.run_dir)]  # keys belong to the inventory
        return [sys.executable, "-m", "services.cli.main", *args, *run_dir]

    def run(self, *args: str, keep: int = 0) -> tuple[str, float]:
        """Run a command; record it (its last ``keep`` lines when ``keep``); return its output and seconds."""
        began = time.monotonic()
        done = subprocess.run(self.argv(*args), env=self.env, cwd=REPO, capture_output=True, text=True,
                              check=False)
        seconds = time.monotonic() - began
        output = done.stdout + done.stderr
        shown = output.splitlines()[-keep:] if keep else output.splitlines()
        self.transcript += [f"$ flowring {' '.join(args)}    # exit {done.returncode}, {seconds:.1f} s", *shown, ""]
        if done.returncode != 0:
            raise RuntimeError(f"flowring {' '.join(args)} failed:\n{output}")
        return done.stdout, seconds

    def follow(self, during: list[str]) -> str:
        """`logs -f --pretty` while ``during`` runs, then Ctrl-C (SIGINT to its process group, as a terminal
        sends it); its output."""
        proc = subprocess.Popen(self.argv("logs", "-f", "--pretty"), env=self.env, cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        time.sleep(FOLLOW_SETTLE_S)
        self.run(*during, keep=2)
        time.sleep(FOLLOW_SETTLE_S)
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
        self.transcript.append(f"$ flowring logs -f --pretty    # Ctrl-C (SIGINT to its group): exit {proc.returncode}, "
                               f"its last lines:")
        return output


def _leftovers(lan: NetnsLan) -> list[str]:
    """Processes whose command line names a board's folder or address (services, tails, ssh)."""
    marks = [str(b.root) for b in lan.boards] + [b.address for b in lan.boards]
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and int(proc.name) != os.getpid() and any(m in argv for m in marks) \
                and "sshd" not in argv:  # the boards' servers themselves go with the LAN
            found.append(f"{proc.name}: {argv[:160]}")
    return found


def demo(lan: NetnsLan, work: Path) -> list[str]:
    cluster = work / "lan.toml"
    cluster.write_text(inventory(lan, MODEL))
    session = Session(work / "head", work / "run")
    report = [f"made by: python infra/lan_demo.py at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
              f"boards: {', '.join(f'{b.name}={b.address} (netns {b.netns}, sshd)' for b in lan.boards)}; "
              f"head {lan.head_address}; model {MODEL.name} float32; {os.cpu_count()} cores", ""]
    session.run("keys", "create", "--cluster", str(cluster))
    first_out, first_s = session.run("up", "--cluster", str(cluster))
    session.run("status")
    generated, _ = session.run("generate", PROMPT, "--max-new-tokens", "24", "--raw", "--json")
    request_id = json.loads(generated)["stats"]["request_id"]
    by_request, _ = session.run("logs", "--request", request_id)
    services = sorted({json.loads(line)["service"] for line in by_request.splitlines()})
    session.run("logs", "--request", request_id, "--pretty", keep=12)
    followed = session.follow(["generate", "Once upon a time", "--max-new-tokens", "16", "--raw"])
    session.transcript += [*followed.splitlines()[-15:], ""]
    after_follow = _leftovers(lan)
    session.run("down")
    second_out, second_s = session.run("up", "--cluster", str(cluster))
    session.run("down")
    report += [
        f"first up:  {first_s:.1f} s wall ({_up_line(first_out)})",
        f"second up: {second_s:.1f} s wall ({_up_line(second_out)})",
        f"logs --request {request_id}: {len(by_request.splitlines())} lines from {', '.join(services)}",
        f"processes left after logs -f was interrupted (besides the services): "
        f"{[p for p in after_follow if 'services.run' not in p] or 'none'}",
        f"processes left after the last down: {_leftovers(lan) or 'none'}",
        "", "transcript:", "", *session.transcript,
    ]
    return report


def _up_line(output: str) -> str:
    match = re.search(r"flowring is up in ([\d.]+) s: .*?, (\d+) bytes of weights shipped", output)
    return f"`up` says {match.group(1)} s, {match.group(2)} bytes of weights shipped" if match else "no summary"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    why_not = unavailable()
    if why_not:
        sys.exit(f"cannot build the namespace LAN: {why_not}")
    with tempfile.TemporaryDirectory(prefix="flowring-lan-") as tmp, NetnsLan(Path(tmp), 3) as lan:
        try:
            report = demo(lan, Path(tmp))
        finally:
            if (Path(tmp) / "run" / "boards.json").exists():
                Session(Path(tmp) / "head", Path(tmp) / "run").run("down")
    args.out.write_text("\n".join(report) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
