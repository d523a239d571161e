"""Shipping a built filter: the Istio ``WasmPlugin`` manifest (and, later, the OCI image)."""

from .manifest import istio_manifest, write_istio_manifest

__all__ = ["istio_manifest", "write_istio_manifest"]
