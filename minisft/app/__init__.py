"""The application: the `minisft` command (`cli`), experiments on the embedded data (`experiment`),
tables and plots (`report`), exports of finished runs (`export`) and AdaPEFT's front (`adapeft_front`)."""
