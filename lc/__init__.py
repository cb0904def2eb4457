"""Layer Cascade (CVPR 2017) reproduction: region convolution, IRNet-LC, training, evaluation."""

__version__ = "0.1.0"
