"""The chart's container arguments must be accepted by the sandpool binary:
every `command: [sandpool]` container of the rendered chart is run with its
args plus --help (clap rejects unknown flags before printing help).

Usage: python check-chart-args.py RENDERED.yaml SANDPOOL_BIN
"""
import subprocess
import sys

import yaml

rendered, binary = sys.argv[1], sys.argv[2]
checked = 0
for doc in yaml.safe_load_all(open(rendered)):
    if not doc or doc.get("kind") not in ("Deployment", "DaemonSet"):
        continue
    for c in doc["spec"]["template"]["spec"]["containers"]:
        if c.get("command") != ["sandpool"]:
            continue
        r = subprocess.run([binary, *c["args"], "--help"], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{doc['kind']}/{doc['metadata']['name']} container {c['name']}: sandpool refuses its args: {r.stderr.strip()}")
        checked += 1
if checked < 3:
    sys.exit(f"expected the controller, gateway and node agent; checked {checked}")
print(f"chart args accepted by {binary}: {checked} containers")
