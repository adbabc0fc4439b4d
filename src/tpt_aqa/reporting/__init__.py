"""What a run shows beyond its metrics: figures, Weights & Biases logging, the paper's numbers."""
