"""jaxfno: the PtychoPINN grid_lines Stage A FNO stability study, rebuilt in JAX.

Stages, in the direction data flows: ``data`` (simulated benchmark) → ``models`` (Flax NNX
generators) → ``physics`` (diffraction model and loss) → ``training`` (Optax, jit, Orbax) →
``evaluation`` (stitching, metrics, collapse verdict) → ``report``; ``pipeline`` runs one run
end to end and ``study`` runs arms × seeds.
"""

__version__ = "0.1.0"
