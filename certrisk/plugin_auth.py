"""Who may read the certrisk dashboard: its routes behind Airflow's auth manager.

Airflow does not put plugin apps behind its login; ``airflow_guard`` does, with the user Airflow
resolves from a Bearer token or the UI's session cookie (``GetUserDep``): no login -> 401, no
permission -> 403. Each edition is a custom view of the auth manager:

=============  ========================  ==========================================================
edition        custom view (resource)    what it shows
=============  ========================  ==========================================================
compliance     ``certrisk``              runs, tiers, factors, aggregates, reviews, RMF coverage
engineer       ``certrisk-engineer``     a run's engineer report: raw certificates, radii, bounds
=============  ========================  ==========================================================

A run's pages also need read access to that DAG's runs (``is_authorized_dag``), so a user who may
not see a DAG in Airflow does not see its reports here.

* FAB auth manager: a role needs ``can_read`` on ``certrisk`` (compliance) or
  ``certrisk-engineer`` (engineer); ``fab_permissions`` lists them and ``grant_fab_permissions``
  creates them and grants the defaults of ``FAB_DEFAULT_GRANTS`` (Viewer, User, Op, Admin:
  compliance; Op and Admin: engineer too). Any other role, and a user without a role, gets 403.
* Simple auth manager: it answers every custom view by role alone (viewer and up), so the
  editions map to its roles: compliance needs ``viewer`` or above, engineer ``op`` or above
  (``SIMPLE_MINIMUM_ROLE``); a user configured without a role gets 403 everywhere.
* Any other auth manager (Keycloak, AWS, ...) answers ``is_authorized_custom_view`` for the two
  resource names itself.

Raw certificates guide attackers (DESIGN principle 4), hence the stricter engineer permission.
"""

from __future__ import annotations

from collections.abc import Callable

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import HTTPException, Request, status

from certrisk.schemas.enums import Edition

#: The custom view each edition is.
RESOURCES = {Edition.COMPLIANCE: "certrisk", Edition.ENGINEER: "certrisk-engineer"}
#: Under the simple auth manager (which ignores resource names): the lowest role of each edition.
SIMPLE_MINIMUM_ROLE = {Edition.COMPLIANCE: "VIEWER", Edition.ENGINEER: "OP"}
#: Under the FAB auth manager: which built-in roles ``grant_fab_permissions`` gives each edition.
FAB_DEFAULT_GRANTS = {
    Edition.COMPLIANCE: ("Viewer", "User", "Op", "Admin"),
    Edition.ENGINEER: ("Op", "Admin"),
}
FAB_ACTION = "can_read"


def _simple_role_allows(user, edition: Edition) -> bool:
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManagerRole

    role = (getattr(user, "role", None) or "").upper()
    if role not in SimpleAuthManagerRole.__members__:
        return False
    return SimpleAuthManagerRole[role].order >= SimpleAuthManagerRole[SIMPLE_MINIMUM_ROLE[edition]].order


def may_read(edition: Edition, user, auth_manager=None) -> bool:
    """Whether ``user`` may read ``edition``'s pages, as the configured auth manager decides."""
    manager = auth_manager or get_auth_manager()
    if not manager.is_authorized_custom_view(method="GET", resource_name=RESOURCES[edition], user=user):
        return False
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    if isinstance(manager, SimpleAuthManager):
        return _simple_role_allows(user, edition)
    return True


def _may_read_run(request: Request, user, manager) -> bool:
    dag_id = request.path_params.get("dag_id")
    if dag_id is None:
        return True
    return manager.is_authorized_dag(
        method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
    )


def airflow_guard(edition: Edition) -> Callable:
    """The FastAPI dependency that admits a request to ``edition``'s routes: 401 without a login
    (Airflow's ``GetUserDep``), 403 without the edition's permission or, on a run's page, without
    read access to the DAG's runs. Sets ``request.state.certrisk_editions``."""

    def require(request: Request, user: GetUserDep) -> None:
        manager = get_auth_manager()
        editions = frozenset(e for e in Edition if may_read(e, user, manager))
        if edition not in editions or not _may_read_run(request, user, manager):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"Forbidden: needs the {RESOURCES[edition]} view")
        request.state.certrisk_editions = editions

    return require


def fab_permissions() -> list[tuple[str, str]]:
    """The FAB permissions (action, resource) of the editions."""
    return [(FAB_ACTION, RESOURCES[e]) for e in Edition]


def grant_fab_permissions(
    security_manager, grants: dict[Edition, tuple[str, ...]] = FAB_DEFAULT_GRANTS
) -> list[str]:
    """Create the editions' permissions in FAB's security manager and grant them to ``grants``'
    roles (created when missing); returns what was granted, as "role: action on resource" lines.
    Run inside ``airflow.providers.fab.auth_manager.cli_commands.utils.get_application_builder()``."""
    done = []
    for edition, roles in grants.items():
        permission = security_manager.create_permission(FAB_ACTION, RESOURCES[edition])
        for name in roles:
            role = security_manager.find_role(name) or security_manager.add_role(name)
            security_manager.add_permission_to_role(role, permission)
            done.append(f"{name}: {FAB_ACTION} on {RESOURCES[edition]}")
    return done
