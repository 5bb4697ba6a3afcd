"""Nothing lost and nothing wrongly trusted when the machine fails: a full disk, records of
machine faults retried, damaged records named, set aside and retrained, foreign checkpoints
skipped, transient failures told apart from permanent ones."""

import json
import os
from pathlib import Path

import pytest
import torch

from bench import results
from bench.config import RunConfig, apply_overrides, resolve
from bench.grid.backends import transient
from bench.grid.runner import execute
from bench.grid.suite import dry_run, load_profile, run_suite
from bench.identity import checkpoint_dir, run_name
from bench.report import summarize
from bench.training.checkpoints import Checkpoints
from variants.errors import ConfigError


def statuses(path: Path) -> list[str]:
    return sorted(json.loads((d / "metrics.json").read_text())["status"]
                  for d in path.iterdir() if not d.name.startswith("."))


def finished_lagging_grid(lagging_toml, tmp_path):
    """The lagging grid trained in ``tmp_path / "results"``: (its profile, its runs folder)."""
    profile = load_profile(str(lagging_toml()))
    run_suite(profile, tmp_path / "results", progress=False)
    return profile, tmp_path / "results" / "lag" / "runs"


def test_a_full_disk_then_room_again_ends_with_every_run_ok(tmp_path, monkeypatch, lagging_toml):
    """The disk fills up while the pretrained decoders' weights are written (torch reports it as
    "unexpected pos"): nothing is recorded as failed; once there is room, a resume finishes
    every run, with no manual deletion."""
    profile = load_profile(str(lagging_toml()))
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(results.torch, "save", full_disk)
    first = run_suite(profile, tmp_path / "results", progress=False)
    assert first["pretrained decoders failed (not recorded: retried on resume)"] == 2
    assert first["failed (not recorded: retried on resume)"] == 4  # each tried its decoder
    runs = tmp_path / "results" / "lag" / "runs"
    assert not [d for d in runs.iterdir() if not d.name.startswith(".")]  # nothing trusted
    assert not list(runs.glob(".*.*"))  # no temporaries left behind
    monkeypatch.setattr(results.torch, "save", real_save)
    second = run_suite(profile, tmp_path / "results", progress=False)
    assert second["ok"] == 4 and second["pretrained decoders ok"] == 2
    assert statuses(runs) == ["ok"] * 6


def test_old_failed_records_of_a_machine_fault_are_retried(tmp_path, lagging_toml):
    profile, runs = finished_lagging_grid(lagging_toml, tmp_path)
    victim = next(d for d in runs.iterdir() if d.name.startswith("beta"))
    metrics = json.loads((victim / "metrics.json").read_text())
    (victim / "metrics.json").write_text(json.dumps({
        "status": "failed", "error": "ConfigError: pretrained decoder run decoder-only-x has "
        "status 'failed'; allowed: a finished run (remove it to retrain)"}))
    assert run_suite(profile, tmp_path / "results", progress=False)["ok"] == 1
    again = json.loads((victim / "metrics.json").read_text())
    assert again["status"] == "ok" and again["nll_is"] == metrics["nll_is"]
    assert len(list((runs / ".damaged").iterdir())) == 1  # the old record kept aside


@pytest.mark.parametrize("damage", ["broken-json", "list", "text-metric", "no-metrics",
                                    "broken-config", "broken-history", "boolean-metric",
                                    "nan-nll", "text-count"])
def test_a_damaged_record_is_named_set_aside_and_retrained(tmp_path, capsys, damage):
    cfg = resolve(apply_overrides(RunConfig(), {"dataset": "digits", "dtype": "float64",
                                                "model.hidden": "16", "model.latent_dim": 4,
                                                "train.epochs": 1, "eval.is_samples": 10}))
    path = execute(cfg, tmp_path)
    before = json.loads((path / "metrics.json").read_text())
    edit = {"broken-json": ("metrics.json", '{"status": "ok", '),
            "list": ("metrics.json", "[]"),
            "text-metric": ("metrics.json", json.dumps({**before, "nll_is": "ninety"})),
            "boolean-metric": ("metrics.json", json.dumps({**before, "nll_is": True})),
            "nan-nll": ("metrics.json", json.dumps({**before, "nll_is": float("nan")})),
            "text-count": ("metrics.json", json.dumps({**before, "active_units": "4"})),
            "broken-config": ("config.json", "{"),
            "broken-history": ("history.csv", "garbage\n")}
    if damage == "no-metrics":
        (path / "metrics.json").unlink()
    else:
        name, text = edit[damage]
        (path / name).write_text(text)
    why = results.damage(path)
    assert why and str(path) in why
    capsys.readouterr()
    again = execute(cfg, tmp_path)
    err = capsys.readouterr().err
    assert f"moved to {tmp_path / '.damaged'}" in err and why in err
    after = json.loads((again / "metrics.json").read_text())
    assert after["nll_is"] == before["nll_is"]
    assert len(list((tmp_path / ".damaged").iterdir())) == 1


def test_dry_run_and_report_name_a_damaged_record(tmp_path, lagging_toml):
    profile, runs = finished_lagging_grid(lagging_toml, tmp_path)
    victim = next(d for d in runs.iterdir() if d.name.startswith("vae"))
    (victim / "metrics.json").write_text("{")
    rows, _ = dry_run(profile, tmp_path / "results")
    bad = [r for r in rows if r["status"] == "damaged"]
    assert len(bad) == 1 and str(victim / "metrics.json") in bad[0]["why"]
    summary = summarize(profile, tmp_path / "results")
    row = summary[summary["run"] == victim.name].iloc[0]
    assert row["status"] == "damaged" and str(victim) in row["error"]


def test_a_foreign_checkpoint_is_skipped_in_one_line(tmp_path, capsys):
    over = {"dataset": "digits", "dtype": "float64", "model.hidden": "16",
            "model.latent_dim": 4, "train.epochs": 3, "eval.is_samples": 10}
    whole = json.loads((execute(apply_overrides(RunConfig(), over), tmp_path / "whole")
                        / "metrics.json").read_text())
    cfg = resolve(apply_overrides(RunConfig(), {**over, "train.checkpoint_every": 1}))
    other = resolve(apply_overrides(RunConfig(), {**over, "model.latent_dim": 6}))
    folder = checkpoint_dir(tmp_path / "part" / run_name(cfg))
    # a snapshot of another model (another code version's, or another run's) in its place
    from bench.training import trainer as train
    real = train.fit
    saved = {}

    def keep_first(*args, **kwargs):
        kwargs["checkpoints"].save = lambda e, st: saved.setdefault(e, st)
        return real(*args, **kwargs)

    import bench.grid.runner as runner
    runner.fit = keep_first
    try:
        execute(apply_overrides(other, {"train.checkpoint_every": 1}), tmp_path / "other")
    finally:
        runner.fit = real
    folder.mkdir(parents=True)
    torch.save({**saved[2], "run": None}, folder / "epoch-000002.pt")
    capsys.readouterr()
    part = json.loads((execute(cfg, tmp_path / "part") / "metrics.json").read_text())
    err = capsys.readouterr().err
    assert "does not match this run's model" in err and len(err.strip().splitlines()) == 1
    stable = {k: v for k, v in part.items() if "seconds" not in k and k not in ("run_id",
                                                                               "train_samples_per_s")}
    assert stable == {k: whole[k] for k in stable}
    # another run's snapshot by name: refused by identity
    ck = Checkpoints(tmp_path / "ck", 1, identity="this-run")
    ck.save(1, {**saved[2], "run": None})
    assert Checkpoints(tmp_path / "ck", 1, identity="another-run").latest() is None
    assert "is a snapshot of another run (this-run)" in capsys.readouterr().err


def test_a_checkpoint_missing_keys_is_skipped_for_the_one_before_it(tmp_path, capsys):
    """The right shapes but fewer keys (a resume would raise KeyError on every rerun): skipped
    in one line like a corrupt one, and the one before it is used."""
    from bench.training.checkpoints import SNAPSHOT_KEYS

    ck = Checkpoints(tmp_path / "ck", 1, identity="run")
    full = {k: 0 for k in SNAPSHOT_KEYS} | {"model": {}, "rng": {}}
    ck.save(1, {**full, "epoch": 1})
    ck.save(2, {k: v for k, v in full.items() if k not in ("initial", "optimizers")})
    capsys.readouterr()
    state = ck.latest()
    err = capsys.readouterr().err.strip().splitlines()
    assert state is not None and state["epoch"] == 1
    assert len(err) == 1 and "epoch-000002.pt lacks initial, optimizers of a mid-run " \
        "checkpoint" in err[0], err


def test_a_checkpoint_on_a_full_disk_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1 vs 2")

    monkeypatch.setattr(results.torch, "save", full)
    with pytest.raises(OSError, match=r"cannot write epoch-000001.tmp \(\[enforce fail"):
        Checkpoints(tmp_path / "ck", 1).save(1, {"model": {}})
    assert not list((tmp_path / "ck").iterdir())


def test_transient_and_permanent_failures_are_told_apart():
    assert transient(OSError(28, "No space left on device"))
    assert transient(RuntimeError("[enforce fail at inline_container.cc] unexpected pos 5"))
    assert transient(MemoryError())
    assert not transient(ConfigError("model.decoder=x is invalid"))
    assert not transient(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_a_run_whose_nll_is_not_finite_is_written_as_failed_not_as_finished(tmp_path):
    target = tmp_path / "run"
    results.write_run(target, config={"variant": "vae", "model": {}, "train": {}, "eval": {}},
                      metrics={"status": "ok", "nll_is": float("nan"), "neg_elbo": 1.0,
                               "kl": 0.5}, history=[], env={}, state_dict=None)
    metrics = json.loads((target / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "'nll_is' is nan" in metrics["error"]
    assert results.damage(target) is None  # a failed record, not a damaged one


@pytest.mark.parametrize("damage_it, why", [
    (lambda rd: (rd / "env.json").write_text("{not json"), "env.json or history.csv unreadable"),
    (lambda rd: (rd / "env.json").write_text("[1, 2]"), "env.json: not a JSON object"),
    (lambda rd: (rd / "history.csv").write_text((rd / "history.csv").read_text()
                                                 + ",".join(map(str, range(1, 40))) + "\n"),
     "fields where the header has"),
    (lambda rd: (rd / "history.csv").write_text(
        (rd / "history.csv").read_text().replace("\n1,", "\nabc,", 1)), "epoch 'abc' is not a count"),
    (lambda rd: (rd / "history.csv").write_bytes(b"epoch,\xff\xfe\n"), "not UTF-8 text"),
    (lambda rd: ((rd / "metrics.json").unlink(), os.mkfifo(rd / "metrics.json")),
     "unreadable (ValueError)"),
])
def test_a_record_with_a_broken_env_history_or_a_fifo_is_damaged_not_read(tmp_path, damage_it,
                                                                            why):
    """env.json, history.csv and metrics.json as a FIFO: named damaged in one line (never a
    traceback, never a reader blocked on a FIFO); the report lists the run as damaged."""
    cfg = apply_overrides(RunConfig(), {"dataset": "digits", "model.hidden": [8],
                                        "model.latent_dim": 2, "train.epochs": 1,
                                        "eval.is_samples": 4, "eval.test_points": 20})
    run = execute(cfg, tmp_path)
    assert results.damage(run) is None
    damage_it(run)
    assert why in results.damage(run)


def test_a_corrupt_preview_is_left_out_of_the_figure_in_one_line(tmp_path, capsys):
    from bench.report.figures import _preview_rows

    (tmp_path / "previews.npz").write_bytes(b"PK\x03\x04garbage")
    assert _preview_rows(tmp_path / "previews.npz") is None
    assert "not a readable preview" in capsys.readouterr().err


def test_a_file_larger_than_the_memory_left_is_not_read_whole(tmp_path, monkeypatch, capsys):
    """Records, checkpoints and weights are checked against the memory the process may still
    use before they are read (here the room is made 100 bytes)."""
    from bench.machine import budget

    (tmp_path / "metrics.json").write_text(json.dumps({"x": "y" * 200}))
    ckpt = Checkpoints(tmp_path / "ck", every=1)
    ckpt.save(1, {"epoch": 1, "step": 1, "model": {"w": torch.zeros(100)}, "rng": {}})
    monkeypatch.setattr(budget, "available_bytes", lambda: 100)
    with pytest.raises(ValueError, match="more than the 100 bytes this process may still use"):
        results.read_json(tmp_path / "metrics.json")
    assert ckpt.latest() is None
    assert "more than the 100 bytes this process may still use" in capsys.readouterr().err
