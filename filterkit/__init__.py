"""filterkit: scaffold, build, test and ship proxy-wasm filters."""

__version__ = "0.1.0"
