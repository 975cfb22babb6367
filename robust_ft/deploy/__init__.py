"""From study to deployment: advise a method, estimate a distortion, register and route models."""
