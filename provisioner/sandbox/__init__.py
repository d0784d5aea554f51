"""The sandbox Kubernetes cluster: a simulated API server plus a flux simulator (no real cluster runs here)."""

from provisioner.sandbox.cluster import FluxSimulatorConfig, SandboxCluster

__all__ = ["FluxSimulatorConfig", "SandboxCluster"]
