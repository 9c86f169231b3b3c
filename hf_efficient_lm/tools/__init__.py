"""Non-model tools (mining, export, conversion, training cores, evaluations): never copied into a checkpoint.

One module per job, named <family>_<job>.py where it belongs to one family; they use data/, eval/, train/ and
io_utils. Each family's __init__ re-exports its tools lazily, so `import hf_efficient_lm` stays light.
"""
