"""mrprior: MRI reconstruction regularized by generative, pretrained image priors."""

__version__ = "0.1.0"
