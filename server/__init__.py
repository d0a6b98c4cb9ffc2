"""The Flower ServerApp (FedAvg rounds, checkpoints, fine-tune step) and the local launcher."""
