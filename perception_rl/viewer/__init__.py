"""`perception-rl view RUN_DIR`: one self-contained HTML page of what a run's policy and judge did.

    perception-rl view runs/demo                  # writes runs/demo/view.html and prints its path
    perception-rl view runs/demo/eval/test        # a `perception-rl test` folder: per-item results
    perception-rl view runs/demo --serve          # also serve it on http://127.0.0.1:<port>/ until Ctrl-C

Modules: training.py (the rollout log's steps and the training filters), evaluation.py (test rows and
their filters), curves.py (reward curves as inline SVG), images.py (images embedded once), page.py (the
HTML, with assets/view.css and assets/view.js inlined), cli.py (the command).
"""

from perception_rl.viewer.page import collect, write_page

__all__ = ["collect", "write_page"]
