"""The studies of ``python -m tpt_aqa.benchmark`` (``make bench``), one module each; the command
runs them and prints ``table.render`` of their report."""
