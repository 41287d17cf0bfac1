"""Builds the layerskip C library (the Rust crate one directory up) into the
package: the wheel carries liblayerskip, and the binding loads it with ctypes."""
from setuptools import setup
from setuptools_rust import Binding, RustExtension

setup(
    rust_extensions=[
        RustExtension(
            "layerskip.liblayerskip",
            path="../Cargo.toml",
            binding=Binding.NoBinding,
        )
    ],
    zip_safe=False,
)
