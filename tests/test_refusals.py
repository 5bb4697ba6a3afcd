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
