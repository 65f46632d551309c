"""How ``make test`` spreads the tests over its workers: as pytest-xdist's ``load`` does (a test at a time to the
worker with room), but the tests that share a started local subnet go to one worker, which starts it once.

``load`` hands out the suite's first quarter one test at a time, round the workers: a module whose tests share a
fixture of module scope had each worker that ran one of them start it (the chaos fault network: three times, nine
processes each; measured), and the session's ``localnet`` was started by every worker. ``xdist_group`` marks with
``--dist loadgroup`` would say the same, but xdist 3.8 writes the group into ``item._nodeid``, which pytest 9 no
longer reads: the marks are ignored. The controller knows the tests by their ids alone, so the modules are named
here (``tests/unit/test_xdist_groups.py`` checks that every module that starts such a subnet is)."""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

# The modules whose tests use the session's ``localnet`` (tests/conftest.py).
ON_THE_SESSION_SUBNET = frozenset({
    "tests/compat/test_docs_examples.py",
    "tests/compat/test_monitoring_kit.py",
    "tests/compat/test_parallel_tool_calls.py",
    "tests/integration/test_localnet_follow_request.py",
    "tests/integration/test_localnet_js_clients.py",
    "tests/integration/test_localnet_openai_sdk.py",
    "tests/integration/test_localnet_pydantic_ai.py",
    "tests/integration/test_localnet_responses.py",
})
# The modules with a local subnet of their own, a fixture of module scope.
WITH_A_MODULE_SUBNET = frozenset({
    "tests/chaos/test_localnet_faults.py",
    "tests/chaos/test_scoring_delivery.py",
    "tests/integration/test_localnet_corpus.py",
})


def group_of(nodeid: str) -> str:
    """The unit a test is handed out in: ``localnet``, its module, or the test alone."""
    module = nodeid.split("::", 1)[0]
    if module in ON_THE_SESSION_SUBNET:
        return "localnet"
    return module if module in WITH_A_MODULE_SUBNET else nodeid


class SharedSubnetScheduling(LoadScopeScheduling):
    """xdist's ``loadgroup`` scheduling (``LoadScopeScheduling`` over groups), its groups from ``group_of``."""

    def _split_scope(self, nodeid: str) -> str:
        return group_of(nodeid)
