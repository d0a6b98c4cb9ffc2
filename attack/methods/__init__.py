"""The attacks' maths: the registry, one-step and iterative attacks, universal perturbations, surrogates."""
