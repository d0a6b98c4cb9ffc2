"""The Flower ClientApp: local training, evaluation and fine-tuning at one hospital site."""
