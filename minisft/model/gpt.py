"""GPT: a GPT-2-style transformer with an explicit backward pass (no autograd), NumPy or CuPy.

Architecture (GPT-2): learned token and position embeddings; n_layer pre-LayerNorm blocks
    x = x + c_proj(attn(c_attn(ln_1(x))))
    x = x + mlp.c_proj(gelu(mlp.c_fc(ln_2(x))))
a final LayerNorm, and an LM head tied to the token embedding (logits = ln_f(x) wteᵀ).

Gradients. `loss_and_grads` returns the gradient of every *trainable* tensor: the base tensors named
in `model.trainable` (all of them for a fresh model) and the parameters of attached adapters. The
backward pass is planned before the forward pass: a layer caches its input only when a gradient
below it or of its own weight is wanted, and backward stops at the lowest layer that wants
anything — a frozen weight costs no weight-gradient GEMM, no buffer, and frozen bottom layers cost
no activation memory at all.

Adapters (minisft.model.adapters) attach to a linear layer by name (`add_adapter`); the base tensors are
never modified by them ("wrap, don't mutate"). Each adapter has
    forward(x, y) -> (y, cache)         adds its contribution to the base output y (in place)
    backward(dy, cache, dx) -> {param name: grad}   adds its share of the input gradient into dx
and a `params` dict of its own trainable arrays, keyed by globally unique names. Gradients of a
parameter shared by several adapters (SharedLoRA) are summed.
"""

import math
import os

import numpy as np

from ..core.backend import array_module, resolve_backend, resolve_dtype, rng, to_numpy, xp_for
from ..core.config import GPTConfig
from ..core.errors import bad_type, bad_value, numeric_array, real_in, str_keyed_dict
from .memory import unique_nbytes
from ..nn import (IGNORE_INDEX, attention_backward, attention_forward, cross_entropy_backward, cross_entropy_forward,
    embedding_backward, embedding_forward, gelu_backward, gelu_forward, layernorm_backward, layernorm_forward,
    linear_backward, linear_forward)

LINEAR_SUFFIXES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
INIT_STD = 0.02


def param_shapes(cfg):
    """Every parameter of the model, in a fixed order, with its shape (HF GPT-2 names, (out, in))."""
    C, V = cfg.n_embd, cfg.vocab_size
    shapes = {"wte.weight": (V, C), "wpe.weight": (cfg.block_size, C)}
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        shapes.update({
            p + "ln_1.weight": (C,), p + "ln_1.bias": (C,),
            p + "attn.c_attn.weight": (3 * C, C), p + "attn.c_attn.bias": (3 * C,),
            p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
            p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
            p + "mlp.c_fc.weight": (4 * C, C), p + "mlp.c_fc.bias": (4 * C,),
            p + "mlp.c_proj.weight": (C, 4 * C), p + "mlp.c_proj.bias": (C,),
        })
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return shapes


def linear_layer_names(cfg):
    """The candidate linear layers: h.{i}.attn.c_attn, h.{i}.attn.c_proj, h.{i}.mlp.c_fc, h.{i}.mlp.c_proj."""
    return [f"h.{i}.{s}" for i in range(cfg.n_layer) for s in LINEAR_SUFFIXES]


def init_params(cfg, generator):
    """GPT-2 initialisation, drawn in float64 on the host in `param_shapes` order: weights and
    embeddings N(0, 0.02²); residual projections (attn.c_proj, mlp.c_proj) N(0, (0.02/√(2·n_layer))²);
    biases 0; LayerNorm weights 1."""
    params = {}
    for name, shape in param_shapes(cfg).items():
        if name.endswith(".bias"):
            params[name] = np.zeros(shape)
        elif ".ln_" in name or name.startswith("ln_f"):
            params[name] = np.ones(shape)
        else:
            std = INIT_STD / np.sqrt(2 * cfg.n_layer) if name.endswith("c_proj.weight") else INIT_STD
            params[name] = generator.standard_normal(shape) * std
    return params


def _check_tokens(arg, a, cfg, allow_ignore):
    """Validate a (B, T) integer token array on either backend."""
    if not (hasattr(a, "dtype") and hasattr(a, "shape")):
        raise bad_type(arg, a, "an integer array of shape (B, T)")
    if a.dtype.kind not in "iu":
        raise bad_type(arg, a, f"an integer array (got dtype {a.dtype})")
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise bad_value(f"{arg}.shape", tuple(a.shape), "(B, T) with B, T >= 1")
    if a.shape[1] > cfg.block_size:
        raise bad_value(f"{arg}.shape", tuple(a.shape), f"T <= block_size={cfg.block_size}")
    xp = array_module(a)
    ok = (a >= 0) & (a < cfg.vocab_size)
    if allow_ignore:
        ok |= a == IGNORE_INDEX
    if not bool(xp.all(ok)):
        bad = to_numpy(a[~ok])[:5].tolist()
        extra = f" or {IGNORE_INDEX} (ignored)" if allow_ignore else ""
        raise bad_value(arg, f"ids {bad}", f"token ids in [0, {cfg.vocab_size}){extra}")


def _check_fits_in_memory(config, dtype):
    """Refuse, before allocating, a config whose parameters (initialised in float64 on the host, then
    cast) exceed this machine's memory: a MemoryError after gigabytes, or the OOM killer, otherwise."""
    C = config.n_embd
    n = (config.vocab_size + config.block_size) * C + config.n_layer * (12 * C * C + 13 * C) + 2 * C
    need = n * (8 + np.dtype(dtype).itemsize)
    try:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return
    if need > have:
        raise bad_value("config", config, f"a model that fits in this machine's memory: its {n:,} parameters need "
                        f"{need / 2**30:.1f} GiB to initialise, the machine has {have / 2**30:.1f} GiB")


class GPT:
    """GPT-2-style language model. See the module docstring for the gradient and adapter contract."""

    def __init__(self, config, backend="auto", dtype="float32", seed=0, params=None):
        if not isinstance(config, GPTConfig):
            raise bad_type("config", config, "a minisft.GPTConfig")
        self.config = config
        self.backend = resolve_backend(backend)
        self.xp = xp_for(self.backend)
        self.dtype = resolve_dtype(dtype)
        if params is None:
            _check_fits_in_memory(config, self.dtype)
        host = init_params(config, rng(seed)) if params is None else params
        self.params = {k: self.xp.asarray(np.asarray(v), dtype=self.dtype) for k, v in host.items()}
        self.trainable = set(self.params)
        self.adapters = {}
        self.last_activation_bytes = 0

    # ----------------------------------------------------------------------------------- state
    def state_dict(self):
        """{name: host numpy array} of the base tensors (adapters keep their own state)."""
        return {k: to_numpy(v).copy() for k, v in self.params.items()}

    @classmethod
    def from_state_dict(cls, state_dict, config, backend="auto", dtype="float32"):
        """Build a model from a {name: array} dict with exactly the names and shapes of `config`, of
        finite real numbers. The model holds copies: the caller's arrays are never trained in place."""
        if not isinstance(config, GPTConfig):
            raise bad_type("config", config, "a minisft.GPTConfig")
        str_keyed_dict("state_dict", state_dict)
        expected = param_shapes(config)
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        if missing or unexpected:
            raise bad_value("state_dict keys", f"missing {missing[:5]}, unexpected {unexpected[:5]}",
                            "exactly the parameter names of the config (HF GPT-2 names)")
        params = {}
        limit = float(np.finfo(resolve_dtype(dtype)).max)
        for k, shape in expected.items():
            a = numeric_array(f"state_dict[{k!r}]", state_dict[k])
            if a.shape != shape:
                raise bad_value(f"state_dict[{k!r}].shape", a.shape, f"{shape} for this config")
            if a.size and float(np.abs(a).max()) > limit:  # it would become inf in `dtype`
                raise bad_value(f"state_dict[{k!r}]", f"an entry of magnitude {float(np.abs(a).max()):.3g}",
                                f"values representable in {resolve_dtype(dtype).name} (at most {limit:.3g})")
            params[k] = np.array(a, copy=True)
        return cls(config, backend=backend, dtype=dtype, params=params)

    # ---------------------------------------------------------------------------- trainability
    def freeze(self, names=None):
        """Stop computing gradients for `names` (default: every base tensor)."""
        self.trainable -= set(self._check_names(names))

    def unfreeze(self, names=None):
        """Compute gradients for `names` (default: every base tensor)."""
        self.trainable |= set(self._check_names(names))

    def _check_names(self, names):
        names = list(self.params) if names is None else list(names)
        unknown = [n for n in names if n not in self.params]
        if unknown:
            raise bad_value("names", unknown[:5], "parameter names of this model (see state_dict())")
        return names

    def add_adapter(self, layer, adapter):
        """Attach `adapter` to the linear layer `layer` (e.g. "h.0.mlp.c_fc")."""
        if layer not in linear_layer_names(self.config):
            raise bad_value("layer", layer, f"a linear layer name such as {linear_layer_names(self.config)[:4]}")
        self.adapters.setdefault(layer, []).append(adapter)
        return adapter

    def adapter_params(self):
        """{name: array} of every adapter parameter (a shared array appears once)."""
        out = {}
        for ads in self.adapters.values():
            for ad in ads:
                out.update(ad.params)
        return out

    def trainable_params(self):
        """{name: array} of everything the optimizer updates: trainable base tensors and adapters."""
        out = {k: self.params[k] for k in self.params if k in self.trainable}
        out.update(self.adapter_params())
        return out

    # --------------------------------------------------------------------------------- plan
    def _layer_trains(self, key):
        """Whether layer `key` (a parameter-name prefix) owns anything that receives a gradient."""
        has_base = any(f"{key}.{s}" in self.trainable for s in ("weight", "bias"))
        return has_base or any(not ad.merged for ad in self.adapters.get(key, ()))

    def _plan(self, with_grad):
        """need sets for every layer, in forward order, or None without gradients.

        A layer needs "x" (its input gradient) iff some earlier layer (or the embedding) trains:
        in a residual stack every layer's input depends on every earlier layer's parameters.
        """
        if not with_grad:
            return None
        need = {"emb": {s for s in ("wte", "wpe") if f"{s}.weight" in self.trainable}}
        wanted = bool(need["emb"])

        def layer(key, params=("weight", "bias")):
            nonlocal wanted
            n = {"x"} if wanted else set()
            n |= {s for s in params if f"{key}.{s}" in self.trainable}
            need[key] = n
            wanted = wanted or self._layer_trains(key)

        for i in range(self.config.n_layer):
            p = f"h.{i}."
            for key in ("ln_1", "attn.c_attn", "attn", "attn.c_proj",
                        "ln_2", "mlp.c_fc", "mlp.gelu", "mlp.c_proj"):
                layer(p + key, () if key in ("attn", "mlp.gelu") else ("weight", "bias"))
        layer("ln_f")
        need["head"] = ({"x"} if wanted else set()) | ({"weight"} if "wte.weight" in self.trainable else set())
        wanted = wanted or "wte.weight" in self.trainable
        need["loss"] = {"x"} if wanted else set()
        return need

    # ------------------------------------------------------------------------------ forward
    def _linear_forward(self, key, x, need):
        """Base linear (frozen or trainable) plus every attached adapter's contribution."""
        P = self.params
        adapters = self.adapters.get(key, ())
        y, cache = linear_forward(x, P[key + ".weight"], P[key + ".bias"], need=need)
        ad_caches = []
        for ad in adapters:
            y, c = ad.forward(x, y)
            ad_caches.append(c)
        return y, (cache, ad_caches)

    def _forward(self, idx, plan):
        """Run the model; returns (ln_f output, caches) with caches empty when plan is None."""
        P, cfg = self.params, self.config
        get = (lambda key: plan.get(key, set())) if plan is not None else (lambda key: set())
        caches = {}
        x, caches["emb"] = embedding_forward(idx, P["wte.weight"], P["wpe.weight"], need=get("emb"))
        for i in range(cfg.n_layer):
            p = f"h.{i}."
            a, caches[p + "ln_1"] = layernorm_forward(x, P[p + "ln_1.weight"], P[p + "ln_1.bias"], need=get(p + "ln_1"))
            qkv, caches[p + "attn.c_attn"] = self._linear_forward(p + "attn.c_attn", a, get(p + "attn.c_attn"))
            y, caches[p + "attn"] = attention_forward(qkv, cfg.n_head, need=get(p + "attn"))
            y, caches[p + "attn.c_proj"] = self._linear_forward(p + "attn.c_proj", y, get(p + "attn.c_proj"))
            y += x  # x + y: the residual added into the projection's fresh output (no new buffer)
            x = y
            m, caches[p + "ln_2"] = layernorm_forward(x, P[p + "ln_2.weight"], P[p + "ln_2.bias"], need=get(p + "ln_2"))
            h, caches[p + "mlp.c_fc"] = self._linear_forward(p + "mlp.c_fc", m, get(p + "mlp.c_fc"))
            h, caches[p + "mlp.gelu"] = gelu_forward(h, need=get(p + "mlp.gelu"))
            h, caches[p + "mlp.c_proj"] = self._linear_forward(p + "mlp.c_proj", h, get(p + "mlp.c_proj"))
            h += x
            x = h
        x, caches["ln_f"] = layernorm_forward(x, P["ln_f.weight"], P["ln_f.bias"], need=get("ln_f"))
        return x, caches

    def _check_inputs(self, idx, targets=None):
        _check_tokens("idx", idx, self.config, allow_ignore=False)
        idx = self.xp.asarray(idx)
        if targets is None:
            return idx, None
        _check_tokens("targets", targets, self.config, allow_ignore=True)
        if tuple(targets.shape) != tuple(idx.shape):
            raise bad_value("targets.shape", tuple(targets.shape), f"the shape of idx, {tuple(idx.shape)}")
        return idx, self.xp.asarray(targets)

    def logits(self, idx):
        """(B, T, vocab) next-token logits."""
        idx, _ = self._check_inputs(idx)
        x, _ = self._forward(idx, None)
        return linear_forward(x, self.params["wte.weight"], need=())[0]

    def loss(self, idx, targets):
        """Mean cross-entropy (a Python float) of predicting `targets` (ignore index −100) from `idx`."""
        idx, targets = self._check_inputs(idx, targets)
        x, _ = self._forward(idx, None)
        logits, _ = linear_forward(x, self.params["wte.weight"], need=())
        loss, _ = cross_entropy_forward(logits, targets, need=(), overwrite=True)
        return float(loss)

    # ----------------------------------------------------------------------------- backward
    def _linear_backward(self, key, dy, cache, grads, need):
        base_cache, ad_caches = cache
        g = linear_backward(dy, base_cache, need=need)
        for s in ("weight", "bias"):
            if s in g:
                _accumulate(grads, f"{key}.{s}", g[s])
        dx = g.get("x")  # a fresh array: adapters add their share into it in place
        for ad, c in zip(self.adapters.get(key, ()), ad_caches):
            for name, gr in ad.backward(dy, c, dx).items():
                _accumulate(grads, name, gr)
        return dx

    def _norm_backward(self, key, dy, cache, grads):
        g = layernorm_backward(dy, cache)
        for s in ("weight", "bias"):
            if s in g:
                _accumulate(grads, f"{key}.{s}", g[s])
        return g.get("x")

    def loss_and_grads(self, idx, targets, grad_scale=1.0, on_ready=None):
        """(loss as a Python float, {name: gradient}) for every trainable tensor.

        grad_scale: the backward starts from dL = grad_scale instead of 1, so every gradient (and
        every statistic a probe takes of dY) is that of grad_scale · loss; the loss returned is not
        scaled. A data-parallel rank passes its share of the global batch (minisft.distributed.data_parallel).

        on_ready: None, or a callable `on_ready(grads, names)` told which gradients are final while the
        backward still runs (a data-parallel rank starts reducing them: minisft.distributed.overlap).
        It is called right after each block's backward, top block first, with the sorted names whose
        gradient no later part of the backward writes (`_gradient_owners`: block i's base tensors
        h.{i}.* and the parameters of adapters on its layers, a parameter shared by several blocks
        with the lowest), and once at the end with every name not reported yet (ln_f, wpe, wte: the
        head and the embedding both add into wte's gradient); a list may be empty, and a model with
        nothing to train (no gradient at all) makes no call. Every name of the returned dict is
        reported exactly once. `grads` is the dict being filled; a reported array is neither written
        nor replaced afterwards, so it holds its final value from the call on. The callback must not
        change the dict or replace its arrays (it may read them, or have them reduced in place on
        another stream). Without on_ready nothing else changes."""
        grad_scale = real_in("grad_scale", grad_scale, 0.0, math.inf, low_open=True, high_open=True)
        if on_ready is not None and not callable(on_ready):
            raise bad_type("on_ready", on_ready, "None or a callable on_ready(grads, names)")
        idx, targets = self._check_inputs(idx, targets)
        plan = self._plan(True)
        P, cfg = self.params, self.config
        x, caches = self._forward(idx, plan)
        logits, c_head = linear_forward(x, P["wte.weight"], need=plan["head"])
        loss, c_loss = cross_entropy_forward(logits, targets, need=plan["loss"], overwrite=True)  # own logits
        self.last_activation_bytes = unique_nbytes(caches, c_head, c_loss, exclude=(self.params, self.adapter_params()))
        grads = {}
        if not plan["loss"]:
            return float(loss), grads
        del logits
        dlogits = cross_entropy_backward(grad_scale, c_loss, overwrite=True)["x"]
        g = linear_backward(dlogits, c_head)  # logits = x wteᵀ: tied head
        if "weight" in g:
            _accumulate(grads, "wte.weight", g["weight"])
        dx = g.get("x")
        if dx is not None:
            dx = self._norm_backward("ln_f", dx, caches["ln_f"], grads)
        owners, reported = (self._gradient_owners(), set()) if on_ready is not None else (None, None)
        for i in reversed(range(cfg.n_layer)):
            if dx is None:
                break
            dx = self._block_backward(f"h.{i}.", dx, caches, grads, plan)
            if on_ready is not None:
                ready = sorted(n for n in owners.get(i, ()) if n in grads)
                reported.update(ready)
                on_ready(grads, ready)
        if dx is not None:
            g = embedding_backward(dx, caches["emb"])
            for s in ("wte", "wpe"):
                if s in g:
                    _accumulate(grads, f"{s}.weight", g[s])
        if on_ready is not None:
            on_ready(grads, sorted(n for n in grads if n not in reported))
        return float(loss), grads

    def _gradient_owners(self):
        """{block i: names whose gradient only blocks >= i write}: block i's trainable base tensors
        h.{i}.* and the parameters of the adapters on its layers, a parameter used by adapters of
        several blocks (SharedLoRA) under the lowest of them. The blocks run top first, so once block
        i is done these gradients are final. Names of no block (wte, wpe, ln_f) are not listed."""
        lowest = {}
        for name in self.trainable:
            if name.startswith("h."):
                lowest[name] = int(name.split(".")[1])
        for layer, adapters in self.adapters.items():
            i = int(layer.split(".")[1])
            for ad in adapters:
                for name in ad.params:
                    lowest[name] = min(i, lowest.get(name, i))
        owners = {}
        for name, i in lowest.items():
            owners.setdefault(i, []).append(name)
        return owners

    def _block_backward(self, p, dx, caches, grads, plan):
        """Backward through one block; returns the gradient at its input, or None when nothing
        below wants one. Each sub-block chain stops at the first layer that produces no dx."""
        # x = x + c_proj(gelu(c_fc(ln_2(x))))
        dh = self._linear_backward(p + "mlp.c_proj", dx, caches[p + "mlp.c_proj"], grads, plan[p + "mlp.c_proj"])
        if dh is not None:
            dh = gelu_backward(dh, caches[p + "mlp.gelu"])["x"]
            dh = self._linear_backward(p + "mlp.c_fc", dh, caches[p + "mlp.c_fc"], grads, plan[p + "mlp.c_fc"])
        if dh is not None:
            dh = self._norm_backward(p + "ln_2", dh, caches[p + "ln_2"], grads)
        if not plan[p + "ln_2"] or "x" not in plan[p + "ln_2"]:
            return None
        if dh is not None:  # dx + dh, into ln_2's fresh input gradient (dx itself went to adapters)
            dh += dx
            dx = dh
        # x = x + c_proj(attn(c_attn(ln_1(x))))
        dy = self._linear_backward(p + "attn.c_proj", dx, caches[p + "attn.c_proj"], grads, plan[p + "attn.c_proj"])
        if dy is not None:
            dy = attention_backward(dy, caches[p + "attn"])["x"]
            dy = self._linear_backward(p + "attn.c_attn", dy, caches[p + "attn.c_attn"], grads, plan[p + "attn.c_attn"])
        if dy is not None:
            dy = self._norm_backward(p + "ln_1", dy, caches[p + "ln_1"], grads)
        if "x" not in plan[p + "ln_1"]:
            return None
        if dy is not None:
            dy += dx
            return dy
        return dx


def _accumulate(grads, name, g):
    """grads[name] += g in place (the first write stores g itself: no copy, no zero buffer). Every
    stored gradient is a fresh array produced by a backward function, so adding into it is safe."""
    if name in grads:
        grads[name] += g
    else:
        grads[name] = g
