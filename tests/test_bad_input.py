"""Bad input, tried systematically: every case gives a one-line error naming the problem and what
is allowed, exit code 2 (1 for runtime failures), and leaves what was already written intact."""

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.data import builtin as data

SMALL = ["--epochs", "1", "--k", "5", "--set", "model.hidden=8", "--set", "model.latent_dim=2"]


@pytest.fixture(scope="module")
def existing(tmp_path_factory):
    """A results tree holding one finished run: it must survive every bad invocation."""
    root = tmp_path_factory.mktemp("existing")
    assert main(["run", *SMALL, "--out", str(root / "runs")]) == 0
    return root


def digest_tree(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".locks" not in p.parts}


class Case:
    def __init__(self, name, args, needle, code=2, setup=None):
        self.name, self.args, self.needle, self.code, self.setup = name, args, needle, code, setup


def fake_mnist(tmp: Path, damage: str) -> None:
    d = tmp / "data" / "mnist"
    d.mkdir(parents=True)
    for key, stem in data.IDX_FILES.items():
        data.write_idx(d / stem, np.zeros((3, 28, 28) if "images" in key else (3,), np.uint8))
    target = d / data.IDX_FILES["train-images"]
    if damage == "truncated":
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "magic":
        target.write_bytes(b"\x00\x00\x09\x03" + target.read_bytes()[4:])


def profile_file(tmp: Path, text: str) -> None:
    (tmp / "p.toml").write_text(text)


def foreign_checkpoint(tmp: Path, payload: str) -> None:
    run = next((tmp / "runs").glob("vae-*"))
    if payload == "tensors":
        torch.save({"weight": torch.zeros(3)}, run / "model.pt")
    else:
        torch.save({"weight": torch.zeros(3), "obj": Path("/etc/passwd")}, run / "model.pt")


def huge_npz(tmp: Path) -> None:
    """An .npz whose array headers claim (10^8, 10^6) float32s: 400 TB, in a few bytes."""
    import io
    import zipfile

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": (10**8, 10**6)})
    with zipfile.ZipFile(tmp / "huge.npz", "w") as z:
        z.writestr("train.npy", buf.getvalue())
        z.writestr("test.npy", buf.getvalue())


CASES = [
    Case("unknown variant", ["run", "--variant", "vq"], "unknown variant 'vq'; allowed: vae"),
    Case("unknown dataset", ["run", "--dataset", "cifar10"], "unknown dataset 'cifar10'"),
    Case("unknown profile", ["suite", "--profile", "huge"], "unknown profile 'huge'; allowed:"),
    Case("unknown config key", ["run", "--set", "train.momentum=0.9"],
         "unknown config key 'train.momentum'; allowed:"),
    Case("unknown hyperparameter", ["run", "--variant", "iwae", "--set", "tau=1"],
         "unknown config key 'tau'"),
    Case("wrong type", ["run", "--set", "train.epochs=many"], "train.epochs='many' is invalid"),
    Case("wrong type bool", ["run", "--variant", "gumbel", "--set", "hard=perhaps"],
         "allowed: true or false"),
    Case("negative size", ["run", "--set", "model.hidden=200,-1"], "allowed: comma-separated"),
    Case("K < 1", ["run", "--set", "eval.is_samples=0"], "allowed: int >= 1"),
    Case("epochs < 1", ["run", "--epochs", "0"], "allowed: an integer >= 1"),
    Case("beta < 0", ["run", "--variant", "beta", "--set", "beta=-2"], "allowed: float >= 0"),
    Case("tau <= 0", ["run", "--variant", "gumbel", "--set", "tau0=0"], "allowed: float > 0"),
    Case("cycles < 1", ["run", "--variant", "kl-anneal", "--set", "cycles=0"],
         "allowed: int >= 1"),
    Case("unknown backend", ["suite", "--backend", "slurm"], "invalid choice: 'slurm'"),
    Case("cuda absent", ["run", "--device", "cuda"], "CUDA is not available here; allowed: cpu"),
    Case("empty profile", ["suite", "--profile", "{tmp}/p.toml"], "is empty",
         setup=lambda t: profile_file(t, "")),
    Case("malformed profile", ["suite", "--profile", "{tmp}/p.toml"], "malformed TOML",
         setup=lambda t: profile_file(t, "[profile\nseeds = ")),
    Case("profile without configs", ["suite", "--profile", "{tmp}/p.toml"], "no [[config]]",
         setup=lambda t: profile_file(t, "[profile]\nseeds = [0]\n")),
    Case("profile with bad seeds", ["suite", "--profile", "{tmp}/p.toml"], "seeds=",
         setup=lambda t: profile_file(t, 'inherits = "smoke"\n[profile]\nseeds = [-1]\n')),
    Case("profile with a bad value", ["suite", "--profile", "{tmp}/p.toml"],
         "config 'mlp / vae': config: train.lr='fast' is invalid",
         setup=lambda t: profile_file(t, 'inherits = "smoke"\n[defaults]\n"train.lr" = "fast"\n')),
    Case("group without a name", ["suite", "--profile", "{tmp}/p.toml"], "needs a name",
         setup=lambda t: profile_file(t, 'inherits = "smoke"\n[[group]]\nwindow = 3\n')),
    Case("unknown decoder", ["run", "--set", "model.decoder=rnn"],
         "allowed: one of mlp, made, pixelcnn, lstm"),
    Case("lstm decoder on pixels", ["run", "--set", "model.decoder=lstm"],
         "models token sequences; allowed for digits: mlp, made, pixelcnn"),
    Case("even pixelcnn kernel", ["run", "--set", "model.decoder=pixelcnn", "--set",
                                  "model.pixelcnn_kernel=4"], "an odd int >= 1"),
    Case("autoregressive decoder on real data", ["run", "--dataset", "linear-gaussian", "--set",
                                                 "model.decoder=made"], "allowed for "
         "linear-gaussian: mlp"),
    Case("validation split too large", ["run", "--set", "train.validation_size=5000"],
         "allowed: 0 .. 1496"),
    Case("missing data directory", ["--data-dir", "{tmp}/nowhere", "run", "--dataset",
                                    "fashion-mnist"], "dataset 'fashion-mnist' not found; tried"),
    Case("truncated data file", ["--data-dir", "{tmp}/data", "run", "--dataset", "mnist"],
         "truncated", setup=lambda t: fake_mnist(t, "truncated")),
    Case("wrong magic", ["--data-dir", "{tmp}/data", "run", "--dataset", "mnist"],
         "bad magic number 00000903", setup=lambda t: fake_mnist(t, "magic")),
    Case("wrong digest", ["--data-dir", "{tmp}/data", "run", "--dataset", "mnist"],
         "sha256 of decoded mnist/train-images is", setup=lambda t: fake_mnist(t, "none")),
    Case("not a run directory", ["evaluate", "{tmp}"], "is not a run directory"),
    Case("checkpoint not ours", ["evaluate", "{run}"], "not a vae-bench state dict",
         setup=lambda t: foreign_checkpoint(t, "tensors")),
    Case("pickle payload", ["evaluate", "{run}"], "(Weights only load failed.",
         setup=lambda t: foreign_checkpoint(t, "pickle")),
    Case("npz header claiming 400 TB", ["run", "--dataset", "{tmp}/huge.npz"],
         "its arrays claim 372,529.0 GiB (array 'train'", setup=lambda t: huge_npz(t)),
    Case("npz link to /dev/zero", ["run", "--dataset", "{tmp}/zero.npz"],
         "zero.npz: not a regular file", setup=lambda t: (t / "zero.npz").symlink_to("/dev/zero")),
    Case("unwritable results", ["run", *SMALL, "--out", "/proc/vae-bench"],
         "/proc/vae-bench: results directory is not writable", code=1),
    Case("unwritable suite results", ["suite", "--profile", "smoke", "--results", "/proc/x"],
         "/proc/x/smoke/runs: results directory is not writable", code=1),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, existing, tmp_path, capsys):
    if case.name == "cuda absent" and torch.cuda.is_available():
        pytest.skip("CUDA is present on this machine")
    if case.name == "missing data directory" and data.DEBIAN_FASHION.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is installed: fashion-mnist is found")
    shutil.copytree(existing, tmp_path, dirs_exist_ok=True)
    if case.setup:
        case.setup(tmp_path)
    before = digest_tree(tmp_path)
    run = next((tmp_path / "runs").glob("vae-*"))
    args = [a.format(tmp=tmp_path, run=run) for a in case.args]
    if args[0] == "suite" and "--results" not in args:
        args += ["--results", str(tmp_path / "results")]
    if "run" in args and "--out" not in args:
        args += ["--out", str(tmp_path / "runs")]
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == case.code, lines
    assert case.needle in lines[-1], lines
    assert len(lines) == 1 or lines[0].startswith("usage:"), lines
    assert digest_tree(tmp_path) == before, "something already written changed"
