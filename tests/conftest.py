# ruff: noqa: I001  (the import order matters: bench before torch)
import bench  # noqa: F401  first: it sets the numerics mode before torch loads (bench.machine.numerics)
import pytest
import torch


# A lagging grid small enough for tests: 2 configurations x 2 seeds, MADE decoders, each
# starting from a pretrained decoder (one per seed).
LAGGING = """
[profile]
description = "lagging grid"
seeds = [0, 1]

[defaults]
dataset = "digits"
dtype = "float64"
"model.hidden" = [16]
"model.latent_dim" = 4
"model.decoder" = "made"
"model.decoder_hidden" = [16]
"train.epochs" = {epochs}
"train.decoder_pretrain_epochs" = 1
"eval.is_samples" = 10

[[config]]
label = "vae"
variant = "vae"

[[config]]
label = "beta=2"
variant = "beta"
beta = 2.0
"""


@pytest.fixture
def lagging_toml(tmp_path):
    """``lagging_toml(epochs=2)``: ``LAGGING`` written to ``tmp_path / "lag.toml"``, its path."""
    def write(epochs: int = 2):
        path = tmp_path / "lag.toml"
        path.write_text(LAGGING.format(epochs=epochs))
        return path
    return write


@pytest.fixture(autouse=True)
def _single_thread_default_dtype():
    """Tests run on a 2-core CI machine: keep torch to its defaults, restore the dtype after."""
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


class StoppedAfterCheckpoint(Exception):
    """Raised by ``stop_after_checkpoint`` right after a run's checkpoint of a given epoch: the
    files a kill at that moment leaves behind."""


@pytest.fixture
def stop_after_checkpoint(monkeypatch):
    """``stop_after_checkpoint(epoch)``: from then on, a run (``bench.grid.runner.execute``) stops
    with ``StoppedAfterCheckpoint`` right after writing its checkpoint of ``epoch``."""
    from bench.grid import runner

    real_fit = runner.fit

    def arm(epoch: int) -> None:
        def fit(*args, **kwargs):
            ckpt = kwargs["checkpoints"]
            save = ckpt.save

            def save_then_stop(e, state):
                save(e, state)
                if e == epoch:
                    raise StoppedAfterCheckpoint

            ckpt.save = save_then_stop
            return real_fit(*args, **kwargs)

        monkeypatch.setattr(runner, "fit", fit)

    yield arm
    monkeypatch.setattr(runner, "fit", real_fit)
