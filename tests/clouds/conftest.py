"""Fixtures for the cloud tests. Each driver's harness lives in its own module; the contract suite
(test_contract.py) runs the same tests against every harness: `sim_harness`, `ec2_harness` (moto's EC2 server on
loopback) and `openstack_harness` (the real OpenStack stack, marker `openstack`)."""

from tests.clouds.accounts_world import east, east_granted  # noqa: F401  (account/grant fixtures)
from tests.clouds.fixtures_moto import *  # noqa: F403
from tests.clouds.fixtures_openstack import *  # noqa: F403
from tests.clouds.fixtures_sim import *  # noqa: F403
