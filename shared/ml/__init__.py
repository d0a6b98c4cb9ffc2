"""What a site runs on a model: the model factory, training, calibration, BatchNorm handling,
finishing a model, the iterative attack kernel, the wire format."""
