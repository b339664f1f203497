"""The one thing pyproject.toml cannot declare stably: the compiled loops for ranking and for the
co-occurrence update (learner/kernels.py).

Optional: where no C compiler is found the install goes on without them, and numpy and Python do
the same work, slower. ``-ffp-contract=off``: no fused multiply-add, so the loops give numpy's numbers.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "learner._kernels",
            sources=["learner/_kernels.c"],
            optional=True,
            extra_compile_args=["-O2", "-ffp-contract=off"],
        )
    ]
)
