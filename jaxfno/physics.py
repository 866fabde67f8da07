"""Differentiable forward model and losses (SPEC §2). Pure JAX functions, jit-able.

Shapes: object patches (B, 64, 64) complex, measured amplitude X (B, 64, 64) or (B, 64, 64, 1),
``mask`` (B,) with 1 for real samples and 0 for the padding that fills a short last batch up
to the static batch size (so one compiled step serves every batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxfno.config import PhysicsConfig

N = 64
CENTRAL = slice(16, 48)  # upstream's "object_big" support: the central 32 × 32
MAE_EPS = 1e-8
POISSON_EPS = 1e-8  # keeps log(rate) finite where the predicted amplitude is 0


def far_field(psi: jax.Array) -> jax.Array:
    """fftshift(fft2(ψ, norm="ortho")) over the last two axes: DC at pixel (32, 32)."""
    return jnp.fft.fftshift(jnp.fft.fft2(psi, norm="ortho"), axes=(-2, -1))


def object_from_output(y: jax.Array) -> jax.Array:
    """Generator output (B, 64, 64, 2) real → (B, 64, 64) complex: channel 0 real, 1 imag."""
    return jax.lax.complex(y[..., 0], y[..., 1])


def central_support() -> jax.Array:
    """(64, 64) float32: 1 on rows/cols 16:48, 0 elsewhere."""
    return jnp.zeros((N, N), jnp.float32).at[CENTRAL, CENTRAL].set(1.0)


def predicted_amplitude(obj: jax.Array, probe: jax.Array, gain=1.0,
                        object_support: str = "full") -> jax.Array:
    """A = g·|F(O·P)|; with object_support="central" O is zeroed outside the central 32 × 32."""
    if object_support == "central":
        obj = obj * central_support()
    elif object_support != "full":
        raise ValueError(f"object_support={object_support!r} is not one of {PhysicsConfig.OBJECT_SUPPORTS}")
    return gain * jnp.abs(far_field(obj * probe))


def loss_terms(pred_amp: jax.Array, measured: jax.Array, mask: jax.Array, mode: str) -> jax.Array:
    """Scalar loss over the valid samples of a padded batch.

    "mae": mean|A − X| / (mean X + 1e-8) over valid samples and pixels; the denominator carries
    no gradient. "poisson": per pattern Σ_pixels (A² − X²·log(A² + eps)), mean over valid
    patterns: the negative Poisson log-likelihood of counts X² at rate A², without the
    constant log(X²!) term (so its minimum is not 0).
    """
    measured = measured.reshape(pred_amp.shape)
    valid = mask.astype(bool)[:, None, None]
    n_valid = jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0)
    if mode == "mae":
        pixels = n_valid * pred_amp.shape[-1] * pred_amp.shape[-2]
        # where(), not a product with the mask: padded rows may hold anything, NaN included
        err = jnp.sum(jnp.where(valid, jnp.abs(pred_amp - measured), 0.0)) / pixels
        scale = jnp.sum(jnp.where(valid, measured, 0.0)) / pixels + MAE_EPS
        return err / jax.lax.stop_gradient(scale)
    if mode == "poisson":
        rate, counts = pred_amp**2, measured**2
        nll = rate - counts * jnp.log(rate + POISSON_EPS)
        return jnp.sum(jnp.where(valid, nll, 0.0)) / n_valid
    raise ValueError(f"loss mode {mode!r} is not one of {PhysicsConfig.LOSSES}")


def batch_gain(mask: jax.Array, mode: str) -> jax.Array:
    """Amplitude gain g: 1 ("none") or the number of valid samples ("upstream" batch-size bug)."""
    if mode == "none":
        return jnp.float32(1.0)
    if mode == "upstream":
        return jnp.sum(mask.astype(jnp.float32))
    raise ValueError(f"batch_gain={mode!r} is not one of {PhysicsConfig.BATCH_GAINS}")


def model_amplitude(model_output: jax.Array, mask: jax.Array, probe: jax.Array,
                    physics_cfg: PhysicsConfig) -> jax.Array:
    """Generator output (B, 64, 64, 2) → the amplitude the loss compares with X (gain included)."""
    return predicted_amplitude(object_from_output(model_output), probe,
                               batch_gain(mask, physics_cfg.batch_gain), physics_cfg.object_support)


def physics_loss(model_output: jax.Array, measured: jax.Array, mask: jax.Array,
                 probe: jax.Array, physics_cfg: PhysicsConfig) -> jax.Array:
    """Generator output (B, 64, 64, 2) + measured X → scalar loss (what training minimises)."""
    return loss_terms(model_amplitude(model_output, mask, probe, physics_cfg), measured, mask,
                      physics_cfg.loss)


def scale_free_loss(amps: jax.Array, measured: jax.Array, masks: jax.Array, mode: str,
                    log_range: float = 7.0, iterations: int = 40) -> jax.Array:
    """The batch-size-weighted mean loss over batches ``amps``/``measured`` (S, B, 64, 64) and
    ``masks`` (S, B) after fitting one global amplitude factor a (SPEC §6.3): min over
    a ∈ [e^−7, e^7] by golden-section search on log a (the loss is convex in a, so unimodal in
    log a), never above the loss at a = 1."""
    counts = masks.sum(axis=1)

    def loss_at(log_a):
        losses = jax.vmap(lambda a, x, m: loss_terms(jnp.exp(log_a) * a, x, m, mode))(amps, measured, masks)
        return jnp.sum(losses * counts) / jnp.sum(counts)

    ratio = (5 ** 0.5 - 1) / 2

    def body(_, carry):  # keeps the interior points' values: one new evaluation per iteration
        lo, hi, c, d, fc, fd = carry
        left = fc < fd
        lo, hi = jnp.where(left, lo, c), jnp.where(left, d, hi)
        c_new, d_new = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        new_point = jnp.where(left, c_new, d_new)
        f_new = loss_at(new_point)
        c, d = jnp.where(left, c_new, d), jnp.where(left, c, d_new)
        fc, fd = jnp.where(left, f_new, fd), jnp.where(left, fc, f_new)
        return lo, hi, c, d, fc, fd

    lo, hi = jnp.float32(-log_range), jnp.float32(log_range)
    c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    carry = jax.lax.fori_loop(0, iterations, body, (lo, hi, c, d, loss_at(c), loss_at(d)))
    return jnp.minimum(jnp.minimum(carry[4], carry[5]), loss_at(jnp.float32(0.0)))


def forward_probe(dataset) -> jax.Array:
    """P_fwd = probeGuess / probe_scale, the stored ``probe_simulated`` (complex64)."""
    return jnp.asarray(dataset.probe_simulated, jnp.complex64)
