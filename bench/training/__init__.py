"""Training one model: the model of a config (``model``), the loop (``trainer``: ``fit`` and the
``Trainer``), the convergence protocol that stops it (``convergence``) and the mid-run
checkpoints that let a killed run resume to the same bits (``checkpoints``)."""
