"""Measuring a trained model: the metrics of the test split (``metrics``: ELBO, IS, KL, active
units, MI), annealed importance sampling and BDMC (``ais``), exact likelihood by quadrature for
small latents (``quadrature``) and the linear-VAE collapse law in closed form (``ppca``)."""
