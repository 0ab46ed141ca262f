"""Pure math: Hermite polynomials, Gaussian derivatives and their 2-D bases (no nn.Module here)."""

from .basis import derivative_orders, gaussian_derivative_basis, kernel_coordinates, num_basis_kernels
from .gaussian import gaussian, gaussian_derivative_1d, hermite_polynomials

__all__ = [
    "derivative_orders",
    "gaussian",
    "gaussian_derivative_1d",
    "gaussian_derivative_basis",
    "hermite_polynomials",
    "kernel_coordinates",
    "num_basis_kernels",
]
