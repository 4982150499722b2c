"""Preemption: the signals a scheduler or a user sends become a request to stop at the next step.

SIGTERM (Slurm's time limit, ``docker stop``, torchrun forwarding its own), SIGUSR1 (Slurm's
``--signal=USR1@N``) and SIGINT (Ctrl-C) are handled by default. The run finishes the step it is in,
keeps ``last.pth`` of the last complete epoch, releases its lock, prints one line and exits with
``PREEMPTED_EXIT_CODE``. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

PREEMPTED_EXIT_CODE = 3
SIGNALS = {"TERM": signal.SIGTERM, "INT": signal.SIGINT, "USR1": signal.SIGUSR1, "USR2": signal.SIGUSR2}


class Preempted(Exception):
    """Raised by the training loop once every rank has agreed to stop."""

    def __init__(self, signum: int, epoch: int, step: int | None):
        self.signal_name = signal.Signals(signum).name
        super().__init__(self.signal_name)
        self.signum, self.epoch, self.step = signum, epoch, step


class StopRequest:
    """Records the first stop signal; ``agreed`` tells every rank at once whether any rank received one.

    Forked DataLoader workers inherit the handler, so a signal sent to the whole process group (Ctrl-C,
    a scheduler) only sets a flag in them instead of killing them mid-batch.
    """

    def __init__(self, names: str = "TERM,INT,USR1", check_every: int = 10):
        self.signals = [SIGNALS[n.strip().upper().removeprefix("SIG")] for n in names.split(",")]
        self.check_every = check_every
        self.signum: int | None = None
        self._previous: dict = {}

    def install(self) -> StopRequest:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        if self.signum is None:
            self.signum = signum

    def agreed(self, device: torch.device) -> int | None:
        """The signal any rank received (a collective: every rank calls it at the same point), or None."""
        if not dist.is_initialized():
            return self.signum
        flag = torch.tensor([self.signum or 0], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def at_step(self, step: int, device: torch.device) -> int | None:
        """``agreed`` every ``check_every`` steps (a rare sync), the local flag in a single process (no sync)."""
        if not dist.is_initialized():
            return self.signum
        if (step + 1) % self.check_every:
            return None
        return self.agreed(device)
