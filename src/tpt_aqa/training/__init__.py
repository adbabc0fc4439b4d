"""Training: the LightningModule, fault handling, the trainer and checkpoint loading, the run folder,
and the pair-by-pair evaluation that checks encode-once evaluation."""
