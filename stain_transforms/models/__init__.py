"""Neural models: StainNet, the StainGAN generator, and the PatchGAN discriminator for training it."""

from .discriminator import PatchGANDiscriminator
from .staingan import ResnetBlock, StainGANGenerator, init_cyclegan_weights
from .stainnet import StainNet

__all__ = ["PatchGANDiscriminator", "ResnetBlock", "StainGANGenerator", "StainNet", "init_cyclegan_weights"]
