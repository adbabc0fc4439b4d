"""Shared plumbing every stage uses: errors, atomic writes, feature caches, checkpoint files,
pretrained-weight names and how a run reports. Imports no other package folder of tpt_aqa."""
