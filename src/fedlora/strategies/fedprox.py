"""FedProx on LoRA (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020).

Each client minimises its loss plus the proximal term ``μ/2 Σ_m (||A_m − A_m⁰||_F² + ||B_m − B_m⁰||_F²)``
toward the factors it received this round (:class:`fedlora.client.rules.ProximalTerm`, switched on by
``payload.options["proximal_mu"]``), which limits client drift under non-IID data. The server rule is
any other fedlora method (``base``, default FedIT, i.e. FedAvg of ``A`` and ``B``), composed, not
subclassed: FedProx adds one option to the base method's payloads and delegates everything else.

Heterogeneous ranks: exactly as the base method (``base = "flexlora"``, ``"hetlora"``, ``"flora"``,
``"fedsvd"`` or ``"rolora"`` accept mixed ranks; FedIT does not).
"""

from __future__ import annotations

from typing import Any, Mapping

from fedlora.strategies import _common as C
from fedlora.strategies.client_options import ClientOptionsOn

__all__ = ["FedProx"]


class FedProx(ClientOptionsOn):
    """The ``base`` method's server rule with FedProx's proximal term on every client.

    Args:
        seed: run seed (passed to the base method).
        mu: proximal strength ``μ >= 0`` (0 reduces to the base method). The FedProx paper tunes
            ``μ`` in {0.001, 0.01, 0.1, 1}.
        base: registered name of the server rule; its extra arguments go in ``base_args``.
        shapes: optional module shapes, passed to the base method.
    """

    name = "fedprox"

    def __init__(self, *, seed: int = 0, mu: float = 0.01, base: str = "fedit", base_args: Mapping[str, Any] | None = None,
                 shapes: Any = None) -> None:  # fmt: skip
        from fedlora.strategies.registry import make_strategy

        if not (isinstance(mu, (int, float)) and mu >= 0):
            raise ValueError(f"FedProx: mu must be a number >= 0, got {mu!r}; try 0.01")
        if str(base).lower() in ("fedprox", "local"):
            raise ValueError(f"FedProx: base must be a federated server rule other than {base!r}, e.g. 'fedit' or 'flexlora'")
        self.mu, self.base_name = float(mu), str(base).lower()
        self.inner = make_strategy(self.base_name, seed=seed, shapes=shapes, **dict(base_args or {}))
        self.heterogeneous_ranks = bool(getattr(self.inner, "heterogeneous_ranks", False))

    def client_options(self, server_round: int) -> dict[str, float]:
        return {"proximal_mu": self.mu}

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mu": self.mu, "base": self.base_name, "inner": self.inner.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        C.check_state_name(state, self.name)
        if state["base"] != self.base_name:
            raise ValueError(f"FedProx state was saved with base {state['base']!r}, this strategy uses {self.base_name!r}; build it with base={state['base']!r}")
        self.mu = float(state["mu"])
        self.inner.load_state_dict(state["inner"])
