"""Use a trained model: features of any folder of images, a gallery index (faiss), search."""

from .features import FeatureSet, ImageRecord, extract_folder, list_images, load_features
from .index import KINDS, GalleryIndex, build_index
from .model import FeatureModel, load_feature_model
from .search import QueryResult, queries_from_features, queries_from_images, search_gallery

__all__ = ["FeatureSet", "ImageRecord", "extract_folder", "list_images", "load_features", "KINDS", "GalleryIndex",
           "build_index", "FeatureModel", "load_feature_model", "QueryResult", "queries_from_features",
           "queries_from_images", "search_gallery"]
