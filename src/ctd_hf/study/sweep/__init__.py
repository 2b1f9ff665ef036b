"""``ctd-hf sweep``: a search over tuning settings and the decoding strength, selected on training tasks only.

Each trial is one set of tuning knobs (data, learning rate, steps, alpha, prefix length, init, data fraction); its
prefix is tuned once and decoded at every ``beta`` of the space in one evaluation run. Trials are scored on the
development tasks (``sample/dev_tasks.txt``, SuperNI TRAIN tasks: never a test task) by successive halving: every
trial on a few instances per task, the best share of them on more. Plain decoding and Instructive Decoding at several
strengths are measured on the same instances once, as the bar a trial must clear.

Everything lives in one folder and resumes: ``sweep.json`` (the settings: a rerun with others is refused),
``data/`` (built tuning data), ``baselines/``, ``trials/<id>/`` (``trial.json``, ``prefix/``, ``dev/``,
``rung-<k>.json``), and the leaderboard (``leaderboard.md``, ``leaderboard.json``, ``leaderboard.png``).

Modules: ``settings`` (what is searched and how it is measured), ``folder`` (the folder and one trial),
``pool`` (rungs, worker processes), ``leaderboard``.
"""

from .folder import Sweep
from .leaderboard import leaderboard_markdown, write_leaderboard
from .pool import run_sweep
from .settings import KNOBS, SEARCHES, SweepSettings, SweepSpace, trial_id

__all__ = ["KNOBS", "SEARCHES", "Sweep", "SweepSettings", "SweepSpace", "leaderboard_markdown", "run_sweep",
           "trial_id", "write_leaderboard"]
