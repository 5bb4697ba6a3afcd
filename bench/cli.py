"""Thin argparse front: vae-bench run | evaluate | suite | report | compare | reference |
throughput | variants | datasets.

Bad names or values end with a one-line error naming what is allowed, exit code 2, before any
training; runtime failures exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from variants.errors import ConfigError

DEFAULT_RUNS = Path("results/runs")


def _kv(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid; allowed: an integer >= 1")
    return value


def cmd_run(args: argparse.Namespace) -> int:
    from .config import RunConfig, apply_overrides, merge_overrides
    from .grid.runner import execute
    from .identity import resolve_run

    pairs = [("variant", args.variant), ("dataset", args.dataset), ("seed", args.seed)]
    set_keys = {k for k, _ in args.set or []}
    pairs = [(k, v) for k, v in pairs if k not in set_keys]  # --set variant=... wins the default
    for flag, key in (("epochs", "train.epochs"), ("device", "device"), ("k", "eval.is_samples")):
        if getattr(args, flag) is not None:
            pairs.append((key, getattr(args, flag)))
    if args.deterministic:
        pairs.append(("deterministic", True))
    pairs += list(args.set or [])
    run = resolve_run(apply_overrides(RunConfig(), merge_overrides(pairs)))  # once, checked
    run_dir = execute(run, Path(args.out), args.data_dir, progress=sys.stderr.isatty())
    print(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if metrics.get("status") != "ok":  # recorded, but not a trained model: say so
        where = f" at step {metrics['diverged_step']}" if metrics.get("diverged_step") is not None \
            else ""
        print(f"vae-bench: the run {metrics.get('status')}{where}; its record says how "
              f"({run_dir / 'metrics.json'})", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .grid.runner import evaluate_run

    ais = {"steps": args.ais_steps, "chains": args.ais_chains, "leapfrog": args.ais_leapfrog,
           "start": args.ais_start, "points": args.ais_points, "bdmc": args.bdmc}
    if args.ais or any(v is not None for v in ais.values()):
        from .grid.attached import evaluate_ais

        if args.k is not None or args.svae_tf_ll:
            raise ConfigError("--ais evaluates with the run's own K; allowed: --ais without --k "
                              "and --svae-tf-ll (run those apart)")
        path, record = evaluate_ais(Path(args.run_dir), args.data_dir, False, **ais)
        print(json.dumps({k: v for k, v in record.items() if k != "per_point"}, indent=2,
                         sort_keys=True))
        print(path)
        return 0
    metrics = evaluate_run(Path(args.run_dir), args.k, args.data_dir, args.svae_tf_ll)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def cmd_suite(args: argparse.Namespace) -> int:
    from .grid.attached import attach_all, pending_line
    from .grid.profile import only
    from .grid.suite import dry_run, grid, load_profile, run_suite, with_variants

    profile = with_variants(load_profile(args.profile), args.add_variant or [])
    runs = only(grid(profile), args.only or [], profile.name)  # resolved once, for all below
    if args.dry_run:
        rows, line = dry_run(profile, Path(args.results), runs, args.stack)
        width = max(len(r["label"]) for r in rows)
        for r in rows:
            print(f"{r['label']:{width}}  s{r['seed']:<3} {r['status']:9}  {r['run']}"
                  + (f"  ({r['why']})" if r.get("why") else ""))
        print(line)
        for text in pending_line(profile, Path(args.results), runs):
            print(text)
        return 0
    counts: dict = {}
    add = lambda more: counts.update({k: counts.get(k, 0) + v for k, v in more.items()})  # noqa: E731
    each = lambda names: add(attach_all(profile, Path(args.results), args.data_dir,  # noqa: E731
                                        [r for r in runs if r[1].name in names], False))
    add({} if args.ais_only else run_suite(
        profile, Path(args.results), args.jobs, args.data_dir, backend=args.backend,
        ray_address=args.ray_address, runs=runs, stack=args.stack, each=each))
    add(attach_all(profile, Path(args.results), args.data_dir, runs))
    print(json.dumps(counts, sort_keys=True))
    return 1 if any(k.startswith("failed") for k in counts) else 0


def cmd_report(args: argparse.Namespace) -> int:
    from .grid.suite import load_profile, with_variants
    from .report import write_report

    profile = with_variants(load_profile(args.profile), args.add_variant or [])
    for path in write_report(profile, Path(args.results), Path(args.reports)):
        print(path)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from .report import largest_differences
    from .report.compare import verdict

    frames = []
    for path in (args.fresh, args.committed):
        if Path(path).exists() and not Path(path).is_file():  # a directory, FIFO or device
            raise ConfigError(f"{path}: not a regular file; expected results/PROFILE/summary.csv")
        try:
            frames.append(pd.read_csv(path))
        except (OSError, ValueError, UnicodeDecodeError) as e:  # missing, empty, binary
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"{path}: not a readable summary CSV ({first[:120]}); expected "
                              "results/PROFILE/summary.csv") from None
    baseline = args.baseline
    if baseline is None and args.profile:
        from .grid.suite import load_profile

        baseline = load_profile(args.profile).baseline
    try:
        result = verdict(*frames, baseline or "")
    except ValueError as e:  # the messages say "the fresh/committed summary": name the file
        msg = str(e).replace("the fresh summary", str(args.fresh), 1)
        raise ConfigError(msg.replace("the committed summary", str(args.committed), 1)) from None
    if result.level != 1 and result.name != "nothing matched":
        print(largest_differences(*frames, args.top))
    print(result.text())
    return result.exit_code


def cmd_reference(args: argparse.Namespace) -> int:
    import tempfile

    import pandas as pd

    from .config import SUITE_VERSION
    from .grid.suite import load_profile, run_suite
    from .report import regression_frame, summarize

    target = Path(args.output or f"results/reference/{args.profile}.csv")
    if target.exists():
        recorded = pd.read_csv(target)["suite_version"].iloc[0]
        if str(recorded) == SUITE_VERSION:
            raise ConfigError(f"{target} was made by suite version {recorded}, the current one; "
                              "bump SUITE_VERSION in bench/config.py to regenerate it")
    profile = load_profile(args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        run_suite(profile, Path(tmp), jobs=1, data_dir=args.data_dir)
        frame = regression_frame(summarize(profile, Path(tmp)))
    target.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(target, float_format="%.17g")
    print(target)
    return 0


def cmd_throughput(args: argparse.Namespace) -> int:
    from .throughput import format_table, run_all
    from .training.model import check_device

    check_device(args.device)
    if args.stack is not None:
        from .throughput.stacking import measure_and_save

        print(measure_and_save(args.device, args.decoder, tuple(args.stack), args.batch_size,
                               Path(args.results)))
        return 0
    if args.variant:
        from variants import resolve

        for v in args.variant:
            resolve(v)  # unknown or broken: one line
    result = run_all(args.device, args.variant, args.batch_size, args.k, compile=args.compile,
                     decoder=args.decoder)
    suffix = "" if args.decoder == "mlp" else f"-{args.decoder}"
    out = Path(args.results) / "throughput" / f"{args.device}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(format_table(result))
    print(out)
    return 0


def cmd_variants(args: argparse.Namespace) -> int:
    from variants import ENTRY_POINT_GROUP, create, names, resolve
    from variants.factory import two_layer_refusal

    for name in names():
        cls = resolve(name)
        print(f"{name:10s} {cls.paper}")
        for pname, p in cls.params.items():
            print(f"    {pname:10s} default {p.default!r:8}  {p.allowed():24s} {p.doc}")
        refusal = two_layer_refusal(create(name), 1)
        if refusal:
            print(f"    not with two stochastic layers (model.latent2_dim): {refusal}")
    print(f"(and module:Class of any Variant subclass importable from here; installed packages "
          f"add names through the entry-point group {ENTRY_POINT_GROUP})")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from .data.builtin import LOADERS, DataError, available_source, data_dir

    root = data_dir(args.data_dir)
    for name in LOADERS:
        try:
            src = available_source(name, root)
        except DataError as e:  # what `run` would refuse, said the same way
            print(f"{name:16s} not usable: {e}")
            continue
        state = f"available: {src}" if src else "not available offline (download when online)"
        print(f"{name:16s} {state}")
    print("(and the path of any .npz file with train and test arrays, optionally valid, of "
          "binary or grey pixels in [0, 1])")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vae-bench", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="data directory (default $VAE_BENCH_DATA or "
                   "~/.cache/vae-bench)")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train and evaluate one model, write a run directory")
    r.add_argument("--variant", default="vae")
    r.add_argument("--dataset", default="digits")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--epochs", type=_positive_int)
    r.add_argument("--k", type=_positive_int, help="importance samples for nll_is")
    r.add_argument("--device", choices=("cpu", "cuda"))
    r.add_argument("--deterministic", action="store_true")
    r.add_argument("--set", type=_kv, action="append", metavar="KEY=VALUE",
                   help="config override (train.lr=3e-4, model.hidden=200,200, beta=4, ...)")
    r.add_argument("--out", default=str(DEFAULT_RUNS), help="parent of the run directory")
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("evaluate", help="reload a run's model and print its metrics as JSON")
    e.add_argument("run_dir")
    e.add_argument("--k", type=_positive_int, help="importance samples (default: the run's)")
    e.add_argument("--svae-tf-ll", type=_positive_int, metavar="N",
                   help="also Davidson et al. 2018's code's 'LL' with N samples (log p(x|z) of "
                        "one sample; bench.evaluation.metrics.svae_tf_ll_points), to read their Table 1")
    e.add_argument("--ais", action="store_true",
                   help="annealed importance sampling (bench.evaluation.ais) on a fixed subset of test "
                        "points with the run's eval.ais_* settings or those below; written "
                        "beside metrics.json as ais-*.json (computed once: an existing record "
                        "with the same settings is shown)")
    e.add_argument("--ais-steps", type=_positive_int, metavar="T",
                   help="intermediate distributions (default: the run's eval.ais_steps)")
    e.add_argument("--ais-chains", type=_positive_int, metavar="C", help="chains per point")
    e.add_argument("--ais-leapfrog", type=_positive_int, metavar="L",
                   help="leapfrog steps per HMC trajectory")
    e.add_argument("--ais-points", type=_positive_int, metavar="N",
                   help="test points (a seeded subset; default: the run's eval.ais_points)")
    e.add_argument("--ais-start", choices=("encoder", "prior"),
                   help="chains start at q(z|x) (encoder) or p(z) (prior)")
    e.add_argument("--bdmc", type=_positive_int, metavar="N",
                   help="also BDMC on N points simulated from the model: forward and reverse "
                        "AIS bound their log p(x); the gap bounds AIS's error on such data")
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("suite", help="run a profile's grid (configurations x seeds), resuming")
    s.add_argument("--profile", default="default")
    s.add_argument("--jobs", type=_positive_int, default=1, help="parallel runs (local backend)")
    s.add_argument("--results", default="results", help="results root (runs under PROFILE/runs)")
    s.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: this machine (default); ray: one Ray task per run")
    s.add_argument("--ray-address", default=None,
                   help="existing Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    s.add_argument("--dry-run", action="store_true",
                   help="list the grid (label, seed, status, run) and the estimated cost of what "
                        "is pending, without training")
    s.add_argument("--add-variant", action="append", metavar="VARIANT",
                   help="repeatable: add a configuration of this variant (a name or module:Class) "
                   "to the profile, as profile PROFILE+VARIANT that copies the profile's finished "
                   "runs and trains only the new ones")
    s.add_argument("--stack", choices=("auto", "off"), default=None,
                   help="auto: the seeds of a configuration train together as one stacked "
                   "model, bit for bit as alone, where they can; off: every run alone (default: "
                   "the profile's stack key, auto)")
    s.add_argument("--only", action="append", metavar="LABEL", help="repeatable: only this "
                   "configuration's runs (and their AIS records); the rest stay pending")
    s.add_argument("--ais-only", action="store_true",
                   help="train nothing: only the AIS records (eval.ais_points) that finished "
                        "runs lack (the suite computes them after each run anyway)")
    s.set_defaults(func=cmd_suite)

    rep = sub.add_parser("report", help="summary.csv, tables and figures from a profile's runs")
    rep.add_argument("--profile", default="default")
    rep.add_argument("--results", default="results")
    rep.add_argument("--reports", default="reports")
    rep.add_argument("--add-variant", action="append", metavar="VARIANT",
                     help="the report of PROFILE+VARIANT (as suite --add-variant ran it)")
    rep.set_defaults(func=cmd_report)

    c = sub.add_parser("compare", help="does a fresh summary.csv reproduce a committed one? a "
                       "verdict (identical / statistically reproduced / not), exit code 0 or 1")
    c.add_argument("fresh")
    c.add_argument("committed")
    c.add_argument("--top", type=_positive_int, default=10)
    c.add_argument("--profile", help="the profile both come from: its baseline is what the "
                   "paired conclusions compare with")
    c.add_argument("--baseline", help="the baseline configuration's label (overrides the "
                   "profile's)")
    c.set_defaults(func=cmd_compare)

    ref = sub.add_parser("reference", help="regenerate the CI reference of a profile (needs a "
                         "suite version bump)")
    ref.add_argument("--profile", default="smoke")
    ref.add_argument("--output", help="default: results/reference/PROFILE.csv")
    ref.set_defaults(func=cmd_reference)

    t = sub.add_parser("throughput", help="train-step and IS-eval throughput vs a hand-written "
                       "loop and the measured matmul peak")
    t.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    t.add_argument("--variant", action="append", help="repeatable; default: every variant")
    t.add_argument("--batch-size", type=_positive_int, default=100)
    t.add_argument("--k", type=_positive_int, default=1000)
    t.add_argument("--compile", action="store_true",
                   help="also time the fast mode (torch.compile; CUDA graphs on a GPU)")
    t.add_argument("--decoder", choices=("mlp", "made", "pixelcnn"), default="mlp",
                   help="decoder family (made, pixelcnn: the plain VAE unless --variant names "
                   "others; against a hand-written loop for the same decoder)")
    t.add_argument("--stack", type=_positive_int, nargs="*", metavar="R",
                   help="instead: per-run steps/s of R runs trained stacked against the same "
                   "runs stepped separately (default R = 1 3 5; MLP and MADE unless --decoder "
                   "made), saved as results/throughput/stack-cpu.json")
    t.add_argument("--results", default="results")
    t.set_defaults(func=cmd_throughput)

    sub.add_parser("variants", help="list variants and hyperparameters").set_defaults(
        func=cmd_variants)
    sub.add_parser("datasets", help="list datasets and where they load from").set_defaults(
        func=cmd_datasets)
    for command in sub.choices.values():  # accepted after the subcommand too
        command.add_argument("--data-dir", default=argparse.SUPPRESS,
                             help="data directory (also accepted before the subcommand)")
    return p


def main(argv: list[str] | None = None) -> int:
    from .machine.allocator import tune
    from .machine.interrupt import CtrlC, interrupted

    ctrl_c = CtrlC()
    try:
        with ctrl_c:
            tune()
            args = parser().parse_args(argv)
            from .machine import numerics

            try:
                numerics.prepare()
            except ValueError as e:  # a bad VAE_BENCH_NUMERICS
                raise ConfigError(str(e)) from None
            return args.func(args)
    except ConfigError as e:
        print(f"vae-bench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return interrupted()
    except Exception as e:
        if ctrl_c.seen:  # an error that only followed a Ctrl-C
            return interrupted()
        if not isinstance(e, OSError):
            raise
        # runtime: unwritable results, full disk, ...
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"vae-bench: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
