"""`lmforge scaling ...`: scaling-law fits, sweep planning, real sweeps and the experiment service.

The group is assembled from one module per concern, each owning its commands:
`scaling_fit.py` (`fit`, `report`, `sweep`), `scaling_plan.py` (`plan`), `scaling_service.py`
(`serve`, `users`, `experiments`: the service's operator side) and `scaling_client.py`
(`submit`, `wait`, `list`: the client side of the service's HTTP API).
"""

from __future__ import annotations

from lmforge.cli import main


@main.group("scaling")
def scaling_group() -> None:
    """Scaling laws: fit IsoFLOP/parametric laws, plan and run sweeps, serve experiments.

    \b
    Example:
      lmforge scaling fit ../shared/fixtures/scaling/isoflops_curves.json --approach 2 --target 1e23
    """


from lmforge.cli import scaling_client, scaling_fit, scaling_plan, scaling_service  # noqa: E402

for _module in (scaling_fit, scaling_plan, scaling_service, scaling_client):
    for _command in _module.COMMANDS:
        scaling_group.add_command(_command)
