"""Datasets: Fashion-MNIST (idx files), image folders, segmentation tiles, seeded splits, timm transforms,
robust image reading, rescaled test sets."""

from .classification import fashion_mnist_dataset, image_folder_dataset
from .fashion_mnist import FMNIST_LABELS, FMNIST_MEAN, FMNIST_STD, find_fashion_mnist, load_fashion_mnist
from .images import DecodedImage, ImageReadError, find_unreadable, read_image
from .rescaled import PROTOCOL_SCALES, rescale_on_canvas
from .sampling import EpochSampler, SeededDataset
from .seg_transforms import PairedAugment
from .segmentation import SegmentationTiles, find_segmentation_pairs, split_pairs
from .splits import split_indices
from .transforms import build_transform, resolve_data_config_for

__all__ = [
    "DecodedImage",
    "EpochSampler",
    "FMNIST_LABELS",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "ImageReadError",
    "PROTOCOL_SCALES",
    "PairedAugment",
    "SeededDataset",
    "SegmentationTiles",
    "build_transform",
    "fashion_mnist_dataset",
    "find_fashion_mnist",
    "find_segmentation_pairs",
    "find_unreadable",
    "image_folder_dataset",
    "load_fashion_mnist",
    "read_image",
    "rescale_on_canvas",
    "resolve_data_config_for",
    "split_indices",
    "split_pairs",
]
