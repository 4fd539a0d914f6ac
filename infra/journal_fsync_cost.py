"""The scheduler journal's sync cost, fsync per batch vs flush only, interleaved: `PYTHONPATH=. python infra/journal_fsync_cost.py`."""
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, ".")
from common.speculation.modes import DraftSettings
from common.wire.client import GenerateRequest
from services.scheduler.admission import Capacity
from services.scheduler.core import SchedulerCore
from services.scheduler.journal import Journal


def core():
    c = SchedulerCore(["drafter", "verifier"], None, [0], DraftSettings(), capacity=Capacity(context_tokens=10**6))
    for i in range(3):
        c.submit(f"client:{i:02x}", GenerateRequest(prompt="", prompt_ids=tuple(range(50)), max_new_tokens=10**5))
    return c

N = 300
results = {True: [], False: []}
with tempfile.TemporaryDirectory(dir=Path.home()) as d:
    for rep in range(3):
        for fs in (True, False):
            c = core()
            j = Journal(Path(d) / f"j{fs}{rep}.jsonl", fsync=fs)
            j.sync(c.jobs.values())
            jobs = list(c.jobs.values())
            t = time.perf_counter()
            for k in range(N):
                jobs[k % 3].output.append(k)
                j.sync(c.jobs.values())
            results[fs].append((time.perf_counter() - t) / N * 1e6)
            j.close()
for fs, us in results.items():
    print(f"fsync={fs}: per sync (one commit line) us: {[round(x) for x in us]}")
