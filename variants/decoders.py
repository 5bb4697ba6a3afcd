"""Decoder families: p(x|z) over binary pixels, from a latent z of any size (0 included).

Every decoder gives
- ``log_prob(x, z)``: log p(x|z) for x of shape (B, D) and z of shape (S, B, Z) -> (S, B),
  exact and differentiable (training);
- ``inference()``: the same function for no-grad evaluation, rewritten for speed; what depends
  on x alone is computed once per point and shared by all S samples;
- ``mean(z, generator)``: pixel probabilities for previews (ancestral sampling where the pixels
  depend on each other);
- ``load_pretrained(state)``: start from the weights of the same decoder trained without a
  latent (the lagging set-up); what carries z starts at zero, so the model starts as exactly
  the pretrained decoder.

Families (``model.decoder``):
- ``mlp``: z -> logits, pixels conditionally independent given z (Kingma & Welling 2014);
- ``made``: a masked autoregressive MLP over the pixels in raster order (Germain et al. 2015),
  z added to every hidden layer through its own linear map;
- ``pixelcnn``: a gated PixelCNN with vertical and horizontal stacks (van den Oord et al. 2016,
  "Conditional image generation with PixelCNN decoders", eq. 4), z a learned bias in every gate.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DECODERS = ("mlp", "made", "pixelcnn")
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "softplus": nn.Softplus}


def mlp(n_in: int, hidden: Sequence[int], n_out: int, activation: str) -> list[nn.Module]:
    """The layers of an MLP. With n_in = 0 (a decoder without a latent) the first layer is a
    learned constant: torch initializes its empty weight to nothing and its bias to 0."""
    layers: list[nn.Module] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op")
        for width in hidden:
            layers += [nn.Linear(n_in, width), ACTIVATIONS[activation]()]
            n_in = width
        layers.append(nn.Linear(n_in, n_out))
    return layers


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """log Bernoulli(x; sigmoid(l)) summed over the last axis: x l - softplus(l), exact and stable.

    Computed by the fused binary cross-entropy kernel (one pass forward and one backward instead
    of four elementwise passes each); x and the logits broadcast against each other.
    """
    if logits.shape != x.shape:
        logits, x = torch.broadcast_tensors(logits, x)
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def _group_size(d: int, limit: int = 126) -> int:
    """The largest divisor of d that is at most limit."""
    return max(g for g in range(1, min(d, limit) + 1) if d % g == 0)


def softplus_sum_(logits: Tensor) -> Tensor:
    """sum_d softplus(l_d) over the last axis of a (rows, D) tensor, which it overwrites.

    softplus(l) = relu(l) - log sigmoid(|l|), and the logs of groups of g <= 126 factors are taken
    as one log of their product: sigmoid(|l|) lies in [1/2, 1], so a product of 126 factors is at
    least 2^-126, still a normal float32. Instead of a log1p and an exp per element (softplus), one
    sigmoid per element and a log per group: 0.49 against 0.81 ns per element, measured here.
    Rounding: each sigmoid is within half an ulp of 1 (6e-8 absolute in its log) and a product of
    g factors adds at most g ulps, the order of float32 rounding of a 784-term sum. Measured on the
    default decoder: the log-likelihood's relative error against float64 is ~2e-7, the same as
    the straightforward float32 computation's (tests/test_metrics.py bounds both).
    """
    rows, d = logits.shape
    g = _group_size(d)
    relu = logits.clamp_min(0).sum(-1)
    products = logits.abs_().sigmoid_().view(rows, d // g, g).prod(-1)
    return relu - products.log_().sum(-1)


#: rows of logits per tile in evaluation: a (1024, 784) float32 tile (3 MB) stays in cache between
#: the matmul that writes it and the passes that read it, and the live memory of the importance
#: sampler no longer holds a whole chunk's logits (peak 36 -> 12.5 MiB at the default model).
#: Measured on the 2-core CI kind: as fast as untiled 5000-row chunks (512-2048 rows all alike).
EVAL_TILE_ROWS = 1024


class InferenceDecoder:
    """The decoder MLP rewritten for no-grad evaluation: the same function in fewer passes.

    - tanh(a) = 2 sigmoid(2a) - 1, and the affine map 2s - 1 is folded into the next layer's weights
      (W' = 2W, b' = b - W 1): a tanh layer becomes one matmul and one in-place sigmoid, whose
      kernel is 4-7x faster than tanh's on the CPUs measured (float32 tanh was a third of the
      importance sampler's non-matmul time). Other activations are kept as they are.
    - For a Bernoulli likelihood, sum_d x_d l_d goes through the weights (h . (x W) + x . b, one
      (B, H) product per point shared by all samples), so only softplus is evaluated over the
      logits, tile by tile (``EVAL_TILE_ROWS``) while they are still in cache.

    Same value as ``decoder`` up to float rounding (tests/test_metrics.py states the tolerance).
    Folded weights are computed in float64 and cast back.
    """

    def __init__(self, decoder: nn.Sequential):
        mods = list(decoder)
        self.layers: list[tuple[Tensor, Tensor, nn.Module | None]] = []
        scale, shift = 1.0, 0.0  # the next layer's input h = scale * stored + shift
        for i in range(0, len(mods) - 1, 2):
            lin, act = mods[i], mods[i + 1]
            w, b = self._affine(lin, scale, shift)
            if isinstance(act, nn.Tanh):
                self.layers.append((2 * w, 2 * b, None))  # stored s = sigmoid(2a); h = 2 s - 1
                scale, shift = 2.0, -1.0
            else:
                self.layers.append((w, b, act))
                scale, shift = 1.0, 0.0
        self.out_weight, self.out_bias = self._affine(mods[-1], scale, shift)

    @staticmethod
    def _affine(lin: nn.Linear, scale: float, shift: float) -> tuple[Tensor, Tensor]:
        w64, b64 = lin.weight.double(), lin.bias.double()
        return ((scale * w64).to(lin.weight.dtype),
                (b64 + shift * w64.sum(1)).to(lin.bias.dtype))

    def hidden(self, z: Tensor) -> Tensor:
        """The last hidden representation (as stored) for rows of z, shape (rows, H)."""
        h = z
        for w, b, act in self.layers:
            h = torch.addmm(b, h, w.T)
            h = h.sigmoid_() if act is None else act(h)
        return h

    def _x_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x W and x . b of the output layer, (B, H) and (B,): the importance sampler calls the
        decoder K / chunk times with the same tensor of points, so its products are kept (keyed by
        identity and version counter, which every in-place change bumps)."""
        cached = getattr(self, "_x_cache", None)  # (x itself, its version, the products)
        if cached is None or cached[0] is not x or cached[1] != x._version:
            cached = self._x_cache = (x, x._version, (x @ self.out_weight, x @ self.out_bias))
        return cached[2]

    def bernoulli_log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """``bernoulli_log_prob(x, decoder(z))`` for z of shape (S, B, Z), x of shape (B, D)."""
        s, b = z.shape[:2]
        h = self.hidden(z.reshape(s * b, z.shape[-1]))
        softplus = torch.cat([softplus_sum_(torch.addmm(self.out_bias, h[i:i + EVAL_TILE_ROWS],
                                                        self.out_weight.T))
                              for i in range(0, s * b, EVAL_TILE_ROWS)])
        xw, xb = self._x_terms(x)
        return (h.view(s, b, -1) * xw).sum(-1) + xb - softplus.view(s, b)




def load_pretrained(decoder: nn.Module, state: dict[str, Tensor]) -> None:
    """Start ``decoder`` from the same decoder trained without a latent (Z = 0): the lagging
    set-up of He et al. 2019 made explicit.

    Every tensor of ``state`` is copied. The only ones allowed to differ are those that carry z:
    absent from ``state`` (a z-map that a latent-free decoder does not have) or empty there (the
    MLP's first layer, whose z-columns number 0). They are set to zero, so at the first step the
    model computes exactly the pretrained decoder's p(x), whatever z is: a function-preserving
    start, as if the pretrained decoder had had z-connections of weight 0 all along (fresh random
    z-maps would instead perturb every pretrained unit with noise).
    """
    own = decoder.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise ValueError(f"pretrained decoder has tensors this decoder lacks: {unknown[:3]}")
    with torch.no_grad():
        for name, tensor in own.items():
            theirs = state.get(name)
            if theirs is not None and theirs.shape == tensor.shape:
                tensor.copy_(theirs)
            elif theirs is None or (theirs.numel() == 0 and theirs.shape[:-1] == tensor.shape[:-1]):
                tensor.zero_()  # carries z
            else:
                raise ValueError(f"pretrained decoder tensor {name} has shape "
                                 f"{tuple(theirs.shape)}, this decoder {tuple(tensor.shape)}")


class MLPDecoder(nn.Sequential):
    """z -> Bernoulli logits through an MLP; pixels independent given z (an nn.Sequential, so
    its parameters keep the names ``decoder.0.weight`` ... of the runs recorded before it)."""

    def __init__(self, z_dim: int, d: int, hidden: Sequence[int], activation: str):
        super().__init__(*mlp(z_dim, hidden, d, activation))

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        # the decoder on (S * B, Z) rows: no 3-d views per layer
        logits = self(z.reshape(math.prod(z.shape[:-1]), z.shape[-1])).view(*z.shape[:-1], -1)
        return bernoulli_log_prob(x, logits)

    def inference(self) -> InferenceDecoder:
        return InferenceDecoder(self)

    @torch.no_grad()
    def mean(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.sigmoid(self(z))

    load_pretrained = load_pretrained


class AutoregressiveDecoder(nn.Module):
    """p(x|z) = prod_d Bernoulli(x_d | x_<d, z), all D logits from one pass over (x, z).

    Subclasses split the pass in two: ``x_terms(x)`` (what depends on x alone, computed once per
    point) and ``logits_given(t, x, z)`` (the rest, for S samples of z per point).
    """

    def x_terms(self, x: Tensor):
        raise NotImplementedError

    def logits_given(self, terms, x: Tensor, z: Tensor) -> Tensor:
        raise NotImplementedError

    def logits(self, x: Tensor, z: Tensor) -> Tensor:
        """(S, B, D) logits for x of shape (B, D) and z of shape (S, B, Z)."""
        return self.logits_given(self.x_terms(x), x, z)

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        return bernoulli_log_prob(x, self.logits(x, z))

    def inference(self) -> TiledInference:
        return TiledInference(self)

    @torch.no_grad()
    def mean(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral sampling in raster order (D passes); returns each pixel's probability given
        the pixels sampled before it, for z of shape (B, Z)."""
        d = self.d
        x = z.new_zeros(len(z), d)
        probs = z.new_zeros(len(z), d)
        for i in range(d):
            p = torch.sigmoid(self.logits(x, z.unsqueeze(0))[0, :, i])
            probs[:, i] = p
            x[:, i] = (torch.rand(p.shape, generator=generator, dtype=p.dtype).to(p.device) < p)
        return probs

    load_pretrained = load_pretrained


class SkipMLPDecoder(AutoregressiveDecoder):
    """The MLP decoder with z fed into every hidden layer (Skip-VAE, Dieng et al. 2019, AISTATS):
    h_1 = f(W_1 z + b_1), h_l = f(W_l h_{l-1} + U_l z + b_l), logits = W_o h_L + b_o, as their MLP
    code does it (adjidieng/skip-vae); the paper's eq. 6 also conditions the likelihood on z.
    The pixels stay independent given z; its layers keep the plain MLP decoder's names
    (``0.weight`` ...), so a pretrained plain decoder loads into it, the skip maps at zero."""

    def __init__(self, z_dim: int, d: int, hidden: Sequence[int], activation: str):
        super().__init__()
        self.d = d
        layers = mlp(z_dim, hidden, d, activation)
        for i, layer in enumerate(layers):
            self.add_module(str(i), layer)
        self.body = layers
        self.skip = nn.ModuleList(nn.Linear(z_dim, lin.out_features, bias=False)
                                  for lin in layers[2:-1:2])

    def forward(self, z: Tensor) -> Tensor:
        return self.logits_given(None, None, z)

    def x_terms(self, x: Tensor) -> None:
        return None  # the logits do not depend on x

    def logits_given(self, terms, x: Tensor, z: Tensor) -> Tensor:
        h = self.body[1](self.body[0](z))
        for j, skip in enumerate(self.skip):
            h = self.body[2 * j + 3](self.body[2 * j + 2](h) + skip(z))
        return self.body[-1](h)

    @torch.no_grad()
    def mean(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.sigmoid(self.logits_given(None, None, z))


class TiledInference:
    """No-grad log p(x|z) of an autoregressive decoder: its x-terms once per point (kept while
    the same x tensor is passed again, as the importance sampler does for each chunk of samples),
    then tiles of about ``EVAL_TILE_ROWS`` (sample, point) rows, each reduced to
    sum_d x_d l_d - sum_d softplus(l_d) while its logits are in cache."""

    def __init__(self, decoder: AutoregressiveDecoder, tile_rows: int = EVAL_TILE_ROWS):
        self.decoder, self.tile_rows = decoder, tile_rows

    def _x_terms(self, x: Tensor):
        cached = getattr(self, "_x_cache", None)
        if cached is None or cached[0] is not x or cached[1] != x._version:
            cached = self._x_cache = (x, x._version, self.decoder.x_terms(x))
        return cached[2]

    def bernoulli_log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        terms, (s, b) = self._x_terms(x), z.shape[:2]
        step = max(1, self.tile_rows // b)
        out = []
        for i in range(0, s, step):
            logits = self.decoder.logits_given(terms, x, z[i:i + step])
            xl = (logits * x).sum(-1)
            out.append(xl - softplus_sum_(logits.reshape(-1, x.shape[-1])).view(xl.shape))
        return torch.cat(out)


# ---- MADE -----------------------------------------------------------------------------------
def made_masks(d: int, hidden: Sequence[int], window: int) -> tuple[list[Tensor], Tensor]:
    """Connectivity masks (out, in) of MADE's layers and of its direct pixel -> logit map.

    Every unit carries the interval of pixels (1-based, raster order) it may depend on: pixel d
    itself for input d; [1, m] for a hidden unit of degree m (m = 1..d-1 in turn, Germain et al.
    2015, section 4); [1, d-1] for the logit of pixel d. A connection u -> t exists iff u's
    interval lies within t's, so no unit ever depends on a pixel outside its interval: logit d
    sees only x_<d. With ``window = w >= 0`` the logit of pixel d may see x_{d-w} .. x_{d-1}, and
    hidden layer l of L has intervals [m - v_l + 1, m] with v_l = round(w l / (L + 1)) growing
    towards w (v_l = 0: a unit that sees no pixel, only z). w = 0 gives pixels that are
    independent given z.
    """
    n = len(hidden)

    def hidden_units(width: int, layer: int) -> tuple[Tensor, Tensor]:
        m = 1 + torch.arange(width) % max(d - 1, 1)
        if d == 1:
            return torch.ones(width, dtype=torch.long), torch.zeros(width, dtype=torch.long)
        if window < 0:
            return torch.ones_like(m), m
        v = round(window * layer / (n + 1))
        return (m - v + 1).clamp_min(1) if v else m + 1, m  # v = 0: lo > hi, empty

    def allowed(lo_u, hi_u, lo_t, hi_t) -> Tensor:
        empty_u = lo_u > hi_u
        inside = (lo_t[:, None] <= lo_u[None, :]) & (hi_u[None, :] <= hi_t[:, None])
        return (empty_u[None, :] | inside).to(torch.get_default_dtype())

    pix = torch.arange(1, d + 1)
    units = [(pix, pix)] + [hidden_units(w, i + 1) for i, w in enumerate(hidden)]
    out_lo = torch.ones(d, dtype=torch.long) if window < 0 else (pix - window).clamp_min(1)
    units.append((out_lo, pix - 1))
    masks = [allowed(*units[i], *units[i + 1]) for i in range(n + 1)]
    return masks, allowed(pix, pix, *units[-1])


class MADEDecoder(AutoregressiveDecoder):
    """Masked autoregressive MLP (Germain et al. 2015, ICML, eq. 13) conditioned on z.

    h_1 = a((W_1 . M_1) x + b_1 + V_1 z),  h_l = a((W_l . M_l) h_{l-1} + b_l [+ V_l z, skip]),
    logits = (W_o . M_o) h_L + b_o [+ (A . M_A) x, ``direct``] [+ V_o z, ``z_output``].
    The base conditioning is Dieng et al.'s base decoder (z into the first layer only; the
    conditional MADE of the literature adds z where x enters); ``z_layers = "all"`` (Skip-VAE)
    adds z to every later hidden layer too. z reaches every pixel through the first hidden layer.
    The x-only product (W_1 . M_1) x + b_1 and the direct term are the x-terms, shared by all
    samples of z.
    """

    def __init__(self, z_dim: int, d: int, hidden: Sequence[int], activation: str,
                 window: int = -1, direct: bool = True, z_output: bool = True,
                 z_layers: str = "first"):
        super().__init__()
        if not hidden:
            raise ValueError("made needs at least one hidden layer (model.decoder_hidden)")
        self.d = d
        widths = (d, *hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:], strict=False))
        self.out = nn.Linear(widths[-1], d)
        self.direct = nn.Linear(d, d, bias=False) if direct else None
        fed = hidden if z_layers == "all" else hidden[:1]
        self.z_maps = nn.ModuleList(nn.Linear(z_dim, h, bias=False) for h in fed) \
            if z_dim else None
        self.z_out = nn.Linear(z_dim, d, bias=False) if z_dim and z_output else None
        self.act = ACTIVATIONS[activation]()
        masks, direct_mask = made_masks(d, hidden, window)
        for i, mask in enumerate(masks):
            self.register_buffer(f"mask{i}", mask, persistent=False)
        self.register_buffer("mask_direct", direct_mask, persistent=False)
        self.zero_masked()

    @torch.no_grad()
    def zero_masked(self) -> None:
        """Masked-out weights are never used: make them zero (also after a re-initialization)."""
        for i, layer in enumerate([*self.layers, self.out]):
            layer.weight.mul_(getattr(self, f"mask{i}"))
        if self.direct is not None:
            self.direct.weight.mul_(self.mask_direct)

    def _masked(self, i: int) -> Tensor:
        layer = ([*self.layers, self.out])[i]
        return layer.weight * getattr(self, f"mask{i}")

    def x_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        first = F.linear(x, self._masked(0), self.layers[0].bias)  # (B, H_1)
        out = self.out.bias if self.direct is None \
            else F.linear(x, self.direct.weight * self.mask_direct, self.out.bias)
        return first, out

    def logits_given(self, terms, x: Tensor, z: Tensor) -> Tensor:
        first, out_x = terms
        s, b = z.shape[:2]
        zr = z.reshape(s * b, z.shape[-1])
        h = first.repeat(s, 1)
        if self.z_maps is not None:
            h = h + self.z_maps[0](zr)
        h = self.act(h)
        for i in range(1, len(self.layers)):
            a = F.linear(h, self._masked(i), self.layers[i].bias)
            fed = self.z_maps is not None and i < len(self.z_maps)
            h = self.act(a + self.z_maps[i](zr) if fed else a)
        logits = F.linear(h, self._masked(len(self.layers))).view(s, b, -1) + out_x
        if self.z_out is not None:
            logits = logits + self.z_out(z)
        return logits


# ---- gated PixelCNN -------------------------------------------------------------------------
def _gate(a: Tensor) -> Tensor:
    f, g = a.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


def _down_shift(a: Tensor) -> Tensor:
    """Row i receives row i - 1 (zeros in row 0)."""
    return F.pad(a, (0, 0, 1, 0))[:, :, :-1]


class PixelCNNDecoder(AutoregressiveDecoder):
    """Gated PixelCNN (van den Oord et al. 2016, eq. 4 and figure 2) over an image of ``shape``.

    Vertical stack: convolutions over the rows above and the current row ((k//2 + 1) x k
    kernels), used by the horizontal stack only shifted down one row, so pixel (i, j) sees rows
    < i. Horizontal stack: 1 x (k//2 + 1) convolutions over the current row up to column j; in
    the first layer the input is shifted right one column (mask A), so x_ij itself is excluded;
    later layers include column j (mask B) and are residual. Every gate is
    tanh(W_f * . + V_f z) . sigmoid(W_g * . + V_g z), z a learned bias (PixelVAE's cond_z_bias),
    in the first layer's gates only (the base conditioning; Dieng et al.'s base PixelCNN
    concatenates a spatial z map to the first layer's input instead: a per-channel bias is its
    spatially constant equivalent), and with ``z_layers = "all"`` (Skip-VAE) in every layer's.
    Output: ReLU, 1x1 conv (plus V_o z with ``z_output``), ReLU, 1x1 conv to one logit per pixel.
    The first layer's convolutions of x are the x-terms, shared by all samples of z.
    """

    def __init__(self, z_dim: int, shape: Sequence[int], layers: int = 3, channels: int = 16,
                 kernel: int = 3, z_output: bool = True, z_layers: str = "first"):
        super().__init__()
        if kernel % 2 == 0 or kernel < 1:
            raise ValueError(f"pixelcnn kernel {kernel} must be odd")
        (self.height, self.width), self.d = shape, math.prod(shape)
        c, r, self.r = channels, kernel // 2, kernel // 2
        ins = [1] + [c] * (layers - 1)
        self.v_convs = nn.ModuleList(nn.Conv2d(i, 2 * c, (r + 1, kernel)) for i in ins)
        self.h_convs = nn.ModuleList(nn.Conv2d(i, 2 * c, (1, r + 1)) for i in ins)
        self.v_to_h = nn.ModuleList(nn.Conv2d(2 * c, 2 * c, 1) for _ in ins)
        self.h_res = nn.ModuleList(nn.Conv2d(c, c, 1) for _ in ins)
        fed = len(ins) if z_layers == "all" else 1
        # the last layer's vertical gate would feed nothing
        self.z_v = nn.ModuleList(nn.Linear(z_dim, 2 * c, bias=False)
                                 for _ in range(min(fed, len(ins) - 1))) if z_dim else None
        self.z_h = nn.ModuleList(nn.Linear(z_dim, 2 * c, bias=False) for _ in range(fed)) \
            if z_dim else None
        self.out_hidden = nn.Conv2d(c, c, 1)
        self.z_out = nn.Linear(z_dim, c, bias=False) if z_dim and z_output else None
        self.out = nn.Conv2d(c, 1, 1)

    def _stacks(self, i: int, v: Tensor, h: Tensor, first: bool) -> tuple[Tensor, Tensor]:
        """Convolutions of layer i, before z and gates: (vertical, horizontal) pre-activations."""
        r = self.r
        v_out = self.v_convs[i](F.pad(v, (r, r, r, 0)))
        if first:  # mask A: shift right one column so that column j is not seen
            h = F.pad(h, (1, 0))[..., :-1]
        h_out = self.h_convs[i](F.pad(h, (r, 0))) + self.v_to_h[i](_down_shift(v_out))
        return v_out, h_out

    def x_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        img = x.view(-1, 1, self.height, self.width)
        return self._stacks(0, img, img, first=True)

    def logits_given(self, terms, x: Tensor, z: Tensor) -> Tensor:
        s, b = z.shape[:2]
        zr = z.reshape(s * b, z.shape[-1])

        def bias(maps, i: int) -> Tensor | float:
            return 0.0 if maps is None or i >= len(maps) else maps[i](zr)[:, :, None, None]

        v_pre, h_pre = (t.repeat(s, 1, 1, 1) for t in terms)
        v = h = None
        last = len(self.v_convs) - 1
        for i in range(last + 1):
            if i:
                v_pre, h_pre = self._stacks(i, v, h, first=False)
            if i < last:  # the last layer's vertical gate would feed nothing
                v = _gate(v_pre + bias(self.z_v, i))
            g = self.h_res[i](_gate(h_pre + bias(self.z_h, i)))
            h = g if h is None else h + g
        u = self.out_hidden(F.relu(h))
        if self.z_out is not None:
            u = u + self.z_out(zr)[:, :, None, None]
        return self.out(F.relu(u)).view(s, b, self.d)


def check_options(kind: str, hidden: Sequence[int], skip: bool = False, **_) -> None:
    """ConfigError for decoder options that mean nothing for this decoder."""
    from .base import ConfigError

    if skip and kind == "mlp" and len(hidden) < 2:
        raise ConfigError("z into every later layer (skip-vae) with the mlp decoder needs at "
                          "least two hidden layers (z is the first one's input); allowed: "
                          "model.decoder_hidden=W,W[,...]")


def make_decoder(kind: str, z_dim: int, d: int, *, hidden: Sequence[int], activation: str,
                 image_shape: Sequence[int] | None = None, window: int = -1,
                 direct: bool = True, z_output: bool = True, layers: int = 3,
                 channels: int = 16, kernel: int = 3, skip: bool = False) -> nn.Module:
    """The decoder family ``kind`` (one of DECODERS) for a latent of size z_dim and D pixels.

    Base conditioning (Dieng et al. 2019's base decoders): z is the MLP's input, and enters the
    first layer of MADE and of the PixelCNN (and their output layer with ``z_output``).
    ``skip`` (Skip-VAE, as adjidieng/skip-vae ``models_img_skip.py`` does it): z also enters every
    later hidden layer of the MLP (not its output), and every later layer and the output of MADE
    and the PixelCNN."""
    check_options(kind, hidden, skip=skip)
    layers_fed = "all" if skip else "first"
    z_output = z_output or skip
    if kind == "mlp":
        return SkipMLPDecoder(z_dim, d, hidden, activation) if skip \
            else MLPDecoder(z_dim, d, hidden, activation)
    if kind == "made":
        return MADEDecoder(z_dim, d, hidden, activation, window, direct, z_output, layers_fed)
    if kind == "pixelcnn":
        if image_shape is None or math.prod(image_shape) != d:
            raise ValueError("pixelcnn needs image data; allowed datasets: digits, mnist, "
                             "fashion-mnist")
        return PixelCNNDecoder(z_dim, image_shape, layers, channels, kernel, z_output,
                               layers_fed)
    raise ValueError(f"unknown decoder {kind!r}; allowed: {', '.join(DECODERS)}")
