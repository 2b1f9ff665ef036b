"""``python -m ctd_hf.cli``: the ``ctd-hf`` command (what ``torchrun -m`` and ``accelerate launch -m`` start)."""

from . import main

if __name__ == "__main__":
    main()
