"""The batching rules of a stacked pass (``bench.training.stacked``) that give each run the
bits it gets alone, where ``torch.func.vmap``'s own do not (measured:
``benchmarks/stack_exactness.py``, ``results/throughput/stack-exactness.json``):

- a linear layer: ``vmap`` adds the bias after a plain matmul where alone ``addmm`` adds it
  inside the GEMM, and ``bmm``'s weight gradient is x^T gy where alone's is gy^T x; here each
  product is computed as alone computes it (``products``);
- the fused binary cross-entropy, which ``vmap`` decomposes: the fused kernel on the stacked
  tensors (it is elementwise);
- batch norm, whose statistics over R runs side by side round otherwise: one call per run.

``stack_mode`` swaps them into ``torch.nn.functional`` for the pass.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor


def _physical(info, in_dims, *tensors):
    """The vmapped arguments as physical tensors with the run axis first (an unbatched one
    expanded along it)."""
    return [None if t is None else t.movedim(d, 0) if d is not None
            else t.expand(info.batch_size, *t.shape) for t, d in zip(tensors, in_dims, strict=True)]


#: per layout of a product or sum: whether the batched kernel is both exact (each slice with
#: the single kernel's bits) and faster than one kernel per run
_SAME: dict[tuple, bool] = {}


def _looped(bias: Tensor | None, a: Tensor, b: Tensor) -> Tensor:
    """R products as alone computes each: ``addmm`` (the bias inside the GEMM) or ``mm``, each
    written into its slice of the result."""
    out = a.new_empty(len(a), a.shape[1], b.shape[2])
    for r in range(len(a)):
        if bias is None:
            torch.mm(a[r], b[r], out=out[r])
        else:
            torch.addmm(bias[r], a[r], b[r], out=out[r])
    return out


def _batched(bias: Tensor | None, a: Tensor, b: Tensor) -> Tensor:
    return torch.bmm(a, b) if bias is None else torch.baddbmm(bias.unsqueeze(1), a, b)


def _like(t: Tensor, gen: torch.Generator) -> Tensor:
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device).normal_(
        generator=gen)


def _decided(name: str, batched, looped, *args: Tensor | None) -> Tensor:
    """``batched(*args)`` or ``looped(*args)`` (one kernel per run, as alone), whichever is
    faster where both give alone's bits for the layout of ``args`` (shapes, strides, dtype,
    device, threads), else ``looped``. Kernels pick their blocking and reduction order from
    the layout, never from the values, so this is decided once per layout, on random values of
    that layout from a private generator, and the choice changes the speed, never a bit."""
    key = (name, *((tuple(t.shape), t.stride(), t.dtype, t.device.type) for t in args
                   if t is not None), torch.get_num_threads())
    fast = _SAME.get(key)
    if fast is None:
        gen = torch.Generator(device=args[-1].device).manual_seed(0)
        probe = [None if t is None else _like(t, gen) for t in args]
        fast = _SAME[key] = torch.equal(batched(*probe), looped(*probe)) \
            and _seconds(batched, probe) < _seconds(looped, probe)
    return batched(*args) if fast else looped(*args)


def _seconds(fn, args, reps: int = 3) -> float:
    """The best of ``reps`` timings of ``fn(*args)`` (after one call to warm it)."""
    fn(*args)
    best = math.inf
    for _ in range(reps):
        if args[-1].is_cuda:
            torch.cuda.synchronize()
        tic = time.perf_counter()
        fn(*args)
        if args[-1].is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - tic)
    return best


def _row_sums(gy: Tensor) -> Tensor:
    """The bias gradients: each run's gy summed over its rows, as alone sums over dim 0."""
    return _decided("sum", lambda g: g.sum(1),
                    lambda g: torch.stack([g[r].sum(0) for r in range(len(g))]), gy)


def products(bias: Tensor | None, a: Tensor, b: Tensor) -> Tensor:
    """``bias + a[r] @ b[r]`` for every run r, bit for bit as alone's ``addmm`` / ``mm`` of each
    slice: one batched GEMM (``baddbmm`` / ``bmm``) where, for this layout, it gives the single
    kernel's bits and is faster, else one kernel per run (``_decided``; measured, ``bmm``'s
    slices differ from ``mm`` on some small layers, and on the 2-core CPU it is slower than
    three ``mm`` on the default model's)."""
    return _decided("gemm", _batched, _looped, bias, a, b)


class _BatchedLinear(torch.autograd.Function):
    """R linear layers at once on physical tensors x (R, N, I), w (R, O, I), b (R, O) or None,
    each product as alone computes it (``products``): forward ``addmm(b, x, w^T)``; backward
    the input's gradient gy w and the weight's gy^T x (torch's ``addmm`` backward follows the
    transposed weight's layout: gy^T x, not x^T gy, which rounds otherwise), the bias's the sum
    of gy over the rows."""

    @staticmethod
    def forward(x, w, b):
        return products(b, x, w.transpose(1, 2))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1])
        ctx.has_bias = inputs[2] is not None

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        gx = products(None, gy, w) if ctx.needs_input_grad[0] else None
        gw = products(None, gy.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        gb = _row_sums(gy) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


class StackedLinear(torch.autograd.Function):
    """``F.linear`` alone; under ``vmap`` ``_BatchedLinear`` over the runs, whose slices are
    the alone ``addmm`` (``mm``) forward and backward."""

    @staticmethod
    def forward(x, w, b):
        return _LINEAR(x, w, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1])
        ctx.has_bias = inputs[2] is not None

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        g2 = gy.reshape(-1, gy.shape[-1])
        gb = g2.sum(0) if ctx.has_bias else None
        return gy @ w, g2.t() @ x.reshape(-1, x.shape[-1]), gb

    @staticmethod
    def vmap(info, in_dims, x, w, b):
        x, w, b = _physical(info, in_dims, x, w, b)
        rows = math.prod(x.shape[1:-1])  # not -1: a layer may read 0 features (no latent)
        out = _BatchedLinear.apply(x.reshape(x.shape[0], rows, x.shape[-1]), w, b)
        return out.reshape(*x.shape[:-1], w.shape[1]), 0


class StackedBCE(torch.autograd.Function):
    """``F.binary_cross_entropy_with_logits(logits, x, reduction="none")``; under ``vmap`` the
    fused kernel on the stacked tensors (it is elementwise, so each slice rounds as alone)."""

    @staticmethod
    def forward(logits, x):
        return _BCE(logits, x, reduction="none")

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        logits, x = ctx.saved_tensors
        return (torch.sigmoid(logits) - x) * g, -logits * g

    @staticmethod
    def vmap(info, in_dims, logits, x):
        logits, x = _physical(info, in_dims, logits, x)
        return _BCE(logits, x, reduction="none"), 0


class StackedBatchNorm(torch.autograd.Function):
    """``F.batch_norm`` of a (B, C) input; under ``vmap`` one batch norm per run on its own
    contiguous slice (a single batch norm of the runs side by side as R x C channels computes
    its statistics otherwise: measured, it differs), the running statistics updated in place
    in the stacked buffers' slices."""

    @staticmethod
    def forward(x, mean, var, w, b, training, momentum, eps):
        return _BATCH_NORM(x, mean, var, w, b, training, momentum, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("StackedBatchNorm is only differentiated under vmap")

    @staticmethod
    def vmap(info, in_dims, x, mean, var, w, b, training, momentum, eps):
        x, mean, var, w, b = _physical(info, in_dims[:5], x, mean, var, w, b)
        out = [_BATCH_NORM(x[r], *(None if t is None else t[r] for t in (mean, var, w, b)),
                            training, momentum, eps) for r in range(len(x))]
        return torch.stack(out), 0


_LINEAR, _BCE, _BATCH_NORM = F.linear, F.binary_cross_entropy_with_logits, F.batch_norm


def _linear(x, w, b=None):
    return StackedLinear.apply(x, w, b)


def _bce(logits, x, weight=None, size_average=None, reduce=None, reduction="mean",
         pos_weight=None):
    if reduction == "none" and weight is None and pos_weight is None \
            and size_average is None and reduce is None:
        return StackedBCE.apply(logits, x)
    return _BCE(logits, x, weight, size_average, reduce, reduction, pos_weight)


def _batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
                momentum=0.1, eps=1e-5):
    if x.dim() == 2 and running_mean is not None:
        return StackedBatchNorm.apply(x, running_mean, running_var, weight, bias, training,
                                      momentum, eps)
    return _BATCH_NORM(x, running_mean, running_var, weight, bias, training, momentum, eps)


@contextmanager
def stack_mode():
    """Inside a stacked forward: ``F.linear``, the Bernoulli likelihood's fused binary
    cross-entropy and ``F.batch_norm`` (as every module and decoder calls them, through
    ``torch.nn.functional``) go through the rules above; every other function as torch has it.
    (Swapped in ``torch.nn.functional`` for the pass rather than intercepted by a
    ``TorchFunctionMode``, which would put every op of the pass through Python.)"""
    F.linear, F.binary_cross_entropy_with_logits, F.batch_norm = _linear, _bce, _batch_norm
    try:
        yield
    finally:
        F.linear, F.binary_cross_entropy_with_logits, F.batch_norm = _LINEAR, _BCE, _BATCH_NORM
