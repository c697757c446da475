"""The model: the GPT-2-style transformer with its explicit backward (`gpt`), the adapters that wrap
its linear layers (`adapters`), parameter counting (`budgets`), the memory meter (`memory`) and the
conversion to and from HF GPT-2 / PEFT (`interop`)."""
