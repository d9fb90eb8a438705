"""The model and the three protocols: loading models, cached embeddings, zero-shot,
the linear probe, fine-tuning (training loop, repeated seeds, the budget sweep,
torchrun) and the demo model's pretraining."""
