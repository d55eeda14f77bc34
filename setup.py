"""Installs distkeras: distributed training of Keras 3 models on Apache Spark."""

from setuptools import find_packages, setup

EXAMPLES = ["scikit-learn>=1.3", "matplotlib>=3.7"]
# The docs site (mkdocs build --strict) and the notebooks, executed headless by the tests.
DOCS = ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26"]
NOTEBOOKS = ["nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29"]
# Spark Connect clients (gRPC, protobuf): `SparkSession.builder.remote(...)`; the tests run on
# a Connect session too.
CONNECT = ["pyspark[connect]>=4.0"]
# Keras' TensorBoard callback cannot write event files without it (tests/test_callbacks.py).
TENSORBOARD = ["tensorboard>=2.16"]
# The package's import contracts (.importlinter), checked by tests/test_layout.py.
LAYOUT = ["import-linter>=2.0"]
# Keras' other backends (KERAS_BACKEND=jax / torch; docs/backends.md). JAX's CPU build is
# small, so the tests run on it too (tests/test_backends.py); PyTorch's PyPI wheel pulls its
# CUDA libraries (GBs), so it stays out of `test`: `make test-torch` installs it.
JAX = ["jax[cpu]>=0.4.30"]
TORCH = ["torch>=2.1"]
# distkeras.integrations.mlflow: one MLflow run per distributed fit, a servable logged model.
# The skinny client serves a Keras model through pyfunc and spark_udf (checked in
# tests/test_mlflow.py): the full `mlflow` would add its server, UI and plotting stack.
# SQLAlchemy and Alembic are its SQLite tracking store, the embedded default (the file
# store is in maintenance mode and refuses to start unless opted in).
MLFLOW = ["mlflow-skinny>=3.0", "sqlalchemy>=1.4", "alembic>=1.8"]
# distkeras.integrations.optuna and examples/tuning.ipynb: trials as distributed fits.
TUNING = ["optuna>=3.0"]
TEST = [
    "pytest>=8",
    # A per-test time limit (pytest.ini): a hang fails with a traceback instead of stalling CI.
    "pytest-timeout>=2.2",
    "hypothesis>=6",
    "ruff>=0.6",
    *EXAMPLES,
    *DOCS,
    *NOTEBOOKS,
    *CONNECT,
    *TENSORBOARD,
    *LAYOUT,
    *JAX,
    *MLFLOW,
    *TUNING,
]

setup(
    name="distkeras",
    version="0.1.0",
    description="Distributed training of Keras 3 models on Apache Spark",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["distkeras", "distkeras.*"]),
    python_requires=">=3.11",
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.0",
        "pyspark>=3.5",
        "numpy",
        # Spark's columnar (Arrow) transfer of DataFrame partitions needs these two.
        "pyarrow>=11",
        "pandas>=2.0,<3",  # PySpark warns that pandas 3 is not yet supported
        # Poly1305 frame tags, X25519 and AES-256-GCM of the parameter server's sessions:
        # OpenSSL's primitives, not home-made ones.
        # 47: AESGCM.encrypt_into / decrypt_into, which the sealed records are written with.
        "cryptography>=47",
    ],
    extras_require={
        "test": TEST,
        "examples": EXAMPLES,
        "docs": DOCS,
        "connect": CONNECT,
        "jax": JAX,
        "torch": TORCH,
        "mlflow": MLFLOW,
        "tuning": TUNING,
    },
    entry_points={"console_scripts": ["distkeras=distkeras.cli:main"]},
)
