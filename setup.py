"""keras_frcnn_cryo: Faster R-CNN (Li et al. 2019) for organelles in cryo-electron tomography."""
from setuptools import find_packages, setup

setup(
    name="keras_frcnn_cryo",
    version="0.1.0",
    description="Faster R-CNN detection of mitochondria and other organelles in cryo-ET (Li et al. 2019)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["keras_frcnn_cryo", "keras_frcnn_cryo.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16",  # the Keras backend; the standard build runs on CPUs, and on GPUs with CUDA present
        "keras>=3.5",
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "mrcfile>=1.4",
        "lxml>=4.9",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "h5py>=3.8",
    ],
    extras_require={
        # A plain install (tensorflow) runs on CPUs. "gpu" adds NVIDIA's CUDA and cuDNN as pip wheels
        # (Linux). "cpu" adds nothing: it is kept so that older install commands still work.
        "cpu": [],
        "gpu": ["tensorflow[and-cuda]>=2.16"],
        "test": ["pytest>=7", "pytest-xdist>=3", "pycocotools>=2.0.7"],
    },
    entry_points={
        "console_scripts": [
            "frcnn-train=keras_frcnn_cryo.train:console_main",
            "frcnn-predict=keras_frcnn_cryo.predict:console_main",
            "frcnn-measure=keras_frcnn_cryo.evaluation:console_main",
        ]
    },
    license="MIT",
)
