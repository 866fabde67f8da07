"""Generators (SPEC §3): parameter accounting, spectral-layer maths, block behaviour at init,
PyTorch parity, PyTorch-default initialisation, and split/merge under jit and vmap."""

import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxfno.config import ModelConfig
from jaxfno.bench import bench_layers, bench_model
from jaxfno.config import ConfigError
from jaxfno.execution import ExecutionConfig
from jaxfno.models import (PtychoBlock, SpectralConv2d, StablePtychoBlock, block_parameter_stats,
                           build_model, build_stacked, parameter_counts, summary_table)

SMALL = ModelConfig(width=4, blocks=3, modes=4)


# --- parameter accounting -------------------------------------------------------------------

@pytest.mark.parametrize("cfg, expected", [
    (ModelConfig(), 17_202_402),
    (ModelConfig(arch="stable_hybrid"), 17_204_610),
    (ModelConfig(arch="stable_hybrid", zero_gamma=True), 17_203_874),
    (ModelConfig(blocks=6, max_hidden_channels=512), 118_263_522),
    (ModelConfig(blocks=6), 276_075_746),
])
def test_parameter_counts_match_upstream(cfg, expected):
    counts = parameter_counts(cfg)
    assert counts["torch_numel"] == expected
    assert counts["effective"] < counts["torch_numel"] < counts["real_scalars"]


def test_effective_count_excludes_unreachable_spectral_weights():
    counts = parameter_counts(ModelConfig())
    # Unused entries of the allocated 12×12 (bottleneck 6×6) blocks, in·out·(allocated − used):
    # 16×16 map: 12×9 used; 8×8 map: 8×5 used; bottleneck 8×8: 6×5 used.
    unused = 128**2 * (144 - 108) + 256**2 * (144 - 40) + 256**2 * (36 - 30)
    assert counts["torch_numel"] - counts["effective"] == unused  # ≈ 7.8 M (SPEC §3.3)
    rows = summary_table(ModelConfig())
    assert sum(count for _, _, count in rows) == counts["real_scalars"]
    assert ("enc.3.spectral.weight_re", (12, 12, 256, 256), 256 * 256 * 144) in rows


@pytest.mark.parametrize("blocks", [8, 9])
def test_too_deep_is_rejected(blocks):
    with pytest.raises(ValueError, match=rf"blocks={blocks}.*64×64.*at most 7 blocks"):
        build_model(ModelConfig(blocks=blocks), 0)


def test_deepest_model_reaches_a_one_pixel_level():
    """7 blocks at N = 64: the bottleneck (InstanceNorm included) works on a 1×1 map (SPEC §3.3
    rejects only 8)."""
    # Random weights: compiling the initialiser of 7 levels takes 25 s, the forward pass 3 s.
    graphdef, params = nnx.split(nnx.eval_shape(
        lambda: build_model(ModelConfig(arch="stable_hybrid", width=2, blocks=7, modes=2), 0)))
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda leaf: rng.normal(0, 0.3, leaf.shape).astype(np.float32), params)
    forward = jax.jit(lambda params, x: nnx.merge(graphdef, params)(x))
    out = forward(params, rng.normal(size=(2, 64, 64, 1)).astype(np.float32))
    assert out.shape == (2, 64, 64, 2) and bool(jnp.isfinite(out).all())


# --- spectral convolution ---------------------------------------------------------------------

def _dense_spectral_reference(x, w, variant, modes):
    """The layer written with explicit DFT matrices (float64), independent of jnp.fft."""
    b, h, wd, _ = x.shape
    y_, x_ = np.arange(h), np.arange(wd)
    fwd_h = np.exp(-2j * np.pi * np.outer(np.arange(h), y_) / h)
    fwd_w = np.exp(-2j * np.pi * np.outer(np.arange(wd // 2 + 1), x_) / wd)
    spectrum = np.einsum("ky,lx,byxi->bkli", fwd_h, fwd_w, x)  # half spectrum (B, H, W/2+1, in)
    if variant == "upstream":
        ky = list(range(min(modes, h)))
        weight_rows = ky
        n_kx = min(modes, wd // 2 + 1)
    else:
        half = modes // 2
        k = min(half, h // 2)
        ky = list(range(k)) + list(range(-k, 0))
        weight_rows = [f if f >= 0 else 2 * half + f for f in ky]  # row 2·half−|ky| for ky < 0
        n_kx = min(half + 1, wd // 2 + 1)
    out_spec = np.zeros((b, h, wd // 2 + 1, w.shape[1]), complex)
    for f, r in zip(ky, weight_rows):
        for kx in range(n_kx):
            out_spec[:, f % h, kx] = spectrum[:, f % h, kx] @ w[:, :, r, kx]
    # irfft2: inverse DFT over rows, then a Hermitian inverse over columns (DC and Nyquist once).
    z = np.einsum("ky,bklo->bylo", np.conj(fwd_h), out_spec) / h
    weights = np.where((np.arange(wd // 2 + 1) == 0) | (np.arange(wd // 2 + 1) == wd // 2), 1, 2)
    return np.einsum("bylo,l,lx->byxo", z, weights, np.conj(fwd_w)).real / wd


@pytest.mark.parametrize("variant", ["upstream", "symmetric"])
@pytest.mark.parametrize("h, w, modes", [(16, 16, 6), (8, 8, 12), (8, 12, 5)])
def test_spectral_conv_matches_dense_dft(variant, h, w, modes):
    layer = SpectralConv2d(3, 2, modes, variant, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, h, w, 3))
    weight = np.asarray(layer.weight_re[...], np.float64) + 1j * np.asarray(layer.weight_im[...])
    weight = weight.transpose(2, 3, 0, 1)  # stored (m, m, in, out); the reference reads (in, out, m, m)
    expected = _dense_spectral_reference(np.asarray(x, np.float64), weight, variant, modes)
    out = layer(x)
    assert out.dtype == jnp.float32 and out.shape == (2, h, w, 2)
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("variant", ["upstream", "symmetric"])
def test_spectral_conv_is_circular_shift_equivariant(variant):
    layer = SpectralConv2d(2, 3, 6, variant, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (1, 16, 16, 2))
    shifted = layer(jnp.roll(x, (3, -5), axis=(1, 2)))
    np.testing.assert_allclose(shifted, jnp.roll(layer(x), (3, -5), axis=(1, 2)), atol=1e-5)


@pytest.mark.parametrize("variant, passes_negative", [("upstream", False), ("symmetric", True)])
def test_negative_vertical_frequency_at_full_resolution(variant, passes_negative):
    n = 32
    layer = SpectralConv2d(1, 1, 8, variant, rngs=nnx.Rngs(0))
    yy, xx = jnp.meshgrid(jnp.arange(n), jnp.arange(n), indexing="ij")

    def wave(ky, kx):  # one (ky, kx) bin of the rfft2 half spectrum (kx > 0)
        return jnp.cos(2 * jnp.pi * (ky * yy + kx * xx) / n)[None, :, :, None]

    assert jnp.abs(layer(wave(3, 2))).max() > 1e-2
    negative = jnp.abs(layer(wave(-3, 2))).max()
    assert (negative > 1e-2) if passes_negative else (negative < 1e-6)


# --- blocks -----------------------------------------------------------------------------------

def _block_input():
    return jax.random.normal(jax.random.key(3), (2, 16, 16, 4))


def test_ptycho_block_with_zero_params_is_identity():
    block = PtychoBlock(4, 4, rngs=nnx.Rngs(0))
    nnx.update(block, jax.tree.map(jnp.zeros_like, nnx.state(block, nnx.Param)))
    x = _block_input()
    y, update = block(x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(update, 0)


def test_stable_block_near_identity_with_centred_update_and_trainable_layerscale():
    block = StablePtychoBlock(4, 4, layerscale_init=1e-3, rngs=nnx.Rngs(0))
    x = _block_input()
    y, update = block(x)
    assert not np.array_equal(y, x)
    rms = float(jnp.sqrt(jnp.mean(jnp.square(y - x))))
    assert 5e-4 < rms < 1.5e-3  # λ · (unit-variance normalised update)
    np.testing.assert_allclose(jnp.mean(update, axis=(1, 2)), 0, atol=1e-8)  # bias 0 at init

    graphdef, params = nnx.split(block)
    target = jax.random.normal(jax.random.key(4), x.shape)
    grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x)[0] * target))(params)
    assert jnp.all(grads["layerscale"][...] != 0)


def test_zero_gamma_block_is_exact_identity_at_init():
    block = StablePtychoBlock(4, 4, zero_gamma=True, rngs=nnx.Rngs(0))
    assert block.layerscale is None
    x = _block_input()
    y, update = block(x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(update, 0)


# --- PyTorch twin -----------------------------------------------------------------------------

def test_package_does_not_import_torch():
    code = "import sys, jaxfno.models; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("arch, spectral", [("hybrid", "upstream"), ("hybrid", "symmetric"),
                                            ("stable_hybrid", "upstream"),
                                            ("stable_hybrid", "symmetric"), ("fno", "upstream")])
def test_pytorch_parity(arch, spectral):
    torch = pytest.importorskip("torch")
    from jaxfno.models.torch_twin import build_torch_model, copy_torch_to_flax

    torch.manual_seed(0)
    # A large λ so that the stable blocks' updates visibly reach the output.
    cfg = ModelConfig(arch=arch, width=8, blocks=3, spectral=spectral, layerscale_init=0.5)
    twin = build_torch_model(cfg)
    model = copy_torch_to_flax(twin, build_model(cfg, 0))
    x = np.random.default_rng(0).random((2, 64, 64, 1), np.float32)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(model(jnp.asarray(x)), expected, atol=1e-4)


def test_init_follows_pytorch_defaults():
    pytest.importorskip("torch")  # the twin needs it
    from jaxfno.models.torch_twin import build_torch_model, copy_torch_to_flax

    cfg = ModelConfig(width=8, blocks=3)
    model = build_model(cfg, 0)
    twin_as_flax = copy_torch_to_flax(build_torch_model(cfg), build_model(cfg, 1))
    # fan_in per layer kind; ConvTranspose2d uses out·kh·kw (PyTorch reads weight dim 1).
    bounds = {
        "enc.1.conv.kernel": 16 * 9, "dec.0.conv1.kernel": 32 * 9, "down.1.kernel": 16 * 4,
        "up.0.kernel": 16 * 4, "up.1.kernel": 8 * 4, "head.kernel": 8,
    }
    flat = {".".join(map(str, p)): v[...] for p, v in nnx.to_flat_state(nnx.state(model))}
    twin = {".".join(map(str, p)): v[...] for p, v in nnx.to_flat_state(nnx.state(twin_as_flax))}
    for name, fan_in in bounds.items():
        bound = fan_in ** -0.5
        for values in (flat[name], twin[name]):
            assert float(jnp.abs(values).max()) <= bound
            if values.size >= 256:
                assert float(jnp.abs(values).max()) > 0.9 * bound
                np.testing.assert_allclose(float(jnp.std(values)), bound / 3**0.5, rtol=0.15)
        bias = flat[name.replace("kernel", "bias")]
        assert float(jnp.abs(bias).max()) <= bound
    for values in (flat["enc.2.spectral.weight_re"], twin["enc.2.spectral.weight_im"]):
        np.testing.assert_allclose(float(jnp.std(values)), (2 * 32) ** -0.5, rtol=0.05)


# --- split / merge, jit, vmap over seeds ------------------------------------------------------

def test_split_merge_inside_jit_with_block_stats():
    cfg = SMALL.replace(arch="stable_hybrid")
    model = build_model(cfg, 0)
    graphdef, params = nnx.split(model)
    x = jax.random.uniform(jax.random.key(0), (2, 64, 64, 1))

    @jax.jit
    def forward(p, x):
        return nnx.merge(graphdef, p)(x, with_block_stats=True)

    out, stats = forward(params, x)
    assert out.shape == (2, 64, 64, 2)
    np.testing.assert_allclose(out, model(x), atol=1e-5)
    assert set(stats) == {"enc0", "enc1", "enc2", "bottleneck"}
    for entry in stats.values():
        assert entry["update_rms"].shape == () and 0 < float(entry["update_rms"]) < 1e-2
        assert float(entry["output_rms"]) > 0


def test_block_parameter_stats():
    stable = nnx.split(build_model(SMALL.replace(arch="stable_hybrid", layerscale_init=0.01), 0))[1]
    stats = jax.jit(block_parameter_stats)(stable)
    assert set(stats) == {"enc0", "enc1", "enc2", "bottleneck"}
    np.testing.assert_allclose(stats["bottleneck"]["layerscale_abs_mean"], 0.01)
    np.testing.assert_allclose(stats["enc0"]["norm_scale_mean"], 1.0)
    zero_gamma = SMALL.replace(arch="stable_hybrid", zero_gamma=True)
    zero = block_parameter_stats(build_model(zero_gamma, 0))
    assert zero["enc1"]["layerscale_abs_mean"] is None
    assert float(zero["enc1"]["norm_scale_mean"]) == 0.0
    plain = block_parameter_stats(build_model(SMALL, 0))
    assert plain["bottleneck"] == {"layerscale_abs_mean": None, "norm_scale_mean": None}


def test_vmapped_init_and_forward_over_seeds():
    keys = jax.random.split(jax.random.key(7), 3)
    graphdef, params = build_stacked(SMALL, keys)
    kernels = params["enc"][0]["conv"]["kernel"][...]
    assert kernels.shape[0] == 3
    assert not np.allclose(kernels[0], kernels[1]) and not np.allclose(kernels[1], kernels[2])

    x = jax.random.uniform(jax.random.key(0), (2, 64, 64, 1))
    outs = jax.jit(jax.vmap(lambda p: nnx.merge(graphdef, p)(x)))(params)
    for k in range(3):
        single = build_model(SMALL, keys[k])  # the same seed builds the same model outside vmap
        one = jax.tree.map(lambda a: a[k], params)
        jax.tree.map(np.testing.assert_array_equal, one, nnx.state(single))
        np.testing.assert_allclose(outs[k], single(x), atol=1e-5)


def _sin_sum_value_and_grads(graphdef):
    """(value, (grad w.r.t. params, grad w.r.t. input)) of sum(sin(module(x))): a scalar that
    exercises every output element, for comparing execution choices."""
    def value_and_grads(p, x):
        return jax.value_and_grad(lambda p, x: jnp.sum(jnp.sin(nnx.merge(graphdef, p)(x))),
                                  argnums=(0, 1))(p, x)
    return value_and_grads


def _assert_trees_close(a, b, rtol, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@pytest.mark.parametrize("members", [None, 3])
def test_conv3x3_implementations_agree(members):
    """``im2col`` computes the same convolution (values and gradients) as ``xla``, alone and
    vmapped over members with their own kernels."""
    from jaxfno.models.layers import Conv3x3

    _, params = nnx.split(Conv3x3(5, 6, rngs=nnx.Rngs(0)))
    if members:
        keys = jax.random.split(jax.random.key(1), members)
        params = jax.vmap(lambda k: nnx.state(Conv3x3(5, 6, rngs=nnx.Rngs(k))))(keys)
    x = jax.random.normal(jax.random.key(2), (2, 9, 7, 5))

    def traced(impl):  # the implementation is a constructor argument (static in the graphdef)
        graphdef = nnx.graphdef(Conv3x3(5, 6, impl=impl, rngs=nnx.Rngs(0)))
        value_and_grads = _sin_sum_value_and_grads(graphdef)
        fn = jax.vmap(value_and_grads, in_axes=(0, None)) if members else value_and_grads
        return str(jax.make_jaxpr(fn)(params, x)), jax.jit(fn)(params, x)

    (xla_jaxpr, xla), (im2col_jaxpr, im2col) = map(traced, ("xla", "im2col"))
    assert "conv_general_dilated" in xla_jaxpr and "conv_general_dilated" not in im2col_jaxpr
    _assert_trees_close(xla, im2col, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="conv3x3 implementation 'winograd'"):
        traced("winograd")
    # the execution config resolves "auto" per backend
    assert ExecutionConfig().resolved("cpu").spectral_transform == "dft"
    assert ExecutionConfig().resolved("gpu").spectral_transform == "fft"
    with pytest.raises(ConfigError, match="execution.conv3x3='winograd'"):
        ExecutionConfig(conv3x3="winograd")


@pytest.mark.parametrize("variant", ["upstream", "symmetric"])
def test_spectral_mixings_agree(variant):
    """The ``real`` mode mixing (two real matmuls, each weight part read once) computes the
    same layer, values and gradients, as the ``complex`` einsum, on a map small enough to cap
    the modes."""
    from jaxfno.models.layers import SpectralConv2d

    _, params = nnx.split(SpectralConv2d(4, 5, 6, variant, rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(2), (2, 8, 6, 4))

    def traced(mixing):  # fft: the dft path always mixes in reals
        graphdef = nnx.graphdef(SpectralConv2d(4, 5, 6, variant, transform="fft", mixing=mixing,
                                               rngs=nnx.Rngs(0)))
        forward = str(jax.make_jaxpr(lambda p, x: nnx.merge(graphdef, p)(x))(params, x))
        return forward.count("dot_general"), jax.jit(_sin_sum_value_and_grads(graphdef))(params, x)

    (complex_dots, complex_), (real_dots, real) = traced("complex"), traced("real")
    assert real_dots == 2 * complex_dots > 0
    _assert_trees_close(complex_, real, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="mixing 'gauss'"):
        traced("gauss")


@pytest.mark.parametrize("variant", ["upstream", "symmetric"])
@pytest.mark.parametrize("shape", [(8, 8), (9, 7), (64, 64)], ids=["nyquist", "odd", "uncapped"])
def test_spectral_transforms_agree(variant, shape):
    """The ``dft`` transform (matmuls with the kept modes' cosine and sine tables) computes the
    same layer, values and gradients, as rfft2/irfft2: with modes capped by the map and the
    Nyquist column kept (8×8), on an odd map (9×7), and with modes below the map's (64×64)."""
    from jaxfno.models.layers import SpectralConv2d

    _, params = nnx.split(SpectralConv2d(4, 5, 12, variant, rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(2), (2, *shape, 4))

    def traced(transform):
        graphdef = nnx.graphdef(SpectralConv2d(4, 5, 12, variant, transform=transform, rngs=nnx.Rngs(0)))
        forward = str(jax.make_jaxpr(lambda p, x: nnx.merge(graphdef, p)(x))(params, x))
        return "fft" in forward, jax.jit(_sin_sum_value_and_grads(graphdef))(params, x)

    (fft_used, fft), (dft_fft_used, dft) = traced("fft"), traced("dft")
    assert fft_used and not dft_fft_used
    _assert_trees_close(fft, dft, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="transform 'fftw'"):
        traced("fftw")


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="compiler_options() sets an XLA:CPU option only; elsewhere it is None")
def test_cpu_convolution_engines_agree():
    """``eigen`` (the default) keeps convolutions out of YNNPACK and computes the same
    convolution, values and gradients, as jaxlib's default."""
    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    # 32 channels: jaxlib 0.10 leaves convolutions of a few channels to XLA anyway
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 32))
    k = jax.random.normal(jax.random.key(1), (3, 3, 32, 32)) / np.sqrt(9 * 32)  # outputs ~ 1

    def compiled(engine):
        fn = jax.jit(jax.value_and_grad(lambda x, k: jnp.sum(jnp.sin(conv(x, k))), argnums=(0, 1)),
                     compiler_options=ExecutionConfig(cpu_conv=engine).compiler_options())
        return fn.lower(x, k).compile()

    def fused_convolutions(executable) -> int:
        """Convolutions inside fusions (YNNPACK's) rather than in the entry computation."""
        computations = re.split(r"\n(?=\S)", executable.as_text())
        return sum(c.count(" convolution(") for c in computations if not c.startswith("ENTRY"))

    eigen, ynnpack = compiled("eigen"), compiled("ynnpack")
    # jaxlib's default puts the convolutions in YNNPACK fusions; the option takes them out
    assert fused_convolutions(ynnpack) == 3 and fused_convolutions(eigen) == 0
    _assert_trees_close(eigen(x, k), ynnpack(x, k), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="execution.cpu_conv='mkl'"):
        compiled("mkl")


def test_benchmark_smoke():
    result = bench_model(ModelConfig(width=2, blocks=2, modes=2), batch=1, repeats=1)
    assert result["forward_s"] > 0 and result["forward_backward_s"] > 0
    assert result["forward_compile_s"] > 0


def test_layer_benchmark_counts_every_layer_call():
    result = bench_layers(ModelConfig(width=2, blocks=2, modes=2), batch=1, repeats=1)
    counts = {}
    for row in result["layers"]:
        counts[row["layer"]] = counts.get(row["layer"], 0) + row["count"]
        assert row["forward_s"] > 0 and row["forward_backward_s"] > 0
    # lifter 2 + two encoder blocks + bottleneck + one decoder stage 2; three Fourier layers
    assert counts == {"Conv3x3": 7, "SpectralConv2d": 3, "Down2x2": 1, "Up2x2": 1, "Conv1x1": 1}
    assert result["model_forward_backward_s"] > 0


def test_execution_choices_change_no_numbers():
    """The generator's parameters, output and gradients are the same function of the inputs
    whatever the execution config chooses (up to float rounding)."""
    x = jax.random.uniform(jax.random.key(3), (2, 64, 64, 1))
    results = []
    for execution in (ExecutionConfig(conv3x3="xla", spectral_transform="fft", spectral_mixing="complex"),
                      ExecutionConfig(conv3x3="xla", spectral_transform="dft"),
                      ExecutionConfig(conv3x3="im2col", spectral_transform="fft", spectral_mixing="real")):
        graphdef, params = nnx.split(build_model(SMALL, 0, execution=execution))
        loss = lambda p: jnp.mean(jnp.square(nnx.merge(graphdef, p)(x)))  # noqa: E731
        results.append((params, jax.jit(jax.value_and_grad(loss))(params)))
    for params, value_and_grads in results[1:]:
        _assert_trees_close(results[0][0], params, rtol=0, atol=0)
        _assert_trees_close(results[0][1], value_and_grads, rtol=1e-4, atol=1e-6)
