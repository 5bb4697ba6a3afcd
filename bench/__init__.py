"""vae-bench harness: configuration, data, training, metrics, results and reports."""
