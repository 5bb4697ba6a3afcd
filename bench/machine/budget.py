"""Sizes that cannot fit are refused before anything is allocated: an estimate of a run's
memory from its resolved config (parameters with their gradients and Adam's two moments, the
activations of one training step, one importance-sampling tile) against the memory this process
may still use: the smallest of the machine's available memory, a cgroup's limit and ``ulimit
-v`` (``limits``). An estimate, deliberately coarse (within a small factor): it exists to turn
"model.hidden=1000000000" into one line instead of an allocator's traceback. ``VAE_BENCH_MEMORY_
CHECK=0`` skips it."""

from __future__ import annotations

import os

from variants.errors import ConfigError

#: (sample, point) rows the evaluator's decoder holds at once (``EVAL_TILE_ROWS``)
EVAL_ROWS = 1024


#: where the limits are read (module-level so that tests can point them at files of their own)
MEMINFO = "/proc/meminfo"
CGROUP_V2 = "/sys/fs/cgroup"  # memory.max, memory.current
CGROUP_V1 = "/sys/fs/cgroup/memory"  # memory.limit_in_bytes, memory.usage_in_bytes
PROC_STATUS = "/proc/self/status"  # VmSize: the address space this process already holds


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _field_kib(text: str | None, name: str) -> int | None:
    for line in (text or "").splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    return None


def _cgroup_room() -> int | None:
    """What the cgroup (v2, else v1) still lets this process's group allocate, or None."""
    for limit_file, used_file in ((f"{CGROUP_V2}/memory.max", f"{CGROUP_V2}/memory.current"),
                                  (f"{CGROUP_V1}/memory.limit_in_bytes",
                                   f"{CGROUP_V1}/memory.usage_in_bytes")):
        limit, used = _read(limit_file), _read(used_file)
        if limit is None or limit.strip() == "max":
            continue
        limit_b = int(limit.split()[0])
        if limit_b >= 2**60:  # v1 writes "no limit" as a huge number
            continue
        return max(0, limit_b - int((used or "0").split()[0]))
    return None


def _address_space_room() -> int | None:
    """What ``ulimit -v`` (RLIMIT_AS) leaves of this process's address space, or None."""
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(0, soft - (_field_kib(_read(PROC_STATUS), "VmSize") or 0))


def limits() -> dict[str, int]:
    """The memory this process may still use, by what limits it (bytes): MemAvailable of
    /proc/meminfo, the room left under the cgroup's limit (a container's), the room left under
    ``ulimit -v``; absent where that limit is not in force or cannot be read."""
    found = {"available memory": _field_kib(_read(MEMINFO), "MemAvailable"),
             "the cgroup's memory limit": _cgroup_room(),
             "the address-space limit (ulimit -v)": _address_space_room()}
    return {k: v for k, v in found.items() if v is not None}


def available_bytes() -> int | None:
    """The smallest of ``limits()``, else None (no check)."""
    found = limits()
    return min(found.values()) if found else None


def _dense(widths: list[int]) -> int:
    return sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))


def estimate(cfg, variant, input_dim: int, image_shape: tuple[int, ...] | None) -> dict:
    """Bytes of parameters (x4: values, gradients, two Adam moments) and of activations (one
    training step of ``train.batch_size`` x the variant's samples, and one IS tile)."""
    m, word = cfg.model, 8 if cfg.dtype == "float64" else 4
    latent = variant.latent(m.latent_dim)
    d, z = input_dim, latent.dim
    params = _dense([d, *m.hidden, latent.param_size]) if latent.param_size else 0
    widths = [*m.hidden, latent.param_size]
    if m.decoder == "mlp":
        params += _dense([z, *m.decoder_hidden, d])
        per_row = eval_row = sum(m.decoder_hidden) + d
    elif m.decoder == "made":
        hidden = list(m.decoder_hidden)
        params += _dense([d, *hidden, d]) + d * d + z * (sum(hidden) + d)
        per_row = eval_row = sum(hidden) + 2 * d
    else:  # pixelcnn: per layer, two stacks of 2c channels over the image (kept for backward)
        c, k, layers = m.pixelcnn_channels, m.pixelcnn_kernel, m.pixelcnn_layers
        params += layers * (2 * c * c * (k // 2 + 1) * (k + 1) + 6 * c * c + 4 * c * z)
        per_row, eval_row = layers * 8 * c * d, 8 * c * d  # no-grad: a layer or two alive
    if m.latent2_dim:
        params += 2 * _dense([z, *m.latent2_hidden, 2 * m.latent2_dim])
    rows = cfg.train.batch_size * max(1, variant.train_samples())
    activations = 3 * word * (rows * (per_row + z) + cfg.train.batch_size * sum(widths))
    tile = word * EVAL_ROWS * eval_row * 2
    return {"parameters": 4 * word * params, "activations": activations + tile}


def check(cfg, variant, input_dim: int, image_shape: tuple[int, ...] | None) -> None:
    """ConfigError when the estimate exceeds the memory available."""
    if os.environ.get("VAE_BENCH_MEMORY_CHECK", "1") == "0" or cfg.device != "cpu":
        return  # (a GPU's memory is not this machine's: the device reports its own)
    found = limits()
    if not found:
        return
    source, have = min(found.items(), key=lambda kv: kv[1])
    need = estimate(cfg, variant, input_dim, image_shape)
    total = sum(need.values())
    if total > have:
        gib = 2**30
        raise ConfigError(
            f"this run needs an estimated {total / gib:,.1f} GiB (parameters with gradients and "
            f"Adam state {need['parameters'] / gib:,.1f}, activations "
            f"{need['activations'] / gib:,.1f}); {have / gib:.1f} GiB are available "
            f"({source}); allowed: smaller model sizes, batch or samples, or "
            f"VAE_BENCH_MEMORY_CHECK=0 to skip this estimate (sizes: {_sizes(cfg, variant)})")


def runs_that_fit(cfg, variant, input_dim: int, image_shape: tuple[int, ...] | None,
                  wanted: int) -> int:
    """How many runs of this config (at most ``wanted``, at least 1) fit in memory together,
    trained stacked (``bench.training.stacked``: R runs need about R times one's estimate)."""
    if wanted <= 1 or os.environ.get("VAE_BENCH_MEMORY_CHECK", "1") == "0" \
            or cfg.device != "cpu":
        return max(wanted, 1)
    found = limits()
    if not found:
        return wanted
    one = sum(estimate(cfg, variant, input_dim, image_shape).values())
    return max(1, min(wanted, int(min(found.values()) // max(one, 1))))


def _sizes(cfg, variant) -> str:
    m = cfg.model
    parts = [f"model.latent_dim={m.latent_dim}", f"model.hidden={list(m.hidden)}",
             f"model.decoder_hidden={list(m.decoder_hidden)}"]
    if m.decoder == "pixelcnn":
        parts += [f"model.pixelcnn_channels={m.pixelcnn_channels}",
                  f"model.pixelcnn_kernel={m.pixelcnn_kernel}"]
    if variant.train_samples() > 1:
        parts.append(f"training samples per point={variant.train_samples()}")
    return ", ".join(parts)


