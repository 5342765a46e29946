"""StyleGAN2 (Karras et al. 2020) networks and ADA augmentation in pure PyTorch.

Public API (see docs/interfaces.md, "StyleGAN2 networks")::

    from mammo_anogan.models.stylegan2 import (Generator, Discriminator, AugmentPipe, AdaController,
                                               load_generator, load_discriminator, save_network)
"""

from mammo_anogan.models.stylegan2.augment import AdaController, AugmentPipe
from mammo_anogan.models.stylegan2.discriminator import Discriminator
from mammo_anogan.models.stylegan2.export import load_discriminator, load_generator, save_network
from mammo_anogan.models.stylegan2.generator import Generator

__all__ = [
    "AdaController",
    "AugmentPipe",
    "Discriminator",
    "Generator",
    "load_discriminator",
    "load_generator",
    "save_network",
]
