"""What a site runs on a model: the model factory, training, calibration, BatchNorm handling, training-time attacks, the wire format."""
