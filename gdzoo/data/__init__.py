"""Datasets: Fashion-MNIST (idx files) and, later, image folders and segmentation tiles."""

from .fashion_mnist import FMNIST_LABELS, FMNIST_MEAN, FMNIST_STD, find_fashion_mnist, load_fashion_mnist

__all__ = ["FMNIST_LABELS", "FMNIST_MEAN", "FMNIST_STD", "find_fashion_mnist", "load_fashion_mnist"]
