"""spyx fixture: Linear -> LIF MLP with per-neuron betas (spyx's default when beta is not given),
trained with optax; exported with spyx.nir.to_nir (default dt = 1)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import spyx
from flax import nnx
from spyx import nn as snn

from common import T, accuracy, batches, digits, predictions, save_fixture, test_inputs


def mlp():
    rngs = nnx.Rngs(0)
    return snn.Sequential(nnx.Linear(196, 64, rngs=rngs), snn.LIF((64,), rngs=rngs),
                          nnx.Linear(64, 10, rngs=rngs), snn.LIF((10,), rngs=rngs))


def run(model, x):
    """x (B, T, 196) -> output spikes (B, T, 10), spyx.nn.run (jax.lax.scan)."""
    out, _ = snn.run(model, x, batch_major=True)
    return out


def make():
    model = mlp()
    opt = nnx.Optimizer(model, optax.adam(5e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x, y):
        def loss_fn(m):
            scores = run(m, x).sum(1)
            return optax.softmax_cross_entropy_with_integer_labels(scores, y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    x_train, y_train, _, _ = digits()
    for i, (xb, yb) in enumerate(batches(x_train.reshape(len(x_train), -1), y_train, 64, 300, 1)):
        loss = step(model, opt, jnp.asarray(xb, jnp.float32), jnp.asarray(yb))
        if i % 100 == 0 or i == 299:
            print(f"  step {i}: loss {float(loss):.3f}", flush=True)
    x, labels = test_inputs()
    tool_out = np.asarray(run(model, jnp.asarray(x.reshape(len(x), T, -1), jnp.float32)))
    tool_pred = predictions(tool_out.sum(1))
    from spyx.nir import to_nir
    graph = to_nir(model, {"input": np.array([196])}, {"output": np.array([10])})
    beta = np.asarray(model.layers[1].beta[...])
    meta = dict(
        tool="spyx", version=spyx.__version__, jax=jax.__version__,
        net=f"Sequential(nnx.Linear(196,64), LIF((64,)), nnx.Linear(64,10), LIF((10,))); "
            f"per-neuron betas trained (beta=None), threshold 1; input flattened (196,), T = {T}",
        exporter="spyx.nir.to_nir(model, {'input': np.array([196])}, {'output': np.array([10])}) "
                 "(dt = 1, the default)",
        dt_user="none (spyx is discrete time; to_nir's dt defaults to 1)",
        reset_training="subtract (spyx LIF: V = beta V + x - s threshold), the spike taken from "
                       "the state before the update (s[t] = V[t-1] > threshold)",
        readout="spike counts of the last LIF over T steps; prediction = argmax (first on ties)",
        tool_accuracy=accuracy(tool_pred, labels),
        hidden_beta_range=[float(beta.min()), float(beta.max())],
        exporter_losses="r written as beta (NIR's Euler step then scales the input by "
                        "(1 - beta) beta instead of 1); reset by subtraction and the "
                        "spike-before-update timing not written; no dt metadata",
    )
    x = x.reshape(len(x), T, -1)  # as spyx took it
    data = dict(x=x, labels=labels, tool_out=tool_out.astype(np.uint8), tool_pred=tool_pred)
    save_fixture("spyx_lif_mlp", graph, data, meta)
