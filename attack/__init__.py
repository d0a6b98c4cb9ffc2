"""The attack service and CLI: pull verified checkpoints, craft adversarial examples on each
model, probe every model with them, and report the transferability matrix."""
