"""Process start-up before the first step: imports, the scene (frames, descriptors), the renderer;
uncached, with the frame cache cold (decoded and written) and warm (memory-mapped).

    python bench/startup.py --data ROOM [--repeats 3]      # ROOM: e.g. bench/pipeline.py's <work>/room
    python bench/startup.py --work /tmp/pipe                # generates the pipeline's 900-frame room first

Each measurement is a fresh `python` process (as every main.py stage is), timed from inside:
`import main` (torch, the package), `load_scene` of the paper's config pointed at ROOM (180
training + 180 test frames of the 900-frame room; with descriptors: `--load_dino`, the shaping
stage's), `build_renderer` (and CUDA initialisation where there is a GPU). Cache states:
`off` (JNERF_CACHE_DIR=off: every PNG and descriptor file decoded, the code path of a run without
the cache), `cold` (an empty cache folder: decoded and written), `warm` (the files of the cold
run memory-mapped). Medians over --repeats runs; prints one Markdown table.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
import torch
from main import parse_options, configure_device
from datasets.registry import load_scene
from models.factory import build_renderer
t1 = time.perf_counter()
_, opts = parse_options({argv!r})
device = configure_device(opts)
scene = load_scene(opts.data)
t2 = time.perf_counter()
renderer = build_renderer(opts.model, device, opts.precision)
if device.type == "cuda":
    torch.cuda.synchronize()
t3 = time.perf_counter()
print("RESULT " + json.dumps(dict(imports=t1 - t0, scene=t2 - t1, renderer=t3 - t2, total=t3 - t0,
                                  frames=len(scene.train) + len(scene.test))))
"""


def run_child(argv, cache, code=ROOT):
    env = dict(os.environ, JNERF_CACHE_DIR=cache, PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=code, argv=argv)], cwd=code, env=env,
                         capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"start-up child failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="a Replica-layout scene (default: <work>/room, generated)")
    p.add_argument("--work", default="/tmp/jnerf_pipe")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no_dino", action="store_true", help="frames only (the plain and propagation stages)")
    p.add_argument("--code", default=ROOT, help="the checkout whose main.py is timed (e.g. an export of an older "
                   "commit, for a before/after pair; it has no cache, so only its 'off' row is measured)")
    a = p.parse_args()
    data = a.data
    if data is None:
        subprocess.run([sys.executable, "bench/pipeline.py", "--work", a.work, "--prepare_only"], cwd=ROOT, check=True)
        data = os.path.join(a.work, "room")
    sys.path.insert(0, ROOT)
    from bench.pipeline import make_config
    work = tempfile.mkdtemp(prefix="jnerf_startup_")
    try:
        cfg = make_config(work, os.path.abspath(data), 320, 240, small=False)
        base = ["--config_file", cfg, "--save_dir", os.path.join(work, "run")]
        kinds = [("frames", base)] + ([] if a.no_dino else [("frames + descriptors", base + ["--load_dino"])])
        cache = os.path.join(work, "cache")
        rows = []
        for what, argv in kinds:
            res = {"off": []} if os.path.abspath(a.code) != ROOT else {"off": [], "cold": [], "warm": []}
            for _ in range(a.repeats):
                res["off"].append(run_child(argv, "off", a.code))
                if "cold" in res:
                    shutil.rmtree(cache, ignore_errors=True)
                    res["cold"].append(run_child(argv, cache))
                    res["warm"].append(run_child(argv, cache))
            for state, runs in res.items():
                med = {k: statistics.median(r[k] for r in runs) for k in ("imports", "scene", "renderer", "total")}
                rows.append((what, state, runs[0]["frames"], med, [r["scene"] for r in runs]))
        import torch
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
        print(f"\ncode: {a.code}; device: {device}; scene {data}; medians of {a.repeats} fresh processes; "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}\n")
        print("| load | frame cache | frames | imports (s) | scene (s) | renderer (s) | start-up (s) | scene, each run (s) |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
        for what, state, n, med, each in rows:
            print(f"| {what} | {state} | {n} | {med['imports']:.2f} | {med['scene']:.2f} | {med['renderer']:.2f} | "
                  f"{med['total']:.2f} | {', '.join(f'{x:.2f}' for x in each)} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
