"""Test-wide environment: quiet TensorFlow, a safe CPU path, a private image cache."""

import os
import tempfile

# Set before anything imports TensorFlow (the Keras CPU backend in tests).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow 2.21's oneDNN kernels segfault on the small ResNet's strided 1x1 convolution with
# batch norm (CPU, no XLA); the plain kernels are correct. search.run sets the same.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("REGSEARCH_CACHE_DIR", tempfile.mkdtemp(prefix="regsearch-cache-"))
