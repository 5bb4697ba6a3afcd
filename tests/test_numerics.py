"""Portable numerics (bench/machine/numerics.py): another CPU, simulated on this one, gives the same bits.

"Another CPU" is this one with MKL, oneDNN and ATen limited to AVX2 and one thread, each set in
the environment of a fresh process before torch loads, as an AVX2 machine with one core would
dispatch. Each case trains a short MNIST-shaped run (784 binary pixels, the default profile's
2x200 tanh encoder and z = 32; 40 steps of batch 100; an MLP decoder, a MADE decoder, and a
PixelCNN step) and evaluates it (-ELBO, IS NLL with K = 50, KL, MI, active units); the test
compares every metric bit for bit.

- portable mode: identical on both "CPUs" (the test that matters);
- native mode: the test shows that the simulation changes something, so the first one proves
  something. On the CI kind (AMD EPYC, AVX-512) MKL already runs its AVX2 path, and ATen's AVX2
  and AVX-512 kernels agree bit for bit on everything tried, so what the simulation changes
  natively is the PixelCNN's oneDNN convolutions (their ISA) and the thread count; where native
  MLP and MADE runs happen to agree, the test says so by name instead of asserting a difference.
- Not made portable, by name: ``train.compile`` (inductor compiles C++ for the CPU it runs on;
  not run here), CUDA, and CPUs without AVX2/FMA (``portable_guaranteed`` false in env.json).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.machine import numerics

ROOT = Path(__file__).resolve().parent.parent
OTHER_CPU = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
             "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

PROBE = r"""
import json, sys
import bench  # the numerics mode first, before torch loads
from bench.machine import numerics
import torch
from bench.config import TrainConfig
from bench.evaluation.metrics import evaluate
from bench.seeding import Streams
from bench.training.trainer import fit
from variants import create
from variants.factory import build_vae

decoder, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)  # the machine's own default; portable mode pins its count
numerics.apply(numerics.active())
gen = torch.Generator().manual_seed(0)
train = (torch.rand(100 * steps, 784, generator=gen) < 0.3).float()
test = (torch.rand(200, 784, generator=gen) < 0.3).float()
opts = {"mlp": {}, "made": {"decoder": "made", "decoder_hidden": (500,)},
        "pixelcnn": {"decoder": "pixelcnn", "image_shape": (28, 28), "layers": 2,
                     "channels": 8}}[decoder]
torch.manual_seed(1)
variant = create("vae")
model = build_vae(variant, 784, 32, hidden=(200, 200), activation="tanh", **opts)
fit(model, variant, train, TrainConfig(epochs=1, batch_size=100, lr=1e-3), Streams.from_seed(0),
    dynamic_binarization=True)
metrics = evaluate(model, test[:100 if decoder == "pixelcnn" else 200],
                   20 if decoder == "pixelcnn" else 50, 1, 0)
weights = sum(float(p.double().sum()) for p in model.parameters())
print(json.dumps({"mode": numerics.active(), "threads": torch.get_num_threads(),
                  "capability": torch.backends.cpu.get_cpu_capability(), "weights": repr(weights),
                  **{k: repr(v) for k, v in metrics.items() if not isinstance(v, (list, dict))}}))
"""

CASES = {"mlp": 40, "made": 40, "pixelcnn": 2}


def probe(mode: str, other_cpu: bool, decoder: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in OTHER_CPU}
    env = numerics.environment_for(mode, env)
    if other_cpu:  # as a machine with AVX2 and one core would dispatch, whatever the mode
        env.update(OTHER_CPU)
    threads = "1" if other_cpu else "2"
    out = subprocess.run([sys.executable, "-c", PROBE, decoder, str(CASES[decoder]), threads],
                         cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def differing(a: dict, b: dict) -> list[str]:
    return [k for k in a if k not in ("threads", "capability") and a[k] != b.get(k)]


@pytest.mark.slow
@pytest.mark.parametrize("decoder", list(CASES))
def test_portable_mode_gives_the_same_bits_on_another_cpu(decoder):
    here, there = probe("portable", False, decoder), probe("portable", True, decoder)
    assert here["mode"] == there["mode"] == "portable"
    assert here["threads"] == there["threads"] == numerics.PORTABLE_THREADS
    assert differing(here, there) == []


@pytest.mark.slow
@pytest.mark.parametrize("decoder", list(CASES))
def test_native_mode_does_not(decoder):
    here, there = probe("native", False, decoder), probe("native", True, decoder)
    assert here["mode"] == there["mode"] == "native"
    assert there["threads"] == 1 and there["capability"] == "AVX2"  # the simulation took
    if decoder == "pixelcnn":  # oneDNN's convolution kernels follow the ISA cap on any x86 CPU
        assert differing(here, there), "the simulated CPU changed no bit of the PixelCNN step"
    elif not differing(here, there):
        pytest.skip(f"native {decoder}: this CPU's MKL already takes its AVX2 path and its AVX2 "
                    "and AVX-512 ATen kernels agree, so the simulated CPU changes no bit here; "
                    "on an Intel AVX-512 CPU it does (issue 22's records)")


def test_modes_and_their_environment():
    env = numerics.environment_for("portable", {"MKL_CBWR": "AUTO", "PATH": "/bin"})
    assert env["MKL_CBWR"] == "AVX2,STRICT" and env["PATH"] == "/bin"
    assert env["VAE_BENCH_NUMERICS"] == "portable"
    native = numerics.environment_for("native", env)  # the user's own setting comes back
    assert native["MKL_CBWR"] == "AUTO" and "ATEN_CPU_CAPABILITY" not in native
    assert native["PATH"] == "/bin" and native["VAE_BENCH_NUMERICS"] == "native"
    again = numerics.environment_for("portable", native)
    assert again == numerics.environment_for("portable", env)
    # inductor's cache does not key on ATEN_CPU_CAPABILITY: each mode keeps its own
    assert env["TORCHINDUCTOR_CACHE_DIR"].endswith("_portable")
    assert "TORCHINDUCTOR_CACHE_DIR" not in native
    assert numerics.active() == "portable"  # tests import bench before torch (conftest.py)


def test_a_bad_mode_is_refused_in_one_line():
    env = {**os.environ, "VAE_BENCH_NUMERICS": "fast"}
    out = subprocess.run([sys.executable, "-m", "bench.cli", "variants"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "allowed: portable, native" in out.stderr
