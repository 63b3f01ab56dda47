"""pegasus: latent-space editing on an adversarially regularised CIFAR-10 autoencoder."""
from setuptools import find_packages, setup

setup(
    name="pegasus",
    version="0.1.0",
    description="Train an adversarially regularised autoencoder on CIFAR-10 and edit its latent space.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["autoencoder", "autoencoder.*", "latent_ops", "latent_ops.*"]),
    package_data={"autoencoder": ["weights/evaluator/*", "weights/perceptual/*"],
                  "latent_ops": ["explore/static/*"]},  # committed fp16 nets and cards
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.2",
        "torchvision>=0.17",
        "scikit-learn>=1.3",
        "umap-learn>=0.5",
        "matplotlib>=3.7",
        "fire>=0.5",
        "tqdm>=4.60",
        "safetensors>=0.4",
        "pillow>=10.0",
        "numpy>=1.24",
        "lark>=1.1",
        "starlette>=0.37",  # the explorer's server (latent_ops.explore)
        "uvicorn>=0.29",
    ],
    extras_require={
        "dev": ["pytest>=7.4", "hypothesis>=6.80", "nbclient>=0.8", "nbformat>=5.9", "ipykernel>=6.0",
                "pytest-playwright>=0.5", "httpx2>=2.0"],  # drives Debian's Chromium (apt-get install chromium), never a download
    },
)
