"""The report's comparisons against hand computations on a synthetic summary."""

import math

import pandas as pd
import pytest
from scipy import stats

from bench.grid.suite import load_profile
from bench.report import main_table, paired_differences, paired_table, reading, reference_section


def summary(rows):
    """rows: (configuration, seed, nll, kl, mi, train_seconds) in one group 'g'."""
    return pd.DataFrame([{"label": f"g / {c}", "group": "g", "variant": c, "seed": s,
                          "status": "ok", "nll_is": n, "kl": k, "mutual_info": m,
                          "train_seconds": t, "neg_elbo": n + 1, "active_units": 3,
                          "active_units_strict": 1, "recon": n - k}
                         for c, s, n, k, m, t in rows])


DATA = summary([
    ("vae", 0, 90.0, 0.3, 0.2, 10.0), ("vae", 1, 91.0, 0.5, 0.4, 12.0),
    ("vae", 2, 92.0, 0.4, 0.3, 11.0),
    ("floor", 0, 90.5, 0.0, 0.0, 9.0), ("floor", 1, 91.5, 0.0, 0.0, 9.0),
    ("floor", 2, 92.5, 0.0, 0.0, 9.0),
    ("fix", 0, 89.0, 5.0, 3.0, 33.0), ("fix", 1, 90.2, 6.0, 3.5, 33.0),
    ("fix", 2, 90.9, 5.5, 3.2, 33.0),
    ("noisy", 0, 88.0, 2.0, 1.0, 11.0), ("noisy", 2, 95.0, 2.0, 1.0, 11.0),  # seed 1 failed
])


def test_paired_differences_are_t_intervals_over_the_common_seeds():
    d = paired_differences(DATA, "vae")
    diffs = [-1.0, -0.8, -1.1]  # fix - vae, seed by seed
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 2)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)  # 4.303 * sd / sqrt 3
    assert d["fix"]["nll_is"][0] == pytest.approx(mean)
    assert d["fix"]["nll_is"][1] == pytest.approx(half)
    assert d["noisy"]["nll_is"][2] == 2  # only seeds 0 and 2 pair
    assert d["noisy"]["nll_is"][0] == pytest.approx((-2.0 + 3.0) / 2)
    table = paired_table(DATA, "vae").set_index("configuration")
    assert table.loc["fix", "ΔNLL"].endswith("*")  # [-1.38, -0.55]: excludes 0
    assert not table.loc["noisy", "ΔNLL"].endswith("*")  # 2 seeds, wide interval
    assert "vae" not in table.index


def test_cost_column_is_training_time_relative_to_the_baseline():
    table = main_table(DATA, "vae").set_index("configuration")
    assert table.loc["vae", "cost (x vae)"] == "1.00 (1.00–1.00)"
    # 33 / 11 on average; seed by seed 33/10, 33/12, 33/11
    assert table.loc["fix", "cost (x vae)"] == "3.00 (2.75–3.30)"
    # over the seeds both finished (0 and 2): 11 / mean(10, 11), not 11 / mean of vae's 3 seeds
    assert table.loc["noisy", "cost (x vae)"] == "1.05 (1.00–1.10)"  # 11/11, 11/10 (seeds 2, 0)
    # the baseline missing a seed: fix over seeds 0 and 2 only, 33 / mean(10, 11)
    partial = main_table(DATA[~((DATA.variant == "vae") & (DATA.seed == 1))], "vae")
    assert partial.set_index("configuration").loc["fix", "cost (x vae)"] == "3.14 (3.00–3.30)"
    assert "cost (x vae)" not in main_table(DATA).columns


def test_reading_names_collapse_kl_above_one_nat_and_what_beats_the_floor():
    text = reading(DATA, "vae", "floor")
    assert "The plain `vae` collapsed (KL below 1 nat): KL 0.40" in text
    assert "KL above 1 nat: fix, noisy; below: vae." in text
    # fix - floor = -1.5, -1.3, -1.6: an interval below 0; vae - floor = -0.5 exactly each seed
    assert "lower NLL, interval excluding 0: vae (-0.50), fix (-1.47)" in text
    assert "not distinguishable: noisy" in text
    assert "Best NLL: fix (90.03)" in text
    assert "Most expensive: fix, 3.0x the training time of `vae`." in text
    # where every configuration trained faster than the baseline, the sentence says so
    cheap = reading(DATA[DATA["variant"].isin(["vae", "floor"])], "vae", "floor")
    assert "None trained slower than `vae` (at most floor, 0.8x)." in cheap
    assert "Most expensive" not in cheap
    # a profile's collapse_kl moves the line: at 0.35 nats vae's 0.40 no longer reads collapsed
    lower = reading(DATA, "vae", "floor", collapse_kl=0.35)
    assert "The plain `vae` did not collapse: KL 0.40" in lower
    assert "KL above 0.35 nats: vae, fix, noisy; below: none." in lower


def test_default_profile_sets_the_reference_table_beside_ours():
    profile = load_profile("default")
    assert profile.baseline == "vae" and profile.floor == "decoder-only"
    lines = reference_section(profile)
    assert "He et al. 2019, Table 1: OMNIGLOT" in lines[1]
    assert "| aggressive | 89.03 | 2.5 | 2.2 |" in lines[3]


def test_active_units_by_layer_are_averaged_per_layer_over_seeds():
    # Two stochastic layers report "layer1+layer2" (Burda et al. 2016); the table averages each
    # layer over seeds, and a one-layer configuration in the same table shows "-".
    data = DATA.copy()
    data["active_units_by_layer"] = None
    fix = data["variant"] == "fix"
    data.loc[fix, "active_units_by_layer"] = ["20+3", "21+2", "19+4"]
    table = main_table(data, "vae").set_index("configuration")
    assert table.loc["fix", "AU by layer"] == "20.0+3.0"
    assert table.loc["vae", "AU by layer"] == "-"
    assert "AU by layer" not in main_table(DATA, "vae").columns  # absent without such models


def test_reading_of_a_group_with_the_baseline_alone():
    # found on the paper-stages profile: one configuration per group used to fail on the
    # empty cost comparison
    text = reading(DATA[DATA["variant"] == "vae"], "vae", "floor")
    assert "The plain `vae` collapsed" in text and "Best NLL: vae (91.00)." in text
    assert "Most expensive" not in text


def test_stage_table_takes_the_last_epoch_of_each_learning_rate_stage(tmp_path):
    from bench.report import stage_table

    profile = load_profile("smoke")
    rows = []
    for seed, shift in ((0, 0.0), (1, 2.0)):
        run = tmp_path / profile.name / "runs" / f"r{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text("{}")
        (run / "config.json").write_text("{}")
        pd.DataFrame({"epoch": [1, 2, 3, 4], "lr": [1e-3, 5e-4, 5e-4, 5e-4],
                      "neg_elbo": [10.0, 9.0, 8.0, 7.0 + shift],
                      "val_neg_elbo": [11.0, 10.0, 9.0, 8.0 + shift],
                      "val_active_units_by_layer": ["3+1", "3+1", "2+1", "2+0"]}
                     ).to_csv(run / "history.csv", index=False)
        rows.append({"label": "vae", "status": "ok", "run": f"r{seed}"})
    table = stage_table(profile, pd.DataFrame(rows), tmp_path)
    assert table["epoch"].tolist() == [1, 4] and table["seeds"].tolist() == [2, 2]
    assert table["lr"].tolist() == ["0.001", "0.0005"]
    assert table.loc[1, "train -ELBO"] == "8.00 ± 1.41"  # 7 and 9
    assert table.loc[1, "val AU by layer"] == "2.0+0.0"
    assert "val KL" not in table  # no run of the table has it


@pytest.mark.parametrize("screen, trained, expected", [
    ((-1.0, 0.5), (-2.0, 0.5), "held"),     # both below 0
    ((0.2, 0.5), (-0.1, 0.5), "held"),      # neither excludes 0
    ((-1.0, 0.5), (1.0, 0.5), "reversed"),
    ((-1.0, 0.5), (-0.3, 0.5), "lost"),
    ((0.1, 0.5), (3.0, 0.5), "new"),
    ((1.0, float("nan")), (3.0, 0.5), "n/a"),  # one seed: no interval
])
def test_screening_verdicts(screen, trained, expected):
    from bench.report.screening import verdict
    assert verdict(screen, trained) == expected


def test_screening_table_pairs_each_configuration_with_its_screening_conclusion():
    from bench.report.screening import screening_counts, screening_reading, screening_table
    # trained: `fix` still beats vae on NLL and KL; `noisy` now differs clearly on KL
    trained = summary([
        ("vae", 0, 80.0, 0.3, 0.2, 1.0), ("vae", 1, 81.0, 0.5, 0.4, 1.0),
        ("vae", 2, 82.0, 0.4, 0.3, 1.0),
        ("fix", 0, 79.0, 5.0, 0.2, 1.0), ("fix", 1, 80.1, 6.0, 0.4, 1.0),
        ("fix", 2, 81.2, 5.5, 0.3, 1.0),
        ("noisy", 0, 80.0, 9.0, 1.0, 1.0), ("noisy", 2, 82.0, 9.1, 1.1, 1.0),
        ("only-here", 0, 80.0, 1.0, 1.0, 1.0),
    ])
    table = screening_table(trained, DATA, "vae").set_index("configuration")
    assert "only-here" not in table.index and "floor" not in table.index  # not in both
    fix = table.loc["fix"]
    # screening: fix - vae NLL -1.0, -0.8, -1.1 (excludes 0); trained -1.0, -0.9, -0.8
    assert fix["ΔNLL screening"] == "-0.97 *" and fix["ΔNLL trained"] == "-0.90 *"
    assert fix["NLL"] == "held" and fix["KL"] == "held"
    assert fix["MI"] == "lost"  # MI +2.93 * in screening, exactly 0 on trained models
    noisy = table.loc["noisy"]  # seeds 0 and 2: KL +1.7, +1.6 in screening; +8.7 twice trained
    assert noisy["KL"] == "held" and noisy["ΔKL trained"].endswith("*")
    counts = screening_counts(table.reset_index())
    assert sum(counts.values()) == 6 and counts["lost"] >= 1
    reading = screening_reading(table.reset_index())
    assert reading.startswith("Of 6 screening conclusions") and "lost: g / fix MI" in reading
    # a configuration with one trained seed has no interval: counted apart, not as "not held"
    one = screening_table(trained[trained["seed"] == 0], DATA, "vae")
    assert set(one["NLL"]) == {"n/a"}
    assert screening_reading(one).startswith(
        f"Of 0 screening conclusions (configuration x ΔNLL/ΔKL/ΔMI), 0 held on trained models "
        f"({3 * len(one)} more not yet comparable")


def test_schedule_is_the_suites_two_stages_on_greedy_workers():
    from bench.report.compute import schedule
    # decoder 2; then runs 3, 1, 1, 1 on 2 workers: [5, 3] -> [5, 4] -> [5, 5]
    assert schedule([2.0], [3.0, 1.0, 1.0, 1.0], 1) == 8.0
    assert schedule([2.0], [3.0, 1.0, 1.0, 1.0], 2) == 5.0
    # in submission order, not the best order: 1, 1, 3 on 2 workers ends at 4 (LPT: 3)
    assert schedule([], [1.0, 1.0, 3.0], 2) == 4.0
    # the runs wait for every decoder: decoders 5 and 1 on 2 workers, then a run of 1
    assert schedule([5.0, 1.0], [1.0], 2) == 6.0
    assert schedule([], [4.0, 4.0], 8) == 4.0  # more workers than runs


def test_compute_section_sums_each_run_and_the_pretrained_decoders_it_started_from(tmp_path):
    from bench.report.compute import compute_section, compute_table
    data = DATA.copy()  # train_seconds 9-33 s; add diagnostics and evaluation
    data["diagnostics_seconds"], data["eval_seconds"] = 6.0, 3.0
    data["stopped_epoch"] = [25, 25, 20, 7, 9, 11, 25, 25, 25, 25, 25]
    data["pretrained_decoder"] = "decoder-only-s0"
    (tmp_path / "decoder-only-s0").mkdir()
    (tmp_path / "decoder-only-s0" / "metrics.json").write_text(
        '{"train_seconds": 100.0, "diagnostics_seconds": 20.0, "eval_seconds": 0.0}')
    table = compute_table(data).set_index("configuration")
    fix = table.loc["g / fix"]  # 3 runs of 33 + 6 + 3 = 42 s: 0.7 min each, 2.1 min in all
    assert fix["runs"] == 3 and fix["min/run"] == "0.7" and fix["min, all runs"] == "2.1"
    assert table.loc["g / floor", "epochs"] == "7–11" and table.loc["g / vae", "epochs"] == "20–25"
    section = compute_section(data, tmp_path)
    text = next(line for line in section if line.startswith("Summed"))
    grid = (10 + 12 + 11 + 9 * 3 + 33 * 3 + 11 * 2) + 9 * 11  # train, then diagnostics + eval
    assert f"Summed over the 11 finished runs: {grid / 3600:.2f} h" in text
    assert f"2.0 min for the 1 pretrained decoder they start from: {(grid + 120) / 3600:.2f} h" in text
    assert "Longest run: g / fix seed 0, 0.7 min" in text
    # the wall time on W workers: 1 worker is the sum; the floor is decoder + longest run
    wall = section[-1]
    assert f"1: {(grid + 120) / 3600:.2f} h, 2: " in wall
    assert f"no number of workers goes below {(120 + 42) / 3600:.2f} h" in wall
    # a run that did not finish is named as not counted
    data.loc[data.index[-1], "status"] = "missing"
    assert any("1 run not finished, not counted" in line
               for line in compute_section(data, tmp_path))


def test_the_wall_time_line_takes_the_runs_in_the_suites_submission_order():
    from bench.report.compute import submission_order
    frame = pd.DataFrame({"label": ["a", "a", "b", "c", "c"],
                          "train_seconds": [1.0, 2.0, 4.0, 2.0, 1.0],
                          "eval_seconds": [0.0, 0.0, 0.0, 1.0, 1.0],
                          "diagnostics_seconds": 0.5})
    # configuration means of training + evaluation: a 1.5, b 4, c 2.5: b, then c, then a, each
    # in summary order; the seconds scheduled include the diagnostics
    assert submission_order(frame) == [4.5, 3.5, 2.5, 1.5, 2.5]


def test_control_table_reads_how_far_the_cap_left_each_configuration(tmp_path):
    from bench.report.control import control_table
    rows = []
    for c, seed, stop, curve in (("vae", 0, "cap", [10.0, 8.0, 7.0, 6.4, 6.1]),
                                 ("vae", 1, "cap", [12.0, 9.0, 8.0, 7.4, 6.5]),
                                 ("floor", 0, "decays", [5.0, 4.0, 4.5])):
        run = tmp_path / f"{c}{seed}"
        run.mkdir()
        pd.DataFrame({"epoch": range(1, len(curve) + 1), "val_neg_elbo": curve}
                     ).to_csv(run / "history.csv", index=False)
        rows.append({"label": f"g / {c}", "group": "g", "seed": seed, "status": "ok",
                     "run": run.name, "stop_reason": stop, "stopped_epoch": len(curve),
                     "nll_is": 90.0 + seed})
    rows.append({"label": "h / vae", "group": "h", "status": "ok"})  # another group: left out
    table = control_table(pd.DataFrame(rows), tmp_path, "g").set_index("configuration")
    assert list(table.index) == ["vae", "floor"]
    vae, floor = table.loc["vae"], table.loc["floor"]
    assert vae["by the rule"] == "0/2" and floor["by the rule"] == "1/1"
    assert vae["val @1"] == "11.00" and vae["val @5"] == "6.30"  # the mean of 6.1 and 6.5
    assert floor["val @3"] == "4.50" and floor["val @5"] == "-"  # it stopped at epoch 3
    # the capped runs' fall per epoch over their last 3: (8 - 6.1) / 3, (9 - 6.5) / 3; median
    assert vae["still falling /epoch"] == f"{((8 - 6.1) / 3 + (9 - 6.5) / 3) / 2:+.2f}"
    assert floor["still falling /epoch"] == "-" and vae["NLL (IS)"] == "90.50 ± 0.71"


def test_a_control_group_the_other_profile_lacks_is_refused(tmp_path):
    from bench.report.control import control_section
    from variants.errors import ConfigError
    path = tmp_path / "p.toml"
    path.write_text('[profile]\ncontrol = { profile = "trained", group = "nope" }\n'
                    '[[config]]\nlabel = "a"\nvariant = "vae"\n')
    with pytest.raises(ConfigError, match="not a group of 'trained'; allowed: mlp, made-lagging"):
        control_section(load_profile(str(path)), tmp_path)
