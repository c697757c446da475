"""SPruFT as a fine-tuning method: the `SPruFT` class the trainer drives — score, select, wrap
(map: minisft/methods/spruft/__init__.py; decisions: proofs/decisions.md §1; derivations: proofs/spruft.md)."""

from dataclasses import dataclass

import numpy as np

from ...model.adapters import ColumnDelta, RowDelta
from ...core.backend import to_numpy
from ...model.budgets import target_layers, target_shapes
from ...distributed.data_parallel import comm_of
from ...core.errors import CheckpointError, require
from ...model.gpt import param_shapes
from ..select import ratio_count
from ..base import Method
from .budget import unit_count
from .calibration import (ActivationNormProbe, GradientProbe, SquaredGradientProbe, StreamingTaylorProbe,
    calibration_batches, run_calibration, zeroth_order_weight_gradients)
from .config import GROUP_KINDS, SPruFTConfig
from .importance import (col_magnitude, col_obd, col_taylor, col_wanda, global_threshold_rows,
    random_scores, row_magnitude, row_obd, row_taylor, row_wanda, top_rows)
from .structure import ROWS, Groups, attention_head_groups, group_adapter_indices, group_scores, mlp_neuron_groups

# (row score, column score) of each importance; taylor and zeroth_order take (W, G, multivariable)
SCORERS = {
    "magnitude": (row_magnitude, col_magnitude),
    "taylor": (row_taylor, col_taylor),
    "zeroth_order": (row_taylor, col_taylor),
    "obd": (row_obd, col_obd),
    "wanda": (row_wanda, col_wanda),
}
NO_BATCHES = ("magnitude", "random")  # importances that draw no calibration batch


def _axis_score(importance, axis, W, stat, p, multivariable):
    """(d_out,) row scores (axis "rows") or (d_in,) column scores (axis "cols") of W (d_out, d_in)."""
    if importance == "random":
        return stat[axis]  # the drawn scores
    fn = SCORERS[importance][0 if axis == "rows" else 1]
    if importance == "magnitude":
        return fn(W, p)
    if importance in ("obd", "wanda"):
        return fn(W, stat)
    return fn(W, stat, multivariable)


def _shapes(arrays):
    return {name: list(a.shape) for name, a in arrays.items()}


def _layer_suffix(param_suffix):
    """Drop ".weight": "mlp.c_fc.weight" -> "mlp.c_fc"."""
    return param_suffix[: -len(".weight")]


@dataclass(frozen=True)
class _Unit:
    """What one budget applies to: a layer's rows (row mode), or one block's groups of one kind
    (neuron mode: MLP neurons or attention heads)."""

    size: int  # rows of the layer / groups of the block
    family: str  # units that share one global threshold: "rows", or the group kind "attn" / "mlp"
    axes: tuple  # ((layer, "rows" | "cols"), ...): the member scores the unit's score needs
    groups: Groups = None  # neuron mode only
    block: int = None  # neuron mode only

    def score(self, scores):
        """{layer: {axis: scores}} -> (size,) this unit's scores."""
        if self.groups is None:
            layer, axis = self.axes[0]
            return scores[layer][axis]
        members = {(m.suffix, m.axis): scores[layer][axis] for m, (layer, axis) in zip(self.groups.members, self.axes)}
        return group_scores(self.groups, members)

    def indices(self, selected):
        """Selected unit indices (host) -> ({layer: rows}, {layer: cols}) of the adapters to train."""
        if self.groups is None:
            return {self.axes[0][0]: selected}, {}
        rows, cols = group_adapter_indices(self.groups, selected, self.block)
        return ({_layer_suffix(k): v for k, v in rows.items()}, {_layer_suffix(k): v for k, v in cols.items()})


class SPruFT(Method):
    """SPruFT: dense deltas on the rows (or neuron groups) picked by a pruning importance."""

    name = "spruft"
    paper = "Li & Bhaskara 2025, arXiv 2502.11439"
    Config = SPruFTConfig

    def __init__(self, *args, **options):
        super().__init__(*args, **options)
        # after prepare: host int64 indices {layer: rows / cols}; host scores {layer: {axis: (d,)}}
        # and {unit: (n,)} (a unit is a layer in row mode, "h.{i}.attn" / "h.{i}.mlp" in neuron mode)
        self.selected_rows, self.selected_cols, self._report = {}, {}, {}
        self.layer_scores, self.unit_scores = {}, {}

    # ------------------------------------------------------------------------------- prepare
    def prepare(self, model, task, rng):
        require(not model.adapters, "model.adapters", sorted(model.adapters)[:4],
                "a model without adapters (SPruFT scores and wraps the base model)")
        layers = target_layers(model, self.config.targets)
        units = self._units(model.config, layers)  # validates `rows` against the model before any work
        c = self.config
        batches = [] if c.importance in NO_BATCHES else calibration_batches(task, rng, c.calib_batches,
                                                                             c.calib_batch_size)
        model.freeze()
        scores, calibration = self._layer_scores(model, batches, rng, units, comm_of(task))
        unit_scores = {name: u.score(scores) for name, u in units.items()}
        self.layer_scores = {layer: {axis: to_numpy(s) for axis, s in d.items()} for layer, d in scores.items()}
        self.unit_scores = {name: to_numpy(s) for name, s in unit_scores.items()}
        chosen = self._select(units, unit_scores)
        self.selected_rows, self.selected_cols = {}, {}
        for name, u in units.items():
            rows, cols = u.indices(chosen[name])
            self.selected_rows.update({k: v for k, v in rows.items() if v.size})
            self.selected_cols.update({k: v for k, v in cols.items() if v.size})
        trainable = self._attach(model, layers, rng)
        self._report = self._make_report(layers, units, chosen, trainable, calibration)

    def check_config(self, config):
        """`rows` against the target layers' units of a model of `config` (before any data is read)."""
        self._units(config, [layer for layer, _, _ in target_shapes(config, self.config.targets)])

    def _units(self, cfg, layers):
        """{unit name: _Unit}: one per layer (row mode) or per block and group kind (neuron mode)."""
        if self.config.mode == "rows":
            shapes = param_shapes(cfg)
            units = {layer: _Unit(shapes[layer + ".weight"][0], "rows", ((layer, "rows"),)) for layer in layers}
        else:
            make = {"attn": lambda: attention_head_groups(cfg.n_embd, cfg.n_head),
                    "mlp": lambda: mlp_neuron_groups(cfg.n_embd)}
            units = {}
            for i in range(cfg.n_layer):
                for kind, (row_suffix, _) in GROUP_KINDS.items():
                    if f"h.{i}.{row_suffix}" in layers:
                        groups = make[kind]()
                        axes = tuple((f"h.{i}.{_layer_suffix(m.suffix)}", "rows" if m.axis == ROWS else "cols")
                                     for m in groups.members)
                        units[f"h.{i}.{kind}"] = _Unit(groups.n_groups, kind, axes, groups, i)
        if self.config.rows is not None:
            what = "rows" if self.config.mode == "rows" else "groups"
            for name, u in units.items():
                require(self.config.rows <= u.size, "rows", self.config.rows, f"at most {u.size}, the {what} of {name}")
        return units

    def _layer_scores(self, model, batches, rng, units, comm=None):
        """({layer: {axis: scores}}, calibration facts) for every (layer, axis) the units need."""
        axes = {}
        for u in units.values():
            for layer, axis in u.axes:
                axes.setdefault(layer, []).append(axis)
        W = {layer: model.params[layer + ".weight"] for layer in axes}
        calibration = {"batches": len(batches)}
        c = self.config
        if c.importance == "magnitude":
            stats = dict.fromkeys(axes)
        elif c.importance == "random":  # drawn layer by layer, axis by axis, in unit order
            stats = {layer: {axis: model.xp.asarray(random_scores(W[layer].shape[0 if axis == "rows" else 1], rng))
                             for axis in axes[layer]} for layer in axes}
        else:
            if c.importance == "zeroth_order":
                stats = zeroth_order_weight_gradients(model, list(axes), batches, c.zo_samples, c.zo_eps, rng, comm)
                calibration.update(forward_passes=2 * c.zo_samples * len(batches), buffers=_shapes(stats))
            else:
                probes = {layer: self._probe(model, layer, axes[layer]) for layer in axes}
                calibration["mean_loss"] = run_calibration(model, probes, batches, backward=c.importance != "wanda",
                                                            comm=comm)
                calibration["buffers"] = {layer: _shapes(pr.buffers()) for layer, pr in probes.items()}
                if c.importance == "taylor" and c.multivariable:
                    return {layer: pr.scores() for layer, pr in probes.items()}, calibration
                stats = {layer: self._statistic(pr) for layer, pr in probes.items()}
        scores = {layer: {axis: _axis_score(c.importance, axis, W[layer], stats[layer], c.p, c.multivariable)
                          for axis in axes[layer]} for layer in axes}
        return scores, calibration

    def _statistic(self, probe):
        """What the scores need from a probe: G (taylor), F (obd) or ‖X_j‖₂ (wanda)."""
        if self.config.importance == "taylor":
            return probe.G
        return probe.fisher() if self.config.importance == "obd" else probe.norms()

    def _probe(self, model, layer, axes):
        if self.config.importance == "wanda":
            return ActivationNormProbe(model, layer)
        if self.config.importance == "obd":
            return SquaredGradientProbe(model, layer)
        if self.config.multivariable:
            return StreamingTaylorProbe(model, layer, rows="rows" in axes, cols="cols" in axes)
        return GradientProbe(model, layer)

    def _select(self, units, unit_scores):
        """{unit: host int64 indices}: top-k per unit, or one threshold per family (global)."""
        c = self.config
        if c.scope == "layer":
            return {name: to_numpy(top_rows(unit_scores[name], unit_count(u.size, c.ratio, c.rows)))
                    for name, u in units.items()}
        chosen = {}
        for family in dict.fromkeys(u.family for u in units.values()):
            names = [name for name, u in units.items() if u.family == family]
            sizes = [units[name].size for name in names]
            total = max(1, ratio_count(c.ratio, sum(sizes), "floor")) if c.rows is None else c.rows * len(names)
            picked = global_threshold_rows({name: unit_scores[name] for name in names}, total)
            chosen.update({name: to_numpy(idx) for name, idx in picked.items()})
        return chosen

    def _attach(self, model, layers, rng):
        """Row deltas (and column deltas in neuron mode) in linear-layer order; {layer: trainable}."""
        trainable = {}
        for layer in layers:
            n = 0
            if layer in self.selected_rows:
                ad = RowDelta(model, layer, self.selected_rows[layer], bias=self.config.bias, init=self.config.init,
                              generator=rng)
                n += model.add_adapter(layer, ad).n_trainable()
            if layer in self.selected_cols:
                ad = ColumnDelta(model, layer, self.selected_cols[layer], init=self.config.init, generator=rng)
                n += model.add_adapter(layer, ad).n_trainable()
            trainable[layer] = n
        return trainable

    # -------------------------------------------------------------------------------- report
    def _make_report(self, layers, units, chosen, trainable, calibration):
        report = {
            **{key: getattr(self.config, key) for key in ("importance", "multivariable", "mode", "scope")},
            "rows": {layer: self.selected_rows[layer].tolist() for layer in layers if layer in self.selected_rows},
            "counts": {layer: int(self.selected_rows.get(layer, np.empty(0)).size) for layer in layers},
            "trainable_by_layer": trainable,
            "trainable": sum(trainable.values()),
            "calibration": calibration,
        }
        if self.config.mode == "neurons":
            report["columns"] = {layer: self.selected_cols[layer].tolist()
                                 for layer in layers if layer in self.selected_cols}
            report["column_counts"] = {layer: int(self.selected_cols.get(layer, np.empty(0)).size) for layer in layers}
            report["groups"] = {name: chosen[name].tolist() for name in units}
        return report

    def report(self):
        return self._report

    # ----------------------------------------------------------------------- checkpoint state
    def state_arrays(self):
        """The selection, so that a resumed run can check it re-selected the same rows and columns."""
        out = {f"rows/{k}": v for k, v in self.selected_rows.items()}
        out.update({f"cols/{k}": v for k, v in self.selected_cols.items()})
        return out

    def load_state_arrays(self, arrays):
        mine = self.state_arrays()
        same = set(arrays) == set(mine) and all(np.array_equal(to_numpy(arrays[k]), mine[k]) for k in mine)
        if not same:
            raise CheckpointError("checkpoint: its SPruFT selection differs from the one prepare() just made "
                                  "(expected the same rows and columns; same data, seed and options?)")
