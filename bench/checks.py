"""The checks of a run's config that look across its sections, at its data or at its variant
(called by ``bench.config.validate`` in this order, before anything trains): each refuses in one
line naming what is wrong and what is allowed. They receive the config's parts and never import
``bench.config`` (which calls them)."""

from __future__ import annotations

from variants.errors import ConfigError


def kernel(model) -> None:
    if model.decoder == "pixelcnn" and model.pixelcnn_kernel % 2 == 0:
        raise ConfigError(f"model.pixelcnn_kernel={model.pixelcnn_kernel} is invalid; allowed: "
                          "an odd int >= 1")


def model_checks(dataset: str, model, latent2_hidden_default) -> None:
    """The decoder's fit to the data and the options that need another one."""
    if model.decoder != "mlp" and dataset == "linear-gaussian":
        raise ConfigError(f"model.decoder={model.decoder!r} models binary pixels; allowed for "
                          "linear-gaussian: mlp")
    if model.decoder == "made" and not model.decoder_hidden:
        raise ConfigError("model.decoder=made needs hidden layers; allowed: "
                          "model.decoder_hidden=W[,W...]")
    if model.latent2_hidden != latent2_hidden_default and not model.latent2_dim:
        raise ConfigError("model.latent2_hidden is set but there is no second stochastic layer; "
                          "allowed: with model.latent2_dim > 0")


def run_checks(cfg, model, train, variant, likelihood: str) -> None:
    """Evaluation, protocol and likelihood options against the rest of the config."""
    if cfg.eval.test_points == 1:
        raise ConfigError("eval.test_points=1 is invalid; allowed: 0 (the whole test split) or "
                          ">= 2 (a standard error needs two points)")
    if (train.stop_patience or train.lr_decay_patience) and not train.validation_size:
        raise ConfigError("train.stop_patience / train.lr_decay_patience watch the validation "
                          "split; allowed with train.validation_size > 0 (or -1: the dataset decides)")
    if train.max_decays and not train.lr_decay_patience:
        raise ConfigError("train.max_decays is set but no decay happens; allowed: with "
                          "train.lr_decay_patience > 0")
    if model.obs_var and likelihood != "gaussian":
        raise ConfigError(f"model.obs_var={model.obs_var:g} needs a Gaussian likelihood; "
                          "allowed datasets: linear-gaussian, mnist-grey")
    if model.posterior_scale != "exp" and (model.latent2_dim or variant.latent(1).param_size
                                           != 2 * variant.latent(1).dim):
        raise ConfigError("model.posterior_scale=softplus needs one diagonal Gaussian latent; "
                          f"allowed for variant {cfg.variant!r}"
                          f"{' with two stochastic layers' if model.latent2_dim else ''}: exp")
    posterior_mean(cfg, model, train, variant)


def posterior_mean(cfg, model, train, variant) -> None:
    if cfg.eval.posterior_mean_every and not cfg.eval.posterior_mean_points:
        raise ConfigError("eval.posterior_mean_every is set but no points are diagnosed; allowed: "
                          "with eval.posterior_mean_points > 0")
    if not cfg.eval.posterior_mean_points:
        return
    latent = variant.latent(model.latent_dim)
    if latent.dim == 0:  # no latent (decoder-only): nothing to lag behind, no diagnostic
        return
    if model.latent2_dim or latent.dim not in (1, 2) or latent.param_size != 2 * latent.dim:
        raise ConfigError(f"eval.posterior_mean_points needs one Gaussian latent of 1 or 2 "
                          f"dimensions (quadrature); allowed: model.latent_dim=1 or 2 with a "
                          f"Gaussian variant, not {cfg.variant!r} with latent {latent.dim}"
                          f"{' and a second layer' if model.latent2_dim else ''}")
    if not train.validation_size:
        raise ConfigError("eval.posterior_mean_points reads validation points; allowed with "
                          "train.validation_size > 0 (or -1: the dataset decides)")


def image_checks(model, image) -> None:
    if model.decoder == "pixelcnn" and image and model.pixelcnn_kernel > 2 * max(image) - 1:
        raise ConfigError(f"model.pixelcnn_kernel={model.pixelcnn_kernel} is larger than the "
                          f"{image[0]}x{image[1]} image can use; allowed: an odd int <= "
                          f"{2 * max(image) - 1}")
