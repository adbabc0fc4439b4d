"""Shared plumbing every stage uses: errors, atomic writes, feature caches, checkpoint files,
pretrained-weight names, how a run reports, and the process setup of the commands (``startup``).
Imports no other package folder of tpt_aqa."""
