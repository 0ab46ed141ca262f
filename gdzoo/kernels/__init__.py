"""Pure math: Hermite polynomials, Gaussian derivatives, their 2-D bases and displaced Gaussian units
(no nn.Module here)."""

from .basis import derivative_orders, gaussian_derivative_basis, kernel_coordinates, num_basis_kernels
from .basis_fused import gaussian_derivative_basis_raw
from .gaussian import gaussian, gaussian_derivative_1d, hermite_polynomials
from .generator import GENERATORS, generator, get_generator, set_generator
from .units import displaced_gaussian_units, normalized_gaussian_profile

__all__ = [
    "GENERATORS",
    "derivative_orders",
    "displaced_gaussian_units",
    "gaussian",
    "gaussian_derivative_1d",
    "gaussian_derivative_basis",
    "gaussian_derivative_basis_raw",
    "generator",
    "get_generator",
    "hermite_polynomials",
    "kernel_coordinates",
    "normalized_gaussian_profile",
    "set_generator",
    "num_basis_kernels",
]
