"""User errors end in one line before anything trains: profile mistakes, settings given twice,
sizes that cannot fit, values outside their range, a variant's preconditions; a run that
diverges says so."""

import time

import pytest

from bench.cli import main


def one_line(argv, capsys, code=2) -> str:
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err), err
    return err[-1]


@pytest.mark.parametrize("text, message", [
    ('inherits = "SELF"\n', "profile inheritance loops"),
    ('profile = 3\n[[config]]\nlabel = "a"\nvariant = "vae"\n', "profile = 3 is invalid"),
    ('[[config]]\nlabel = 3\nvariant = "vae"\n', "label and variant must be strings"),
    ('[profile]\nseeds = [0, 0]\n[[config]]\nlabel = "a"\nvariant = "vae"\n',
     "repeats a seed"),
    ('[[config]]\nlabel = "a"\nvariant = "vae"\nseed = 5\n', "sets seed; allowed: seeds only"),
    ('[profile]\nseed = [0]\n[[config]]\nlabel = "a"\nvariant = "vae"\n',
     "unknown [profile] key 'seed'; allowed: baseline, budget, collapse_kl"),
    ('[profile]\ncollapse_kl = 0\n[[config]]\nlabel = "a"\nvariant = "vae"\n',
     "collapse_kl=0 is invalid; allowed: a number of nats > 0"),
    ('[profile]\ncontrol = { profile = "trained" }\n[[config]]\nlabel = "a"\nvariant = "vae"\n',
     "is invalid; allowed: a table with profile (another profile's name), group"),
])
def test_profile_mistakes_end_in_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "p.toml"
    path.write_text(text.replace("SELF", str(path)))
    err = one_line(["suite", "--profile", str(path), "--results", str(tmp_path / "r")], capsys)
    assert message in err, err


def test_unreadable_profiles_end_in_one_line(tmp_path, capsys):
    (tmp_path / "latin.toml").write_bytes(b'[profile]\ndescription = "caf\xe9"\n')
    assert "not UTF-8 text" in one_line(["suite", "--profile", str(tmp_path / "latin.toml")],
                                        capsys)
    assert "cannot read it" in one_line(["suite", "--profile", str(tmp_path / "none.toml")],
                                        capsys)


def test_a_setting_given_twice_is_refused(capsys):
    err = one_line(["run", "--epochs", "1", "--set", "epochs=2"], capsys)
    assert "set the same value twice" in err
    err = one_line(["run", "--variant", "beta", "--set", "beta=2", "--set", "beta=3"], capsys)
    assert "set the same value twice" in err


@pytest.mark.parametrize("setting", ["model.latent_dim=100000000", "model.hidden=1000000000",
                                     "k=1000000000"])
def test_sizes_that_cannot_fit_are_refused_before_allocating(capsys, setting):
    variant = "iwae" if setting.startswith("k=") else "vae"
    err = one_line(["run", "--variant", variant, "--set", setting], capsys)
    assert "needs an estimated" in err and "VAE_BENCH_MEMORY_CHECK=0" in err


def _limits_at(monkeypatch, tmp_path, *, cgroup=None, v1=None, rlimit=None, vmsize=0):
    """Point the memory check at files of this test: MemAvailable 16 GiB, and the cgroup (v2
    ``(max, current)`` or v1 ``(limit, usage)``) and ``ulimit -v`` given."""
    from bench.machine import budget

    gib = 2**30
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "meminfo").write_text(f"MemTotal: {32 * gib // 1024} kB\n"
                                      f"MemAvailable: {16 * gib // 1024} kB\n")
    (tmp_path / "status").write_text(f"Name: python\nVmSize: {vmsize // 1024} kB\n")
    for sub, files, values in (("v2", ("memory.max", "memory.current"), cgroup),
                               ("v1", ("memory.limit_in_bytes", "memory.usage_in_bytes"), v1)):
        (tmp_path / sub).mkdir()
        for name, value in zip(files, values or (), strict=False):
            (tmp_path / sub / name).write_text(f"{value}\n")
    monkeypatch.setattr(budget, "MEMINFO", str(tmp_path / "meminfo"))
    monkeypatch.setattr(budget, "PROC_STATUS", str(tmp_path / "status"))
    monkeypatch.setattr(budget, "CGROUP_V2", str(tmp_path / "v2"))
    monkeypatch.setattr(budget, "CGROUP_V1", str(tmp_path / "v1"))
    import resource
    monkeypatch.setattr(resource, "getrlimit", lambda _: (rlimit or resource.RLIM_INFINITY,) * 2)
    return budget


def test_the_memory_check_takes_the_smallest_of_memavailable_the_cgroup_and_ulimit(
        monkeypatch, tmp_path):
    gib = 2**30
    budget = _limits_at(monkeypatch, tmp_path, cgroup=("max", gib))  # v2 without a limit
    assert budget.limits() == {"available memory": 16 * gib}
    budget = _limits_at(monkeypatch, tmp_path / "a", cgroup=(4 * gib, 3 * gib))
    assert budget.limits()["the cgroup's memory limit"] == gib and budget.available_bytes() == gib
    budget = _limits_at(monkeypatch, tmp_path / "b", v1=(2**63 - 4096, gib))  # v1: no limit
    assert "the cgroup's memory limit" not in budget.limits()
    budget = _limits_at(monkeypatch, tmp_path / "c", v1=(8 * gib, 5 * gib), rlimit=6 * gib,
                        vmsize=4 * gib)
    assert budget.limits() == {"available memory": 16 * gib, "the cgroup's memory limit":
                               3 * gib, "the address-space limit (ulimit -v)": 2 * gib}
    assert budget.available_bytes() == 2 * gib


@pytest.mark.parametrize("limit, named", [
    ({"cgroup": (3 * 2**30, 2**30)}, "the cgroup's memory limit"),
    ({"rlimit": 2**31, "vmsize": 2**30}, "the address-space limit (ulimit -v)"),
])
def test_a_run_over_a_container_or_ulimit_limit_is_refused_naming_it(monkeypatch, tmp_path,
                                                                      capsys, limit, named):
    _limits_at(monkeypatch, tmp_path / "l", **limit)
    # ~1.5 GiB of parameters with Adam's state: under MemAvailable (16 GiB), over the limit
    err = one_line(["run", "--set", "model.hidden=20000,4000"], capsys)
    assert "needs an estimated" in err and f"GiB are available ({named})" in err, err


def test_a_pixelcnn_kernel_larger_than_the_image_is_refused(capsys):
    err = one_line(["run", "--dataset", "digits", "--set", "model.decoder=pixelcnn", "--set",
                    "model.pixelcnn_kernel=99999"], capsys)
    assert "allowed: an odd int <= 15" in err


@pytest.mark.parametrize("setting, message", [
    (["--set", "eval.test_points=1"], "eval.test_points=1 is invalid"),
    (["--set", "eval.test_points=1000000000"], "eval.test_points=1000000000 is invalid for digits"),
    (["--variant", "delta-vae", "--set", "delta=1e9"], "delta='1e9' is invalid; allowed: float in [0, 50]"),
])
def test_evaluation_and_variant_sizes_outside_their_range_are_refused(tmp_path, capsys, setting,
                                                                      message):
    err = one_line(["run", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path),
                    *setting], capsys)
    assert message in err, err
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


def test_a_run_that_diverges_says_so_and_exits_1(tmp_path, capsys):
    err = one_line(["run", "--dataset", "digits", "--epochs", "2", "--out", str(tmp_path),
                    "--set", "train.lr=1e30", "--set", "train.clip=0"], capsys, code=1)
    assert err.startswith("vae-bench: the run diverged at step")


def test_a_variant_precondition_is_checked_before_training(tmp_path, capsys):
    """Aggressive's switch-off reads the validation split: without one the run is refused at
    once, not after a first epoch of training."""
    start = time.monotonic()
    err = one_line(["run", "--variant", "aggressive", "--dataset", "digits", "--out",
                    str(tmp_path), "--set", "train.validation_size=0"], capsys)
    assert "validation" in err and time.monotonic() - start < 30
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
