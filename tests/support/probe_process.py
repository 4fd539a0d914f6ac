"""``python -m tests.support.probe_process [SECONDS]``: prints one JSON line about this process, then sleeps."""

import json
import os
import random
import sys
import time

preloaded = "torch" in sys.modules  # before this module imports anything heavy: true only in a fork of the zygote
print(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "sid": os.getsid(0), "cwd": os.getcwd(),
                  "argv": sys.argv[1:], "preloaded": preloaded, "probe": os.environ.get("PROBE", ""),
                  "restart": os.environ.get("FLOWRING_RESTART", ""), "random": random.random(),
                  "torch_random": __import__("torch").rand(1).item()}), flush=True)
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0.0)
