"""The sandbox Kubernetes cluster: a simulated API server plus a flux simulator (no real cluster runs here)."""

from kubesim.cluster import FluxSimulatorConfig, SandboxCluster

__all__ = ["FluxSimulatorConfig", "SandboxCluster"]
