"""tff_hsq: Hyper-Sphere Quantization for TensorFlow Federated.

Install for development with `make venv` (see README.md): TensorFlow Federated 0.87.0 pins a
jaxlib that the package index does not carry, so the Makefile installs the pinned environment
of requirements.txt, then TFF and this package with --no-deps.
"""

import setuptools

setuptools.setup(
    name='tff_hsq',
    version='0.1.0',
    description='Hyper-Sphere Quantization (Dai et al., arXiv 1911.04655) as a TensorFlow '
    'Federated aggregator.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9,<3.12',
    packages=['tff_hsq'],
    package_data={'tff_hsq': ['data/codebooks.npz']},
    install_requires=[
        'absl-py>=1.0',
        'numpy~=1.25',
        'tensorflow~=2.14.0',
        'tensorflow-federated~=0.87.0',
    ],
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
