"""MGPP's named option sets (decisions and sources: proofs/decisions.md §MGPP).

    "default"  the issue-16 set, from the authors' BERT/GLUE runs: λ = 1e-3 (BayesianPruner
               configs/GLUE/mnli.yaml), v0 = 1e-10, v1 = 0.05 (PTMGP scripts/GLUE/mnli.sub,
               BayesianPruner GLUE), s_i = 0.3 (PTMGP MNLI/QQP/SST-2), t_i = 10% of the steps
               (BayesianPruner GLUE)
    "gpt2"     the authors' GPT-2 causal-LM config (BayesianPruner configs/CLM/config.yaml):
               λ = 1e-4, v0 = 1e-10, v1 = 0.01, s_i = 0.1, t_i = 1% of the steps
Both: t_f = 90% of the steps and Δt = 1% of the steps (BayesianPruner), set by the methods' own
defaults. An option passed explicitly overrides its config value.
"""

from ...core.errors import require

CONFIGS = {
    "default": {"lam": 1e-3, "var0": 1e-10, "var1": 0.05, "initial_sparsity": 0.3, "t_start": 0.1},
    "gpt2": {"lam": 1e-4, "var0": 1e-10, "var1": 0.01, "initial_sparsity": 0.1, "t_start": 0.01},
}


def config_value(config, key, value):
    """`value`, or the named config's value of `key` when `value` is None."""
    require(config in CONFIGS, "config", config, f"one of {sorted(CONFIGS)}")
    return CONFIGS[config][key] if value is None else value
