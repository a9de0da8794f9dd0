"""The optional C extension of the gate's fast path (``streams/gate/_native.c``).

Everything else is declared in pyproject.toml. The extension is optional: where it
cannot be built, the package installs without it and the gate decides every post in
Python (``streams/gate/native.py``)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "streams.gate._native",
            ["streams/gate/_native.c"],
            extra_compile_args=["-O2", "-Wall", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
