"""What the benches print beside every figure: the CPU they ran on (the model changes between
machines of this project, and figures from different CPUs must not be compared), and the machine
block bench/run_all.py writes at the head of its results."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")  # what fp32/bf16 matmuls use


def _cpuinfo(key: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    return _cpuinfo("model name") or platform.processor() or "?"


def machine() -> dict:
    """CPU model, the instruction-set flags that decide matmul speed, cores, memory, torch's version
    and default thread count (in a fresh interpreter with this environment, as a bench gets it)."""
    flags = set((_cpuinfo("flags") or "").split())
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__, torch.get_num_threads())"],
                           capture_output=True, text=True)
    torch_version, threads = probe.stdout.split() if probe.returncode == 0 else ("not importable", "0")
    meminfo = Path("/proc/meminfo")
    mem = re.search(r"MemTotal:\s+(\d+) kB", meminfo.read_text()) if meminfo.exists() else None
    return {"cpu": cpu_name(), "flags": [f for f in FLAGS if f in flags], "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "mem_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None, "python": platform.python_version(),
            "torch": torch_version, "torch_threads": int(threads),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def slug(m: dict) -> str:
    """A file-name part for the machine: "amd-epyc-2c"."""
    name = re.sub(r"\((r|tm)\)|cpu|processor|@.*|\d+-core", "", m["cpu"], flags=re.I)
    return "-".join(re.findall(r"[a-z0-9]+", name.lower())[:4] + [f"{m['cores']}c"])
