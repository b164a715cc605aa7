"""Image embeddings: model loading, image decoding, batched embedding and the FAISS index."""

from embeddings.decode import DecodedImage, ImageLimits, decode_image
from embeddings.embedder import ImageEmbedder, load_embedder
from embeddings.errors import ImageRejected, ModelLoadError
from embeddings.index import IndexHit, VectorIndex
from embeddings.spec import ModelSpec

__all__ = [
    "DecodedImage",
    "ImageEmbedder",
    "ImageLimits",
    "ImageRejected",
    "IndexHit",
    "ModelLoadError",
    "ModelSpec",
    "VectorIndex",
    "decode_image",
    "load_embedder",
]
