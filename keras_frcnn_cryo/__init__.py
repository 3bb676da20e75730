"""keras_frcnn_cryo: Faster R-CNN (Li et al. 2019) for organelles in cryo-electron tomography."""
__version__ = "0.1.0"
