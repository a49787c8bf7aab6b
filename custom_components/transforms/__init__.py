"""MONAI-style array and dictionary transforms."""

from custom_components.transforms.mass_effect import MassEffect, MassEffectd, MassEffectField, mass_effect_field

__all__ = ["MassEffect", "MassEffectField", "MassEffectd", "mass_effect_field"]
