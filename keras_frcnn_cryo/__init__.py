"""keras_frcnn_cryo: Faster R-CNN (Li et al. 2019) for organelles in cryo-electron tomography."""
import os as _os

# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature lists) is noise for our users;
# set TF_CPP_MIN_LOG_LEVEL yourself to see it.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
