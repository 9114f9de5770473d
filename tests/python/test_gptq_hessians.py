# `mxfp4 quantize --hessians FILE`, with FILE written from numpy by the official safetensors
# package as README.md shows: the file's F64 and F32 matrices are read as written (a diagonal H
# gives round to nearest's bytes exactly, a full one does not), the report names each weight's
# method, and a Hessian that does not fit its weight is one error line with no output.
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file


def read(path):
    """The file's names, and its U8 tensors (the MXFP4 parts) as arrays."""
    with safe_open(str(path), framework="np") as f:
        names = sorted(f.keys())
        return names, {k: f.get_tensor(k) for k in names if k.endswith((".blocks", ".scales"))}


def method_of(report, name):
    for line in report.splitlines():
        if line.startswith(name + " "):
            return line.split(" quantized ", 1)[1].split()[0]  # the column after the action
    raise AssertionError(f"no report line for {name}:\n{report}")


def test_hessians_file_from_numpy(run, tmp_path):
    ex = tmp_path / "ex.safetensors"
    plain, gptq = tmp_path / "rtn.safetensors", tmp_path / "gptq.safetensors"
    run("example", ex)
    run("quantize", ex, plain)
    rng = np.random.default_rng(7)
    # up: K = 128, activations with a shared component (F64, as the README computes it);
    # down: K = 256, a diagonal Hessian in F32 (moves no error: round to nearest's bytes).
    x = rng.standard_normal((500, 128)) + 2.0 * rng.standard_normal((500, 1))
    x64 = x.reshape(-1, x.shape[-1]).astype(np.float64)
    hessians = {
        "layers.0.mlp.up.weight": x64.T @ x64,
        "layers.0.mlp.down.weight": np.diag(rng.uniform(0.5, 2.0, 256)).astype(np.float32),
    }
    save_file(hessians, str(tmp_path / "h.safetensors"))
    p = run("quantize", ex, gptq, "--hessians", tmp_path / "h.safetensors")
    assert method_of(p.stdout, "layers.0.mlp.up.weight") == "gptq"
    assert method_of(p.stdout, "layers.0.mlp.down.weight") == "gptq"
    assert method_of(p.stdout, "experts.weight") == "rtn"
    (r_names, r), (g_names, g) = read(plain), read(gptq)
    assert r_names == g_names
    for name in ("layers.0.mlp.down.blocks", "layers.0.mlp.down.scales", "experts.blocks",
                 "experts.scales"):
        np.testing.assert_array_equal(g[name], r[name], err_msg=name)
    assert g["layers.0.mlp.up.blocks"].shape == (256, 64)
    assert not np.array_equal(g["layers.0.mlp.up.blocks"], r["layers.0.mlp.up.blocks"])


def test_hessian_of_the_wrong_shape_is_one_error_line(run, tmp_path):
    ex, out = tmp_path / "ex.safetensors", tmp_path / "out.safetensors"
    run("example", ex)
    save_file({"layers.0.mlp.down.weight": np.eye(128)}, str(tmp_path / "h.safetensors"))
    p = run("quantize", ex, out, "--hessians", tmp_path / "h.safetensors", ok=False)
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("mxfp4: error: ")
    assert "is [128, 128] but weight BF16 [128, 256] needs [K, K] = [256, 256]" in p.stderr
    assert not out.exists()
