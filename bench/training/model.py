"""The model of a resolved config: the decoder family's options, the variant's model built by
``variants.factory`` and initialized from the seed's ``init`` stream (torch's or Glorot's
initialization), a pretrained decoder installed, on the run's device and dtype."""

from __future__ import annotations

import warnings

import torch

from variants import create as create_variant
from variants.base import Variant
from variants.core import VAE
from variants.errors import ConfigError
from variants.factory import build_vae

from ..config import RunConfig
from ..data import builtin
from ..seeding import derive


def check_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available here; allowed: cpu")
    return torch.device(device)


def decoder_options(cfg: RunConfig, dataset: builtin.Dataset) -> dict:
    """The keyword arguments of the decoder family that ``cfg.model.decoder`` names."""
    m = cfg.model
    if m.decoder == "made":
        return {"window": m.window, "direct": m.direct, "z_output": m.z_output}
    if m.decoder == "pixelcnn":
        if dataset.image_shape is None:
            raise ConfigError(f"model.decoder=pixelcnn needs images; {dataset.name} has none; "
                              "allowed datasets: digits, mnist, fashion-mnist")
        return {"image_shape": dataset.image_shape, "layers": m.pixelcnn_layers,
                "channels": m.pixelcnn_channels, "kernel": m.pixelcnn_kernel,
                "z_output": m.z_output}
    if m.decoder == "lstm":
        return {"vocab": dataset.vocab_size, "embed": m.embedding_dim,
                "lstm_hidden": m.lstm_hidden, "lstm_layers": m.lstm_layers,
                "dropout": m.dropout, "word_dropout": m.word_dropout}
    return {}


def build_model(cfg: RunConfig, dataset: builtin.Dataset,
                pretrained_decoder: dict | None = None,
                variant: Variant | None = None) -> tuple[VAE, Variant]:
    """The model and variant of a resolved config (``variant``: the run's own, else built from
    the config), initialized from the seed's ``init`` stream; with ``pretrained_decoder`` (a
    decoder-only run's decoder state) the decoder then starts from it, what carries z from zero
    (``variants.decoders.load_pretrained``)."""
    if variant is None:
        variant = create_variant(cfg.variant, **cfg.hparams)
    m = cfg.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive(cfg.seed, "init"))
        scale = {"posterior_scale": m.posterior_scale} if m.posterior_scale != "exp" else {}
        if m.obs_var:
            scale["obs_var"] = m.obs_var
        model = build_vae(variant, dataset.input_dim, m.latent_dim,
                          latent2_dim=m.latent2_dim, latent2_hidden=m.latent2_hidden,
                          hidden=m.hidden, decoder_hidden=m.decoder_hidden,
                          activation=m.activation, likelihood=dataset.likelihood,
                          decoder=m.decoder, **scale, **decoder_options(cfg, dataset),
                          **({"encoder": "lstm"} if m.encoder == "lstm" else {}))
        if m.init == "glorot":
            glorot_init(model, dataset)
        elif m.init == "uniform":
            uniform_init(model)
    model.to(dtype=getattr(torch, cfg.dtype), device=check_device(cfg.device))
    if pretrained_decoder is not None:
        model.decoder.load_pretrained(pretrained_decoder)
    return model, variant


def uniform_init(model: VAE) -> None:
    """He et al. 2019's text and synthetic models (jxhe/vae-lagging-encoder, ``toy.py``,
    ``text.py`` and the LSTM modules' ``reset_parameters``): every trainable parameter, biases
    included, U(-0.01, 0.01), then every embedding table U(-0.1, 0.1); drawn in parameter order
    from the seed's init stream (the caller's generator state). A variant's frozen parameter
    (``requires_grad`` off: BN-VAE's fixed scale gamma) is a constant of the method and keeps its
    value, as in Zhu et al.'s text encoder (valdersoul/bn-vae ``modules/encoders/enc_lstm.py``:
    the BN weight filled with gamma, not re-initialized)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op")
        for p in model.parameters():
            if p.requires_grad:
                p.uniform_(-0.01, 0.01)
        for layer in model.modules():
            if isinstance(layer, torch.nn.Embedding):
                layer.weight.uniform_(-0.1, 0.1)


def glorot_init(model: VAE, dataset: builtin.Dataset) -> None:
    """Burda et al. 2016's initialization (their code): every linear layer Glorot-uniform
    (Glorot & Bengio 2010) with zero bias; the decoder's output bias the logit of the training
    split's mean pixel, clipped to [0.001, 0.999], so the untrained model already predicts the
    marginal pixel frequencies."""
    out = getattr(model.decoder, "body", model.decoder)
    if not isinstance(out, (list, torch.nn.Sequential)) or dataset.likelihood != "bernoulli":
        raise ConfigError("model.init=glorot is defined for binary pixels and the mlp decoder; "
                          "allowed: model.init=default otherwise")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op")
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(layer.weight)
                if layer.bias is not None:
                    layer.bias.zero_()
        mean = dataset.train.double().mean(0).clamp(0.001, 0.999)
        out[-1].bias.copy_(torch.log(mean / (1 - mean)))
